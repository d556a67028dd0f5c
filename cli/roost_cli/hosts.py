"""Host and system commands over the config service (StarlingX ``system host-*``, ``system show``).

``register(cli)`` adds them to the ``roost`` typer app. A host is named by its uuid or its
hostname; a discovered host (no hostname yet) also by its management MAC, looked up in the host
list. BMC passwords are write-only: the API never returns one, and ``--bmc-password-stdin`` or
``ROOST_BMC_PASSWORD`` keep it out of the process list.
"""

from __future__ import annotations

import os
import re
import sys
from enum import StrEnum
from typing import Annotated, Any

import typer

from roost_cli import context, render
from roost_cli.client import ServiceClient, path_part
from roost_cli.config import page_size
from roost_cli.errors import CliError, ExitCode

#: The config API's ``limit`` maximum for ``GET /v1/hosts``.
HOSTS_LIMIT_MAX = 1000
BMC_PASSWORD_ENV = "ROOST_BMC_PASSWORD"
_MAC = re.compile(r"^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$")


class Personality(StrEnum):
    controller = "controller"
    worker = "worker"
    storage = "storage"


class InstallState(StrEnum):
    discovered = "discovered"
    provisioning = "provisioning"
    provisioned = "provisioned"
    failed = "failed"


class BmcType(StrEnum):
    ipmi = "ipmi"
    redfish = "redfish"
    none = "none"


class SystemMode(StrEnum):
    simplex = "simplex"
    duplex = "duplex"
    standard = "standard"


# Helpers ---------------------------------------------------------------------------------------


def _host_path(client: ServiceClient, ref: str, suffix: str = "") -> str:
    """``/v1/hosts/<uuid or hostname>[suffix]``; a MAC is looked up (discovered hosts have no
    hostname, and their MAC is what ``host-list`` shows)."""
    ref = ref.strip()
    if not ref:
        raise CliError("the host ID must not be empty", ExitCode.usage)
    if _MAC.match(ref):
        mac = ref.lower().replace("-", ":")
        hosts = client.collect("/v1/hosts", "hosts", [], limit=None, page_size=_page_size()).get(
            "hosts", []
        )
        match = next((h for h in hosts if h.get("mgmt_mac") == mac), None)
        if match is None:
            raise CliError(f"404 no host has management MAC {mac}", ExitCode.not_found)
        ref = match["uuid"]
    return f"/v1/hosts/{path_part(ref)}{suffix}"


def _page_size() -> int:
    return min(page_size(), HOSTS_LIMIT_MAX)


def split_list(value: str) -> list[str]:
    """``'a,b'`` → ``['a', 'b']``; ``''`` → ``[]`` (clears the list)."""
    return [part.strip() for part in value.split(",") if part.strip()]


def parse_labels(pairs: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CliError(f"labels are key=value, not {pair!r}", ExitCode.usage)
        labels[key.strip()] = value.strip()
    return labels


def _bmc_password(given: str | None, from_stdin: bool, *, env_allowed: bool) -> str | None:
    """The BMC password from ``--bmc-password``, ``--bmc-password-stdin`` (first line of stdin)
    or, when the command sets BMC details, ``ROOST_BMC_PASSWORD``; None if none applies."""
    if given is not None and from_stdin:
        raise CliError("give --bmc-password or --bmc-password-stdin, not both", ExitCode.usage)
    if from_stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise CliError("--bmc-password-stdin read an empty password", ExitCode.usage)
        return line
    if given is not None:
        return given
    if env_allowed:
        return os.environ.get(BMC_PASSWORD_ENV) or None
    return None


def _show_host(ctx: typer.Context, host: dict[str, Any]) -> None:
    render.print_json(host) if context.wants_json(ctx) else render.host(host)


# Options ---------------------------------------------------------------------------------------

HostId = Annotated[
    str, typer.Argument(metavar="ID", help="The host's uuid or hostname (or management MAC).")
]
Hostname = Annotated[str | None, typer.Option(help="Lower-case RFC 1123 label, e.g. worker-1.")]
MgmtIp = Annotated[str | None, typer.Option("--mgmt-ip", help="Management IP address.")]
BmcTypeOpt = Annotated[
    BmcType | None, typer.Option("--bmc-type", help="ipmi, redfish, or none (no BMC).")
]
BmcAddress = Annotated[
    str | None, typer.Option("--bmc-address", help="BMC IP address or host name.")
]
BmcPort = Annotated[
    int | None,
    typer.Option("--bmc-port", min=1, max=65535, help="BMC port (default: 623 for IPMI)."),
]
BmcUsername = Annotated[str | None, typer.Option("--bmc-username", help="BMC user name.")]
BmcPassword = Annotated[
    str | None,
    typer.Option(
        "--bmc-password",
        help="BMC password (visible in the process list: prefer --bmc-password-stdin or "
        f"{BMC_PASSWORD_ENV}).",
        show_default=False,
    ),
]
BmcPasswordStdin = Annotated[
    bool,
    typer.Option("--bmc-password-stdin", help="Read the BMC password from the first stdin line."),
]
Location = Annotated[str | None, typer.Option(help="Where the host is, for people.")]
Subfunctions = Annotated[
    str | None,
    typer.Option(help="Comma-separated: controller,worker,storage,lowlatency."),
]
HostsLimit = Annotated[int | None, context.limit_option(HOSTS_LIMIT_MAX)]


# Hosts -----------------------------------------------------------------------------------------


def host_list(
    ctx: typer.Context,
    personality: Annotated[Personality | None, typer.Option(help="Only this personality.")] = None,
    install_state: Annotated[
        InstallState | None, typer.Option("--install-state", help="Only hosts in this state.")
    ] = None,
    limit: HostsLimit = None,
) -> None:
    """List hosts in the order they were added (every page unless --limit)."""
    params: list[tuple[str, Any]] = []
    if personality is not None:
        params.append(("personality", personality.value))
    if install_state is not None:
        params.append(("install_state", install_state.value))
    body = context.client(ctx, "config").collect(
        "/v1/hosts", "hosts", params, limit=limit, page_size=_page_size()
    )
    items = body.get("hosts", [])
    states = _with_states(ctx, items)
    if context.wants_json(ctx):
        render.print_json({"hosts": items})
    else:
        render.hosts(items, states=states)


def _with_states(ctx: typer.Context, items: list[dict[str, Any]]) -> bool:
    """Add the host service's administrative/operational/availability to config's hosts (by
    uuid). Without the host service, say so in one line on stderr and show config's columns."""
    try:
        known = context.client(ctx, "host").collect(
            "/v1/hosts", "hosts", [], limit=None, page_size=_page_size()
        )
    except CliError as exc:
        print(f"roost: note: no host states ({exc.message})", file=sys.stderr)
        return False
    by_uuid = {h.get("uuid"): h for h in known.get("hosts", [])}
    for item in items:
        found = by_uuid.get(item.get("uuid")) or {}
        for key in render.STATE_COLUMNS:
            item[key] = found.get(key)
    return True


def host_show(ctx: typer.Context, host_id: HostId) -> None:
    """Show one host (the BMC password is never shown, only whether one is set)."""
    client = context.client(ctx, "config")
    _show_host(ctx, client.get(_host_path(client, host_id)))


def host_add(
    ctx: typer.Context,
    hostname: Annotated[str, typer.Option(help="Lower-case RFC 1123 label, e.g. worker-1.")],
    personality: Annotated[Personality, typer.Option(help="controller, worker or storage.")],
    mgmt_mac: Annotated[str, typer.Option("--mgmt-mac", help="Management MAC address.")],
    mgmt_ip: MgmtIp = None,
    subfunctions: Subfunctions = None,
    bmc_type: BmcTypeOpt = None,
    bmc_address: BmcAddress = None,
    bmc_port: BmcPort = None,
    bmc_username: BmcUsername = None,
    bmc_password: BmcPassword = None,
    bmc_password_stdin: BmcPasswordStdin = False,
    location: Location = None,
) -> None:
    """Add a host; it gets its first configuration at once."""
    body: dict[str, Any] = {
        "hostname": hostname,
        "personality": personality.value,
        "mgmt_mac": mgmt_mac,
    }
    wants_bmc = bmc_type is not None and bmc_type is not BmcType.none
    password = _bmc_password(bmc_password, bmc_password_stdin, env_allowed=wants_bmc)
    optional = {
        "mgmt_ip": mgmt_ip,
        "subfunctions": split_list(subfunctions) if subfunctions is not None else None,
        "bmc_type": bmc_type.value if bmc_type is not None else None,
        "bmc_address": bmc_address,
        "bmc_port": bmc_port,
        "bmc_username": bmc_username,
        "bmc_password": password,
        "location": location,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    _show_host(ctx, context.client(ctx, "config").post("/v1/hosts", body))


def host_update(
    ctx: typer.Context,
    host_id: HostId,
    hostname: Hostname = None,
    personality: Annotated[
        Personality | None,
        typer.Option(help="Set once (a discovered host's); cannot change after."),
    ] = None,
    mgmt_mac: Annotated[str | None, typer.Option("--mgmt-mac", help="Management MAC.")] = None,
    mgmt_ip: MgmtIp = None,
    subfunctions: Subfunctions = None,
    bmc_type: BmcTypeOpt = None,
    bmc_address: BmcAddress = None,
    bmc_port: BmcPort = None,
    bmc_username: BmcUsername = None,
    bmc_password: BmcPassword = None,
    bmc_password_stdin: BmcPasswordStdin = False,
    location: Location = None,
) -> None:
    """Change a host (only the options given). Giving a discovered host --hostname and
    --personality provisions it."""
    changes_bmc = bmc_type is not BmcType.none and any(
        v is not None for v in (bmc_type, bmc_address, bmc_port, bmc_username)
    )
    password = _bmc_password(bmc_password, bmc_password_stdin, env_allowed=changes_bmc)
    fields = {
        "hostname": hostname,
        "personality": personality.value if personality is not None else None,
        "mgmt_mac": mgmt_mac,
        "mgmt_ip": mgmt_ip,
        "subfunctions": split_list(subfunctions) if subfunctions is not None else None,
        "bmc_type": bmc_type.value if bmc_type is not None else None,
        "bmc_address": bmc_address,
        "bmc_port": bmc_port,
        "bmc_username": bmc_username,
        "bmc_password": password,
        "location": location,
    }
    body = {k: v for k, v in fields.items() if v is not None}
    if not body:
        raise CliError("nothing to change; see 'roost host-update --help'", ExitCode.usage)
    client = context.client(ctx, "config")
    _show_host(ctx, client.patch(_host_path(client, host_id), body))


def host_delete(ctx: typer.Context, host_id: HostId) -> None:
    """Delete a host, its inventory and its alarms."""
    client = context.client(ctx, "config")
    client.delete(_host_path(client, host_id))
    if context.wants_json(ctx):
        render.print_json({"deleted": host_id})
    else:
        render.message(f"Host {host_id} deleted.")


def host_label_assign(
    ctx: typer.Context,
    host_id: HostId,
    labels: Annotated[list[str], typer.Argument(metavar="KEY=VALUE...", help="Labels to set.")],
) -> None:
    """Set labels on a host (others are kept; an existing key gets the new value)."""
    wanted = parse_labels(labels)
    client = context.client(ctx, "config")
    path = _host_path(client, host_id)
    current = client.get(path).get("labels") or {}
    host = client.request("PUT", f"{path}/labels", json={"labels": {**current, **wanted}})
    render.print_json(host) if context.wants_json(ctx) else render.labels(host)


def host_label_remove(
    ctx: typer.Context,
    host_id: HostId,
    keys: Annotated[list[str], typer.Argument(metavar="KEY...", help="Label keys to remove.")],
) -> None:
    """Remove labels from a host (nothing changes if any key is not set)."""
    client = context.client(ctx, "config")
    path = _host_path(client, host_id)
    current = client.get(path).get("labels") or {}
    missing = [k for k in keys if k not in current]
    if missing:
        raise CliError(
            f"host {host_id} has no label {', '.join(missing)} (nothing was changed)",
            ExitCode.not_found,
        )
    kept = {k: v for k, v in current.items() if k not in keys}
    host = client.request("PUT", f"{path}/labels", json={"labels": kept})
    render.print_json(host) if context.wants_json(ctx) else render.labels(host)


def host_inventory(ctx: typer.Context, host_id: HostId) -> None:
    """The hardware the host's agent reported: CPUs, memory, disks, ports, PCI devices."""
    client = context.client(ctx, "config")
    body = client.get(_host_path(client, host_id, "/inventory"))
    render.print_json(body) if context.wants_json(ctx) else render.inventory(body)


def host_config_show(ctx: typer.Context, host_id: HostId) -> None:
    """Desired against applied configuration: target, applied, status, lag, the document."""
    client = context.client(ctx, "config")
    body = client.get(_host_path(client, host_id, "/config"))
    render.print_json(body) if context.wants_json(ctx) else render.host_config(body)


# System ----------------------------------------------------------------------------------------


def system_show(ctx: typer.Context) -> None:
    """Show the system: name, mode, time zone, DNS and NTP servers."""
    body = context.client(ctx, "config").get("/v1/system")
    render.print_json(body) if context.wants_json(ctx) else render.system(body)


def system_modify(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option(help="The system's name.")] = None,
    mode: Annotated[SystemMode | None, typer.Option(help="simplex, duplex or standard.")] = None,
    timezone: Annotated[str | None, typer.Option(help="IANA time zone, e.g. UTC.")] = None,
    dns_servers: Annotated[
        str | None,
        typer.Option("--dns-servers", help="Comma-separated IP addresses ('' clears)."),
    ] = None,
    ntp_servers: Annotated[
        str | None,
        typer.Option("--ntp-servers", help="Comma-separated addresses or names ('' clears)."),
    ] = None,
    description: Annotated[str | None, typer.Option(help="A note for people.")] = None,
) -> None:
    """Change the system; every configured host whose configuration changes gets a new version."""
    fields = {
        "name": name,
        "mode": mode.value if mode is not None else None,
        "timezone": timezone,
        "dns_servers": split_list(dns_servers) if dns_servers is not None else None,
        "ntp_servers": split_list(ntp_servers) if ntp_servers is not None else None,
        "description": description,
    }
    body = {k: v for k, v in fields.items() if v is not None}
    if not body:
        raise CliError("nothing to change; see 'roost system-modify --help'", ExitCode.usage)
    system = context.client(ctx, "config").patch("/v1/system", body)
    render.print_json(system) if context.wants_json(ctx) else render.system(system)


# Registration ----------------------------------------------------------------------------------

COMMANDS = {
    "host-list": host_list,
    "host-show": host_show,
    "host-add": host_add,
    "host-update": host_update,
    "host-delete": host_delete,
    "host-label-assign": host_label_assign,
    "host-label-remove": host_label_remove,
    "host-inventory": host_inventory,
    "host-config-show": host_config_show,
    "system-show": system_show,
    "system-modify": system_modify,
}


def register(cli: typer.Typer) -> None:
    """Add the host and system commands to the ``roost`` app."""
    for name, command in COMMANDS.items():
        cli.command(name)(command)
