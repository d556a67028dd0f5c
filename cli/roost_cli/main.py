"""The ``roost`` command: typer commands over the fault service's v1 API (host and system
commands over the config service are in ``hosts.py``, host actions and timelines over the host
service in ``host_actions.py``, HA service groups over the service service in ``sm.py``,
``roost software`` and ``roost strategy`` over the software service in ``software.py`` and
``strategy.py``, ``roost sim`` in ``sim.py``).

``app`` is the entry point: it runs the typer application and turns every failure into one
``roost: error: ...`` line on stderr with a non-zero exit code (see cli/README.md).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated, Any, NoReturn

import typer

from roost_cli import (
    context,
    host_actions,
    host_bmc,
    hosts,
    render,
    sim,
    sm,
    software,
    strategy,
    tokens,
)
from roost_cli.client import path_part
from roost_cli.config import OutputFormat, Settings, page_size
from roost_cli.errors import CliError, ExitCode

cli = typer.Typer(
    name="roost",
    help="Operate Roost: hosts and the system, alarms, the event log, suppression, webhooks, "
    "HA service groups, software releases and update strategies.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Severity(StrEnum):
    critical = "critical"
    major = "major"
    minor = "minor"
    warning = "warning"


@cli.callback()
def _global(
    ctx: typer.Context,
    output: Annotated[
        OutputFormat,
        typer.Option("--format", "-f", help="table for people, json (the API's JSON) for scripts."),
    ] = OutputFormat.table,
    fault_url: Annotated[
        str | None,
        typer.Option(
            "--fault-url",
            envvar="ROOST_FAULT_URL",
            help="The fault service (default: http://127.0.0.1:8102).",
            show_default=False,
        ),
    ] = None,
    config_url: Annotated[
        str | None,
        typer.Option(
            "--config-url",
            envvar="ROOST_CONFIG_URL",
            help="The config service (default: http://127.0.0.1:8101).",
            show_default=False,
        ),
    ] = None,
    host_url: Annotated[
        str | None,
        typer.Option(
            "--host-url",
            envvar="ROOST_HOST_URL",
            help="The host service (default: http://127.0.0.1:8103).",
            show_default=False,
        ),
    ] = None,
    service_url: Annotated[
        str | None,
        typer.Option(
            "--service-url",
            envvar="ROOST_SERVICE_URL",
            help="The service service, HA service groups (default: http://127.0.0.1:8104).",
            show_default=False,
        ),
    ] = None,
    software_url: Annotated[
        str | None,
        typer.Option(
            "--software-url",
            envvar="ROOST_SOFTWARE_URL",
            help="The software service, releases and updates (default: http://127.0.0.1:8105).",
            show_default=False,
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="ROOST_TOKEN",
            help="API token (default: admin_token from the credentials file).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Global options come before the command: ``roost --format json alarm-list``."""
    ctx.obj = Settings(
        fault_url=fault_url,
        token=token,
        output=output,
        config_url=config_url,
        host_url=host_url,
        service_url=service_url,
    )
    ctx.meta[context.SOFTWARE_URL_KEY] = software_url


# Helpers ---------------------------------------------------------------------------------------


def parse_query(text: str | None) -> list[tuple[str, str]]:
    """``'field=value;field=value'`` as FM's ``q.field``/``q.op``/``q.value`` parameters."""
    params: list[tuple[str, str]] = []
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise CliError(
                f"--query takes 'field=value;field=value', not {part.strip()!r}", ExitCode.usage
            )
        params += [("q.field", name.strip()), ("q.op", "eq"), ("q.value", value.strip())]
    return params


def split_ids(values: Iterable[str]) -> list[str]:
    """Comma-separated and repeated option values, flattened, without duplicates."""
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            if part.strip() and part.strip() not in out:
                out.append(part.strip())
    return out


Limit = Annotated[int | None, context.limit_option(2000)]
Query = Annotated[
    str | None,
    typer.Option("--query", "-q", help="Filters: 'field=value;field=value' (substring match)."),
]
ShowUuid = Annotated[bool, typer.Option("--uuid", help="Show the UUID column.")]
IncludeSuppressed = Annotated[
    bool, typer.Option("--include-suppressed", help="Also show suppressed ones.")
]


# Alarms ----------------------------------------------------------------------------------------


@cli.command("alarm-list")
def alarm_list(
    ctx: typer.Context,
    severity: Annotated[Severity | None, typer.Option(help="Only this severity.")] = None,
    include_suppressed: IncludeSuppressed = False,
    uuid: ShowUuid = False,
    query: Query = None,
    limit: Limit = None,
) -> None:
    """List active alarms, most severe first (suppressed ones show as S(<id>))."""
    params: list[tuple[str, Any]] = parse_query(query)
    if severity is not None:
        params += [("q.field", "severity"), ("q.op", "eq"), ("q.value", severity.value)]
    params += [("expand", "true"), ("include_suppress", str(include_suppressed).lower())]
    body = context.client(ctx, "fault").collect(
        "/v1/alarms", "alarms", params, limit=limit, page_size=page_size()
    )
    if context.wants_json(ctx):
        render.print_json(body)
    else:
        render.alarms(body.get("alarms", []), show_uuid=uuid)


@cli.command("alarm-show")
def alarm_show(
    ctx: typer.Context, alarm_uuid: Annotated[str, typer.Argument(metavar="UUID")]
) -> None:
    """Show every field of one active alarm."""
    body = context.client(ctx, "fault").get(f"/v1/alarms/{path_part(alarm_uuid)}")
    render.print_json(body) if context.wants_json(ctx) else render.details(body)


@cli.command("alarm-delete")
def alarm_delete(
    ctx: typer.Context, alarm_uuid: Annotated[str, typer.Argument(metavar="UUID")]
) -> None:
    """Clear an active alarm by hand (the clear is logged and subscribers are told)."""
    context.client(ctx, "fault").delete(f"/v1/alarms/{path_part(alarm_uuid)}")
    if context.wants_json(ctx):
        render.print_json({"deleted": alarm_uuid})
    else:
        render.message(f"Alarm {alarm_uuid} deleted.")


@cli.command("alarm-summary")
def alarm_summary(ctx: typer.Context, include_suppressed: IncludeSuppressed = False) -> None:
    """Count active alarms per severity; suppressed alarms are counted on their own row."""
    params = {"include_suppress": str(include_suppressed).lower()}
    body = context.client(ctx, "fault").get("/v1/alarms/summary", params)
    if context.wants_json(ctx):
        render.print_json(body)
    else:
        render.summary(body, included_suppressed=include_suppressed)


@cli.command("alarm-raise")
def alarm_raise(
    ctx: typer.Context,
    alarm_id: Annotated[str, typer.Option("--alarm-id", help="e.g. 100.101")],
    entity: Annotated[str, typer.Option(help="Entity instance id, e.g. host=worker-1")],
    severity: Annotated[Severity, typer.Option()],
    reason: Annotated[str, typer.Option(help="Reason text.")],
    entity_type: Annotated[str, typer.Option(help="Entity type id, e.g. host.")] = "",
    repair_action: Annotated[str, typer.Option(help="Proposed repair action.")] = "",
    service_affecting: Annotated[bool, typer.Option("--service-affecting")] = False,
) -> None:
    """Raise (or update) the alarm (alarm id, entity)."""
    body = {
        "alarm_id": alarm_id,
        "entity_instance_id": entity,
        "entity_type_id": entity_type,
        "severity": severity.value,
        "reason_text": reason,
        "proposed_repair_action": repair_action,
        "service_affecting": service_affecting,
    }
    alarm = context.client(ctx, "fault").post("/v1/alarms", body)
    render.print_json(alarm) if context.wants_json(ctx) else render.details(alarm)


# Event log -------------------------------------------------------------------------------------


@cli.command("event-list")
def event_list(
    ctx: typer.Context,
    alarms: Annotated[bool, typer.Option("--alarms", help="Only alarm sets and clears.")] = False,
    logs: Annotated[bool, typer.Option("--logs", help="Only customer logs.")] = False,
    include_suppressed: IncludeSuppressed = False,
    uuid: ShowUuid = False,
    query: Query = None,
    limit: Limit = None,
) -> None:
    """List the event log (alarm sets and clears, customer logs), newest first."""
    params: list[tuple[str, Any]] = parse_query(query)
    params += [
        ("expand", "true"),
        ("include_suppress", str(include_suppressed).lower()),
        ("alarms", str(alarms).lower()),
        ("logs", str(logs).lower()),
    ]
    client = context.client(ctx, "fault")
    body = client.collect("/v1/event_log", "event_log", params, limit=limit, page_size=page_size())
    if context.wants_json(ctx):
        render.print_json(body)
    else:
        render.events(body.get("event_log", []), show_uuid=uuid)


@cli.command("event-show")
def event_show(
    ctx: typer.Context, event_uuid: Annotated[str, typer.Argument(metavar="UUID")]
) -> None:
    """Show every field of one event log record."""
    body = context.client(ctx, "fault").get(f"/v1/event_log/{path_part(event_uuid)}")
    render.print_json(body) if context.wants_json(ctx) else render.details(body)


# Suppression -----------------------------------------------------------------------------------

AlarmIds = Annotated[
    list[str],
    typer.Option("--alarm-id", help="Alarm ids, comma-separated or repeated: 100.101,200.001"),
]


def _set_suppression(ctx: typer.Context, alarm_ids: list[str], status: str) -> None:
    wanted = split_ids(alarm_ids)
    if not wanted:
        raise CliError("give at least one --alarm-id", ExitCode.usage)
    client = context.client(ctx, "fault")
    entries = {e["alarm_id"]: e for e in client.get("/v1/event_suppression")["event_suppression"]}
    unknown = [a for a in wanted if a not in entries]
    if unknown:
        raise CliError(
            f"unknown alarm id {', '.join(unknown)}; see 'roost event-suppress-list "
            "--include-unsuppressed' (nothing was changed)",
            ExitCode.not_found,
        )
    patch = [{"op": "replace", "path": "/suppression_status", "value": status}]
    changed = [
        client.patch(f"/v1/event_suppression/{path_part(entries[a]['uuid'])}", patch)
        for a in wanted
    ]
    if context.wants_json(ctx):
        render.print_json({"event_suppression": changed})
    else:
        render.suppressions(changed, show_uuid=False)


@cli.command("event-suppress")
def event_suppress(ctx: typer.Context, alarm_id: AlarmIds) -> None:
    """Hide alarms and logs of these alarm ids from default lists."""
    _set_suppression(ctx, alarm_id, "suppressed")


@cli.command("event-unsuppress")
def event_unsuppress(ctx: typer.Context, alarm_id: AlarmIds) -> None:
    """Show alarms and logs of these alarm ids again."""
    _set_suppression(ctx, alarm_id, "unsuppressed")


@cli.command("event-suppress-list")
def event_suppress_list(
    ctx: typer.Context,
    include_unsuppressed: Annotated[
        bool, typer.Option("--include-unsuppressed", help="List every known alarm id.")
    ] = False,
    uuid: ShowUuid = False,
) -> None:
    """List suppressed alarm ids (or every known one)."""
    params: list[tuple[str, Any]] = []
    if not include_unsuppressed:
        params = [("q.field", "suppression_status"), ("q.op", "eq"), ("q.value", "suppressed")]
    body = context.client(ctx, "fault").get("/v1/event_suppression", params)
    if context.wants_json(ctx):
        render.print_json(body)
    else:
        render.suppressions(body.get("event_suppression", []), show_uuid=uuid)


# Subscriptions ---------------------------------------------------------------------------------


@cli.command("subscription-add")
def subscription_add(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="Where to POST notifications.")],
    severity: Annotated[
        list[str], typer.Option("--severity", help="Only these severities (comma/repeat).")
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    alarm_id_prefix: Annotated[
        list[str], typer.Option("--alarm-id-prefix", help="Only alarm ids starting so, e.g. 200.")
    ] = [],  # noqa: B006
    include_suppressed: IncludeSuppressed = False,
    description: Annotated[str, typer.Option(help="A note for operators.")] = "",
) -> None:
    """Register a webhook that receives alarm raised/changed/cleared notifications."""
    severities = split_ids(severity)
    bad = [s for s in severities if s not in Severity.__members__]
    if bad:
        raise CliError(
            f"invalid severity {', '.join(bad)}; choose from {', '.join(Severity)}", ExitCode.usage
        )
    body = {
        "url": url,
        "severities": severities,
        "alarm_id_prefixes": split_ids(alarm_id_prefix),
        "include_suppressed": include_suppressed,
        "description": description,
    }
    sub = context.client(ctx, "fault").post("/v1/subscriptions", body)
    render.print_json(sub) if context.wants_json(ctx) else render.details(sub)


@cli.command("subscription-list")
def subscription_list(ctx: typer.Context) -> None:
    """List webhook subscriptions and how their deliveries are going."""
    body = context.client(ctx, "fault").get("/v1/subscriptions")
    if context.wants_json(ctx):
        render.print_json(body)
    else:
        render.subscriptions(body.get("subscriptions", []))


@cli.command("subscription-delete")
def subscription_delete(
    ctx: typer.Context, sub_id: Annotated[str, typer.Argument(metavar="ID")]
) -> None:
    """Remove a webhook subscription (its undelivered notifications are dropped)."""
    context.client(ctx, "fault").delete(f"/v1/subscriptions/{path_part(sub_id)}")
    if context.wants_json(ctx):
        render.print_json({"deleted": sub_id})
    else:
        render.message(f"Subscription {sub_id} deleted.")


hosts.register(cli)
host_actions.register(cli)
host_bmc.register(cli)
sim.register(cli)
sm.register(cli)
software.register(cli)
strategy.register(cli)
tokens.register(cli)


# Entry point -----------------------------------------------------------------------------------


def fail(message: str, code: int) -> NoReturn:
    """Print one error line on stderr and exit with ``code``."""
    line = " ".join(message.split())
    sys.stderr.write(f"roost: error: {line}\n")
    sys.stderr.flush()
    sys.exit(int(code))


def _usage_error(e: Exception) -> tuple[str, int] | None:
    """The message and exit code of typer's (or click's) own errors, found by duck typing:
    typer vendors click since 0.2x, older versions raise click's exceptions."""
    fmt, code = getattr(e, "format_message", None), getattr(e, "exit_code", None)
    if not callable(fmt) or not isinstance(code, int):
        return None
    ctx = getattr(e, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None and code == 2 else ""
    text = str(fmt()).replace("Value error, ", "")
    return f"{text}{hint}", code


def app(argv: list[str] | None = None) -> None:
    """Run ``roost``; never lets a traceback reach the terminal."""
    try:
        rc = cli(args=argv, prog_name="roost", standalone_mode=False)
    except CliError as e:
        fail(e.message, e.exit_code)
    except typer.Abort:
        fail("aborted", ExitCode.error)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except BrokenPipeError:
        sys.exit(ExitCode.error)
    except Exception as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `roost` alone: the help, on stderr
            e.show()  # type: ignore[attr-defined]
            sys.exit(ExitCode.usage)
        usage = _usage_error(e)
        if usage is not None:
            fail(*usage)
        # Anything else is a bug; still one line, never a traceback.
        fail(f"unexpected {type(e).__name__}: {e}", ExitCode.error)
    sys.exit(rc if isinstance(rc, int) else ExitCode.ok)


if __name__ == "__main__":
    app()
