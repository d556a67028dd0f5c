"""HA service groups over the service service (StarlingX ``sm``: ``sm-dump``, ``sm-swact`` ...).

``register(cli)`` adds ``sm-list``, ``sm-show``, ``sm-swact``, ``sm-restart``,
``sm-group-add``, ``sm-group-delete``, ``sm-disable``, ``sm-enable``, ``sm-lock`` and
``sm-unlock`` to the ``roost`` typer app. A group is named by its name; a service by
``group.service`` or, when only one group has it, by its own name.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from roost_cli import context, render
from roost_cli.client import ServiceClient, path_part
from roost_cli.config import page_size
from roost_cli.errors import CliError, ExitCode

#: The service API's ``limit`` maximum for ``GET /v1/service-groups``.
LIMIT_MAX = 1000

GroupName = Annotated[str, typer.Argument(metavar="GROUP", help="The service group's name.")]
HostName = Annotated[str, typer.Argument(metavar="HOST", help="A member host's hostname.")]


def _group_path(name: str, suffix: str = "") -> str:
    name = name.strip()
    if not name:
        raise CliError("the group name must not be empty", ExitCode.usage)
    return f"/v1/service-groups/{path_part(name)}{suffix}"


def _all_groups(client: ServiceClient, limit: int | None = None) -> list[dict[str, Any]]:
    body = client.collect(
        "/v1/service-groups",
        "service_groups",
        [],
        limit=limit,
        page_size=min(page_size(), LIMIT_MAX),
    )
    return list(body.get("service_groups", []))


def _instances(client: ServiceClient, name: str) -> dict[str, Any]:
    """The group's instances collection; empty if the group went away since it was listed."""
    try:
        return client.get(_group_path(name, "/instances")) or {}
    except CliError as exc:
        if exc.exit_code is ExitCode.not_found:
            return {}
        raise


# Rendering -------------------------------------------------------------------------------------


def model_text(group: Mapping[str, Any]) -> str:
    r = group.get("redundancy") or {}
    model = str(r.get("model", "?"))
    if model == "n-plus-m":
        return f"n-plus-m ({r.get('active')}+{r.get('standby')})"
    return model


def members_text(group: Mapping[str, Any]) -> str:
    m = group.get("members") or {}
    if m.get("hosts"):
        return ", ".join(m["hosts"])
    selector = m.get("selector") or {}
    return "labels " + ", ".join(f"{k}={v}" for k, v in sorted(selector.items()))


def policy_text(group: Mapping[str, Any]) -> str:
    p = group.get("failure_policy") or {}
    return (
        f"restart up to {p.get('max_restarts')} times within {p.get('window_s')} s, "
        f"then fail over (on exhausted: {p.get('on_exhausted')})"
    )


def host_states(instances: Sequence[Mapping[str, Any]]) -> list[str]:
    """One ``host: state`` line per host, in the order the instances come (member priority):
    one state when every service of the host is in it, else ``service=state`` for each."""
    by_host: dict[str, list[Mapping[str, Any]]] = {}
    for i in instances:
        by_host.setdefault(str(i.get("host")), []).append(i)
    lines = []
    for host, items in by_host.items():
        states = {str(i.get("state")) for i in items}
        if len(states) == 1:
            lines.append(f"{host}: {states.pop()}")
        else:
            lines.append(
                f"{host}: " + " ".join(f"{i.get('service')}={i.get('state')}" for i in items)
            )
    return lines


def active_text(group: Mapping[str, Any]) -> str:
    """The active host, or every slot holder of an n-plus-m group, or ``-``."""
    hosts = group.get("active_hosts") or [group.get("active_host")]
    return ", ".join(h for h in hosts if h) or "-"


def render_list(groups: Sequence[Mapping[str, Any]]) -> None:
    rows = [
        [
            g.get("name"),
            model_text(g),
            g.get("state"),
            active_text(g),
            "\n".join(host_states(g.get("instances") or [])) or "-",
        ]
        for g in groups
    ]
    render.table(
        ["Name", "Model", "State", "Active Host", "Instances"],
        rows,
        no_wrap=["Name", "Model", "State", "Active Host", "Instances"],
    )


def _probe_text(probe: Mapping[str, Any] | None) -> str:
    p = dict(probe or {})
    kind = p.pop("type", "process")
    where = {"http": "url", "tcp": "port", "script": "argv"}.get(str(kind))
    target = p.get(where) if where else None
    if isinstance(target, list):
        target = " ".join(target)
    detail = f" {target}" if target not in (None, "") else ""
    return f"{kind}{detail} every {p.get('period_s')} s"


def render_show(group: Mapping[str, Any]) -> None:
    rows = [
        ("name", group.get("name")),
        ("uuid", group.get("uuid")),
        ("description", group.get("description")),
        ("model", model_text(group)),
        ("members", members_text(group)),
        ("preferred", ", ".join(group.get("preferred") or []) or "-"),
        ("failure policy", policy_text(group)),
        ("state", group.get("state")),
        ("state reason", group.get("state_reason")),
        ("active host", active_text(group)),
        ("version", group.get("version")),
        ("updated at", group.get("updated_at")),
    ]
    render.table(["Property", "Value"], rows, no_wrap=["Property"])
    services = {s.get("name"): s for s in group.get("services") or []}
    order = group.get("start_order") or list(services)
    render.table(
        ["#", "Service", "Depends On", "Start", "Probe"],
        [
            [
                n,
                name,
                ", ".join(services.get(name, {}).get("depends_on") or []) or "-",
                " ".join(services.get(name, {}).get("start") or []),
                _probe_text(services.get(name, {}).get("probe")),
            ]
            for n, name in enumerate(order, 1)
        ],
        title="Services (start order)",
        no_wrap=["#", "Service"],
    )
    render.table(
        ["Host", "Service", "Role", "Token", "State", "Reason"],
        [
            [
                i.get("host"),
                i.get("service"),
                i.get("role") or "-",
                "-" if i.get("token") is None else i.get("token"),
                i.get("state"),
                i.get("reason"),
            ]
            for i in group.get("instances") or []
        ],
        title="Instances",
        no_wrap=["Host", "Service", "Role", "Token", "State"],
    )
    render.table(
        ["Slot", "Holder", "Token", "Held", "Expires At"],
        [
            [
                x.get("slot"),
                x.get("holder") or "-",
                x.get("token"),
                "yes" if x.get("held") else "no",
                x.get("expires_at") or "-",
            ]
            for x in group.get("leases") or []
        ],
        title="Leases",
        no_wrap=["Slot", "Holder", "Token", "Held", "Expires At"],
    )


def _with_instances(group: dict[str, Any], collection: Mapping[str, Any]) -> dict[str, Any]:
    """The group with the instances collection's ``active_host`` and ``instances`` (and its
    fresher ``state``/``state_reason`` when it has them)."""
    merged = dict(group)
    for key in ("state", "state_reason"):
        if collection.get(key):
            merged[key] = collection[key]
    merged["active_host"] = collection.get("active_host")
    merged["active_hosts"] = list(collection.get("active_hosts") or [])
    merged["instances"] = list(collection.get("instances") or [])
    return merged


# Commands --------------------------------------------------------------------------------------


def sm_list(
    ctx: typer.Context,
    limit: Annotated[int | None, context.limit_option(LIMIT_MAX)] = None,
) -> None:
    """List service groups by name: model, state, active host, each member's instance states."""
    client = context.client(ctx, "service")
    groups = [_with_instances(g, _instances(client, g["name"])) for g in _all_groups(client, limit)]
    if context.wants_json(ctx):
        render.print_json({"service_groups": groups})
    else:
        render_list(groups)


def sm_show(ctx: typer.Context, group: GroupName) -> None:
    """Show a service group: its declaration, state, instances and activity leases."""
    client = context.client(ctx, "service")
    body = client.get(_group_path(group))
    shown = _with_instances(body, _instances(client, group))
    shown["leases"] = (client.get(_group_path(group, "/leases")) or {}).get("leases", [])
    render.print_json(shown) if context.wants_json(ctx) else render_show(shown)


def sm_swact(ctx: typer.Context, group: GroupName) -> None:
    """Switch activity to the healthy standby (refused with the reason without one)."""
    body = context.client(ctx, "service").post(_group_path(group, "/swact"), None) or {}
    if context.wants_json(ctx):
        render.print_json(body)
    else:
        render.message(f"Service group {group}: active host is now {body.get('active_host')}.")


def _find_group(client: ServiceClient, service: str, group: str | None) -> tuple[str, str]:
    """(group, service) from ``group.service``, ``--group``, or the one group that has it."""
    service = service.strip()
    if "." in service:
        named, _, service = service.partition(".")
        if group is not None and group != named:
            raise CliError(
                f"{named}.{service} names group {named!r} but --group says {group!r}",
                ExitCode.usage,
            )
        group = named
    if not service:
        raise CliError("the service name must not be empty", ExitCode.usage)
    if group is not None:
        return group, service
    having = [
        g["name"]
        for g in _all_groups(client)
        if any(s.get("name") == service for s in g.get("services") or [])
    ]
    if not having:
        raise CliError(f"404 no service group has a service {service!r}", ExitCode.not_found)
    if len(having) > 1:
        raise CliError(
            f"service {service!r} is in several groups ({', '.join(having)}); name one as "
            f"GROUP.{service} or with --group",
            ExitCode.usage,
        )
    return having[0], service


def sm_restart(
    ctx: typer.Context,
    service: Annotated[
        str, typer.Argument(metavar="SERVICE", help="group.service, or a service name.")
    ],
    host: Annotated[str, typer.Option("--host", help="The member host whose instance restarts.")],
    group: Annotated[
        str | None, typer.Option("--group", "-g", help="The group (when the name is ambiguous).")
    ] = None,
) -> None:
    """Restart one service instance on one member host."""
    client = context.client(ctx, "service")
    group_name, service_name = _find_group(client, service, group)
    request = {"service": service_name, "host": host}
    body = client.post(_group_path(group_name, "/restart"), request)
    if context.wants_json(ctx):
        render.print_json(body if body is not None else {"group": group_name, **request})
    else:
        render.message(f"Restart of {group_name}.{service_name} on {host} requested.")


def _read_declaration(file: str) -> tuple[str, bytes]:
    """The file's text (``-``: stdin) and its bytes."""
    try:
        if file == "-":
            text = sys.stdin.read()
        else:
            text = Path(file).read_text(encoding="utf-8")
    except OSError as e:
        raise CliError(f"cannot read {file}: {e.strerror or e}", ExitCode.usage) from None
    except UnicodeDecodeError as e:
        raise CliError(f"{file} is not UTF-8 text: {e}", ExitCode.usage) from None
    return text, text.encode()


def _parse_declaration(file: str, text: str) -> tuple[Any, bool]:
    """The declaration as data, and whether it is JSON (else YAML)."""
    try:
        return json.loads(text), True
    except ValueError:
        pass
    try:
        return yaml.safe_load(text), False
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CliError(f"{file} is neither JSON nor YAML: {first}", ExitCode.usage) from None


def _refused(exc: CliError) -> CliError:
    """A 422 as its first bad field and that field's message (``(and N more)``)."""
    problem = exc.problem if isinstance(exc.problem, dict) else {}
    errors = [e for e in problem.get("errors") or [] if isinstance(e, dict)]
    if not exc.message.startswith("422 ") or not errors:
        return exc
    field, text = str(errors[0].get("field")), str(errors[0].get("message"))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return CliError(f"422 {field}: {text}{more}", exc.exit_code, problem=problem)


def _naming_fields(command: Callable[..., None]) -> Callable[..., None]:
    """Run ``command``; a 422 names its first bad field (see ``_refused``)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except CliError as exc:
            raise _refused(exc) from None

    return run


def sm_group_add(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(metavar="FILE", help="YAML or JSON; '-' reads stdin.")],
    name: Annotated[
        str | None, typer.Option("--name", help="The group's name (default: the file's name:).")
    ] = None,
) -> None:
    """Declare a service group from a YAML or JSON file, or replace its declaration."""
    text, raw = _read_declaration(file)
    data, is_json = _parse_declaration(file, text)
    if not isinstance(data, dict):
        raise CliError(f"{file} must hold one service group (a mapping)", ExitCode.usage)
    declared = data.get("name")
    group = name or (declared if isinstance(declared, str) else None)
    if not group:
        raise CliError(f"{file} has no 'name:'; give the group's name with --name", ExitCode.usage)
    client = context.client(ctx, "service")
    try:
        before = client.get(_group_path(group)) or {}
    except CliError as exc:
        if exc.exit_code is not ExitCode.not_found:
            raise
        before = {}
    content_type = "application/json" if is_json else "application/yaml"
    try:
        status, body = client.send(
            "PUT", _group_path(group), content=raw, headers={"Content-Type": content_type}
        )
    except CliError as exc:
        # With --format json, a refusal's whole problem (every bad field) goes to stdout.
        if exc.message.startswith("422 ") and context.wants_json(ctx) and exc.problem:
            render.print_json(exc.problem)
        raise
    body = body or {}
    if status == 201:
        result = "created"
    elif before and body.get("version") == before.get("version"):
        result = "unchanged"
    else:
        result = "updated"
    if context.wants_json(ctx):
        render.print_json({**body, "result": result})
    else:
        render.message(f"Service group {group} {result} (version {body.get('version')}).")


def sm_group_delete(ctx: typer.Context, group: GroupName) -> None:
    """Delete a service group (its instances are removed from the hosts)."""
    context.client(ctx, "service").delete(_group_path(group))
    if context.wants_json(ctx):
        render.print_json({"deleted": group})
    else:
        render.message(f"Service group {group} deleted.")


def _post_action(ctx: typer.Context, path: str, done: str) -> None:
    """POST ``path`` to the service service; print its answer, or ``done`` and the new state."""
    body = context.client(ctx, "service").post(path, None) or {}
    if context.wants_json(ctx):
        render.print_json(body)
    else:
        render.message(f"{done} (state: {body.get('state')}).")


def _named(command: Callable[..., None], action: str, help_text: str) -> Callable[..., None]:
    command.__doc__ = help_text
    command.__name__ = f"sm_{action}"
    return command


def _group_action(action: str, help_text: str) -> Callable[..., None]:
    def command(ctx: typer.Context, group: GroupName) -> None:
        _post_action(ctx, _group_path(group, f"/{action}"), f"Service group {group} {action}d")

    return _named(command, action, help_text)


def _member_action(action: str, help_text: str) -> Callable[..., None]:
    def command(ctx: typer.Context, group: GroupName, host: HostName) -> None:
        path = _group_path(group, f"/members/{path_part(host.strip())}/{action}")
        _post_action(ctx, path, f"{host} {action}ed in service group {group}")

    return _named(command, action, help_text)


COMMANDS: dict[str, Callable[..., None]] = {
    "sm-list": sm_list,
    "sm-show": sm_show,
    "sm-swact": sm_swact,
    "sm-restart": sm_restart,
    "sm-group-add": sm_group_add,
    "sm-group-delete": sm_group_delete,
    "sm-disable": _group_action("disable", "Stop a service group everywhere and keep it stopped."),
    "sm-enable": _group_action("enable", "Let a disabled service group be placed again."),
    "sm-lock": _member_action("lock", "Take one member host out of a service group."),
    "sm-unlock": _member_action("unlock", "Let a locked member host run the group again."),
}


def register(cli: typer.Typer) -> None:
    """Add the service group commands to the ``roost`` app."""
    for name, command in COMMANDS.items():
        cli.command(name)(_naming_fields(command))
