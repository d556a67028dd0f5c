"""A host's BMC and sensors over the host service (StarlingX ``system host-sensor-list`` and
the BMC fields of ``host-show``).

``register(cli)`` adds ``host-sensor-list`` and ``host-bmc-show``. A host is named by its uuid
or hostname. The BMC password is never shown (the API does not return it), only whether one is
set.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from roost_cli import context, render
from roost_cli.host_actions import _host_path

HostId = Annotated[str, typer.Argument(metavar="ID", help="The host's uuid or hostname.")]


def host_sensor_list(ctx: typer.Context, host_id: HostId) -> None:
    """The host's sensors as its BMC last reported them: name, type, value, units, health."""
    body = context.client(ctx, "host").get(_host_path(host_id, "/sensors"))
    if context.wants_json(ctx):
        render.print_json(body)
        return
    sensors = body.get("sensors") or []
    if not sensors:
        why = (
            "the host has no IPMI BMC"
            if body.get("bmc_type") != "ipmi"
            else "no sensor readings yet (the BMC has not been read successfully)"
        )
        render.message(f"No sensors: {why}.")
        return
    rows = [
        [
            s.get("name"),
            s.get("type"),
            _value(s),
            s.get("units"),
            s.get("health") if not s.get("states") else f"{s['health']} ({', '.join(s['states'])})",
        ]
        for s in sensors
    ]
    caption = f"polled at {body['polled_at']}" if body.get("polled_at") else None
    render.table(
        ["Name", "Type", "Value", "Units", "Health"], rows, no_wrap=["Name"], caption=caption
    )


def _value(sensor: dict[str, Any]) -> str:
    if sensor.get("unavailable") or sensor.get("value") is None:
        return "n/a"
    return f"{sensor['value']:g}"


def host_bmc_show(ctx: typer.Context, host_id: HostId) -> None:
    """The host's BMC: type, address, port, user, whether a password is set, and how it
    answered the last poll (reachable, power state, last error, circuit breaker)."""
    body = context.client(ctx, "host").get(_host_path(host_id, "/bmc"))
    if context.wants_json(ctx):
        render.print_json(body)
        return
    error = body.get("last_error")
    rows: list[tuple[str, Any]] = [
        ("hostname", body.get("hostname")),
        ("uuid", body.get("uuid")),
        ("bmc_type", body.get("bmc_type")),
    ]
    if body.get("bmc_type") != "none":
        rows += [
            ("address", body.get("address")),
            ("port", body.get("port")),
            ("username", body.get("username")),
            ("password_set", body.get("password_set")),
            ("reachable", body.get("reachable")),
            ("power_state", body.get("power_state")),
            ("last_error", f"{error['kind']}: {error['message']}" if error else None),
            ("breaker", body.get("breaker")),
            ("polled_at", body.get("polled_at")),
            ("last_success_at", body.get("last_success_at")),
        ]
    render.table(["Property", "Value"], rows, no_wrap=["Property"])


COMMANDS = {"host-sensor-list": host_sensor_list, "host-bmc-show": host_bmc_show}


def register(cli: typer.Typer) -> None:
    """Add the BMC commands to the ``roost`` app."""
    for name, command in COMMANDS.items():
        cli.command(name)(command)
