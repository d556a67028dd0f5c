"""Host actions and timelines over the host service (StarlingX ``system host-lock`` and friends).

``register(cli)`` adds ``host-lock``, ``host-unlock``, ``host-force-lock``, ``host-reboot``,
``host-reset``, ``host-power-on``, ``host-power-off``, ``host-reinstall`` and ``host-timeline``
to the ``roost`` typer app. A host is named by its uuid or hostname. An action the host's state
does not allow fails with the service's reason (which names the current state).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from roost_cli import context, render
from roost_cli.client import path_part
from roost_cli.config import page_size
from roost_cli.errors import CliError, ExitCode

#: The host API's ``limit`` maximum.
LIMIT_MAX = 1000

HostId = Annotated[str, typer.Argument(metavar="ID", help="The host's uuid or hostname.")]
Reason = Annotated[str, typer.Option("--reason", help="Why, recorded in the host's timeline.")]


def _host_path(ref: str, suffix: str = "") -> str:
    ref = ref.strip()
    if not ref:
        raise CliError("the host ID must not be empty", ExitCode.usage)
    return f"/v1/hosts/{path_part(ref)}{suffix}"


def show_state(host: dict[str, Any]) -> None:
    rows = [
        (k, host.get(k))
        for k in (
            "hostname",
            "uuid",
            "personality",
            "administrative",
            "operational",
            "availability",
            "task",
            "state_changed_at",
        )
    ]
    render.table(["Property", "Value"], rows, no_wrap=["Property"])


def _action(name: str, help_text: str) -> Callable[..., None]:
    def command(ctx: typer.Context, host_id: HostId, reason: Reason = "") -> None:
        body = {"action": name, "reason": reason}
        host = context.client(ctx, "host").post(_host_path(host_id, "/actions"), body)
        render.print_json(host) if context.wants_json(ctx) else show_state(host)

    command.__doc__ = help_text
    command.__name__ = f"host_{name.replace('-', '_')}"
    return command


ACTIONS = {
    "lock": "Lock a host: take it out of service (refused for the last unlocked controller).",
    "unlock": "Unlock a host: run its in-test, then put it in service.",
    "force-lock": "Lock a host even if it is the last unlocked-enabled controller.",
    "reboot": "Reboot a locked host.",
    "reset": "Reset a locked host (also when it is offline).",
    "power-on": "Power on a locked, powered-off host.",
    "power-off": "Power off a locked host.",
    "reinstall": "Reinstall a locked host.",
}


def host_timeline(
    ctx: typer.Context,
    host_id: HostId,
    limit: Annotated[int | None, context.limit_option(LIMIT_MAX)] = None,
) -> None:
    """Show a host's state transitions, oldest first: from, to, cause, reason, who."""
    body = context.client(ctx, "host").collect(
        _host_path(host_id, "/timeline"),
        "timeline",
        [],
        limit=limit,
        page_size=min(page_size(), LIMIT_MAX),
    )
    entries = body.get("timeline", [])
    if context.wants_json(ctx):
        render.print_json({"timeline": entries})
        return

    def states(s: dict[str, Any]) -> str:
        return f"{s['administrative']}-{s['operational']}-{s['availability']}"

    render.table(
        ["Time", "From", "To", "Task", "Cause", "Reason", "Actor"],
        [
            (
                e["time"],
                states(e["from"]),
                states(e["to"]),
                e["task"],
                e["cause"],
                e["reason"],
                e["actor"],
            )
            for e in entries
        ],
        no_wrap=["Time", "From", "To"],
    )


def register(cli: typer.Typer) -> None:
    """Add the host action and timeline commands to the ``roost`` app."""
    for name, help_text in ACTIONS.items():
        cli.command(f"host-{name}")(_action(name, help_text))
    cli.command("host-timeline")(host_timeline)
