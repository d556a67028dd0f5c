"""The update strategy over the software service (StarlingX ``sw-manager sw-deploy-strategy``).

``register(cli)`` adds the ``roost strategy`` group: ``create``, ``show [--details] [--watch]``,
``apply [--watch]``, ``abort`` and ``delete``. A strategy rolls one release over the fleet in
stages (controllers one at a time, workers serially or a few in parallel), each stage locking
its hosts, installing, rebooting if needed, unlocking and waiting for them.

``--watch`` shows live progress (a progress bar of steps done, the current stage and step, a
table of every host) until the strategy is applied, failed or aborted. ``watch_view`` builds
that view from a strategy document alone (no I/O), so it is tested with canned documents.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from roost_cli import context, render
from roost_cli.client import ServiceClient
from roost_cli.errors import CliError, ExitCode
from roost_cli.software import hosts_text, naming_fields, when

#: How often ``--watch`` asks for the strategy. Polling ``GET /v1/strategy`` rather than a
#: server-sent event stream, on purpose: the software service publishes its progress on the bus
#: (``software.strategy.changed``), which the CLI does not reach, and has no event stream of its
#: own; one small GET every half second is cheap, always returns the whole state (no missed or
#: out-of-order event to reconcile), and needs no reconnect logic when the service restarts or
#: fails over mid-apply — the next poll simply succeeds again.
POLL_S = 0.5
#: How long ``--watch`` keeps polling a service that does not answer before giving up.
UNREACHABLE_GIVE_UP_S = 60.0
#: States in which a strategy no longer changes on its own.
FINISHED = ("applied", "apply-failed", "aborted")

STYLES = {
    "ready-to-apply": "cyan",
    "applying": "yellow",
    "applied": "green",
    "apply-failed": "bold red",
    "aborting": "yellow",
    "aborted": "red",
    "initial": "dim",
    "in-progress": "yellow",
    "done": "green",
    "failed": "bold red",
    "skipped": "dim",
    "waiting": "dim",
}

app = typer.Typer(
    name="strategy",
    help="Roll a release over the fleet: create an update strategy, apply it (--watch to follow "
    "it live), abort or delete it.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class ControllerApply(StrEnum):
    serial = "serial"
    ignore = "ignore"


class WorkerApply(StrEnum):
    serial = "serial"
    parallel = "parallel"
    ignore = "ignore"


class InstanceAction(StrEnum):
    migrate = "migrate"
    stop_start = "stop-start"


class AlarmRestrictions(StrEnum):
    strict = "strict"
    relaxed = "relaxed"


# Rendering (pure: a strategy document in, rich renderables out) ---------------------------------


def styled(value: Any) -> Text:
    text = "-" if value in (None, "") else str(value)
    return Text(text, style=STYLES.get(text, ""))


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value or [] if isinstance(v, dict)] if isinstance(value, list) else []


def stages_of(strategy: Mapping[str, Any]) -> list[dict[str, Any]]:
    return _dicts(strategy.get("stages"))


def steps_of(stage: Mapping[str, Any]) -> list[dict[str, Any]]:
    return _dicts(stage.get("steps"))


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def progress_counts(strategy: Mapping[str, Any]) -> tuple[int, int]:
    """(steps done, steps in all), from the document's counters or, without them, its steps
    (done and skipped steps count as done)."""
    steps = [s for st in stages_of(strategy) for s in steps_of(st)]
    total = _int(strategy.get("steps_total")) or len(steps)
    if strategy.get("steps_done") is not None:
        done = _int(strategy.get("steps_done"))
    else:
        done = sum(1 for s in steps if s.get("state") in ("done", "skipped"))
    return min(done, total), total


def current_stage(strategy: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stage ``current_stage`` names (by its ``index``, else its position); else the first
    stage in progress."""
    stages = stages_of(strategy)
    index = strategy.get("current_stage")
    if isinstance(index, int) and not isinstance(index, bool):
        for stage in stages:
            if stage.get("index") == index:
                return stage
        if 0 <= index < len(stages):
            return stages[index]
    return next((s for s in stages if s.get("state") == "in-progress"), None)


def stage_label(stage: Mapping[str, Any], stages: Sequence[Mapping[str, Any]]) -> str:
    """``2/4 upgrade-workers`` (1-based position of the stage among all)."""
    position = next((n for n, s in enumerate(stages, 1) if s is stage), None)
    if position is None:
        position = _int(stage.get("index")) + 1
    return f"{position}/{len(stages)} {stage.get('name') or '-'}"


def current_steps(stage: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The steps in progress in ``stage`` (parallel hosts may have several), else the first
    failed one, else none."""
    steps = steps_of(stage)
    running = [s for s in steps if s.get("state") == "in-progress"]
    if running:
        return running
    return [s for s in steps if s.get("state") == "failed"][:1]


def _step_hosts(step: Mapping[str, Any]) -> list[str]:
    return [str(h) for h in step.get("hosts") or []]


def _host_order(stages: Sequence[Mapping[str, Any]]) -> list[str]:
    seen: list[str] = []
    for stage in stages:
        for host in [
            *(stage.get("hosts") or []),
            *(h for s in steps_of(stage) for h in _step_hosts(s)),
        ]:
            if str(host) not in seen:
                seen.append(str(host))
    return seen


def host_status(strategy: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per host: its stage, its state there and the step it is at (or ended on).

    A host belongs to the first stage listing it in ``hosts`` (else the first with a step
    naming it); a step without hosts concerns every host of its stage."""
    stages = stages_of(strategy)
    rows = []
    for host in _host_order(stages):
        stage = next((s for s in stages if host in [str(h) for h in s.get("hosts") or []]), None)
        if stage is None:
            stage = next(s for s in stages if any(host in _step_hosts(x) for x in steps_of(s)))
        mine = [s for s in steps_of(stage) if not _step_hosts(s) or host in _step_hosts(s)]
        stage_state = str(stage.get("state") or "initial")
        running = [s for s in mine if s.get("state") == "in-progress"]
        failed = [s for s in mine if s.get("state") == "failed"]
        started = [s for s in mine if s.get("state") not in (None, "initial")]
        if running:
            state, step, reason = "in-progress", running[0], running[0].get("reason")
        elif failed:
            state, step, reason = "failed", failed[0], failed[0].get("reason")
        elif stage_state == "initial":
            state, step, reason = "waiting", None, None
        else:
            state = stage_state
            step = started[-1] if started else None
            reason = stage.get("reason") if stage_state in ("failed", "aborted") else None
        rows.append(
            {
                "host": host,
                "stage": stage_label(stage, stages),
                "state": state,
                "step": (step or {}).get("name"),
                "reason": reason or "",
            }
        )
    return rows


def _elapsed(strategy: Mapping[str, Any], now: datetime | None) -> str | None:
    start = _parse_time(strategy.get("started_at"))
    if start is None:
        return None
    end = _parse_time(strategy.get("finished_at")) or now or datetime.now(UTC)
    seconds = max(0, int((end - start).total_seconds()))
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def watch_view(
    strategy: Mapping[str, Any], *, note: str | None = None, now: datetime | None = None
) -> RenderableType:
    """The live view of a strategy: headline, progress bar of steps, current stage and steps,
    and a table of every host. ``note`` (a poll that failed) is shown under it; ``now`` is the
    time elapsed counts to while the strategy runs (default: the clock)."""
    stages = stages_of(strategy)
    done, total = progress_counts(strategy)
    percent = int(100 * done / total) if total else 0
    state = strategy.get("state")

    headline = Text.assemble(
        ("Strategy ", "bold"),
        (str(strategy.get("release") or "-"), "bold"),
        "  ",
        styled(state),
    )
    elapsed = _elapsed(strategy, now)
    if elapsed:
        headline.append(f"  ({elapsed})", style="dim")

    bar = Table.grid(padding=(0, 1))
    bar.add_column(width=40)
    bar.add_column(no_wrap=True)
    bar.add_row(
        ProgressBar(total=max(total, 1), completed=done, width=40),
        Text(f"{done}/{total} steps ({percent}%)"),
    )

    lines: list[RenderableType] = [headline, bar]
    stage = current_stage(strategy)
    if stage is not None:
        lines.append(
            Text.assemble(
                "Stage ",
                (stage_label(stage, stages), "bold"),
                " on ",
                hosts_text(stage.get("hosts")),
                ": ",
                styled(stage.get("state")),
            )
        )
        for step in current_steps(stage):
            line = Text.assemble("  Step ", (str(step.get("name") or "-"), "bold"))
            if _step_hosts(step):
                line.append(f" on {', '.join(_step_hosts(step))}")
            line.append(": ")
            line.append_text(styled(step.get("state")))
            if step.get("reason"):
                line.append(f" — {step.get('reason')}")
            lines.append(line)
    if strategy.get("reason"):
        lines.append(Text(f"Reason: {strategy.get('reason')}"))

    hosts = Table(header_style="bold", show_lines=False)
    for name in ("Host", "Stage", "State", "Step", "Reason"):
        hosts.add_column(name, no_wrap=name != "Reason", overflow="fold")
    for row in host_status(strategy):
        hosts.add_row(
            row["host"], row["stage"], styled(row["state"]), row["step"] or "-", row["reason"]
        )
    lines.append(hosts)
    if note:
        lines.append(Text(note, style="yellow"))
    return Group(*lines)


def plain_text(renderable: RenderableType, width: int = 120) -> str:
    """``renderable`` as plain text (no colour), as a terminal ``width`` wide would show it."""
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, highlight=False).print(renderable)
    return buffer.getvalue()


def summary_rows(strategy: Mapping[str, Any]) -> list[tuple[str, Any]]:
    done, total = progress_counts(strategy)
    stage = current_stage(strategy)
    return [
        ("uuid", strategy.get("uuid")),
        ("release", strategy.get("release")),
        ("state", styled(strategy.get("state"))),
        ("controller apply type", strategy.get("controller_apply_type")),
        ("worker apply type", strategy.get("worker_apply_type")),
        ("max parallel worker hosts", strategy.get("max_parallel_worker_hosts")),
        ("default instance action", strategy.get("default_instance_action")),
        ("alarm restrictions", strategy.get("alarm_restrictions")),
        ("stop on failure", "yes" if strategy.get("stop_on_failure") else "no"),
        ("progress", f"{done}/{total} steps"),
        ("current stage", stage_label(stage, stages_of(strategy)) if stage else "-"),
        ("reason", strategy.get("reason") or ""),
        ("created at", when(strategy.get("created_at"))),
        ("started at", when(strategy.get("started_at"))),
        ("finished at", when(strategy.get("finished_at"))),
    ]


def render_strategy(strategy: Mapping[str, Any], *, details: bool) -> None:
    """``strategy show``: the summary, the stages and, with ``details``, every step."""
    render.table(["Property", "Value"], summary_rows(strategy), no_wrap=["Property"])
    stages = stages_of(strategy)
    render.table(
        ["#", "Stage", "Hosts", "State", "Started", "Finished", "Reason"],
        [
            [
                n,
                s.get("name"),
                hosts_text(s.get("hosts")),
                styled(s.get("state")),
                when(s.get("started_at")),
                when(s.get("finished_at")),
                s.get("reason") or "",
            ]
            for n, s in enumerate(stages, 1)
        ],
        title="Stages",
        no_wrap=["#", "Stage", "State", "Started", "Finished"],
    )
    if not details:
        return
    render.table(
        ["Stage", "Step", "Hosts", "State", "Started", "Finished", "Reason"],
        [
            [
                f"{n} {stage.get('name') or '-'}",
                step.get("name"),
                hosts_text(step.get("hosts")),
                styled(step.get("state")),
                when(step.get("started_at")),
                when(step.get("finished_at")),
                step.get("reason") or "",
            ]
            for n, stage in enumerate(stages, 1)
            for step in steps_of(stage)
        ],
        title="Steps",
        no_wrap=["Stage", "Step", "State", "Started", "Finished"],
    )


def outcome(strategy: Mapping[str, Any]) -> str:
    """One line on how a finished strategy ended."""
    done, total = progress_counts(strategy)
    state = strategy.get("state")
    release = strategy.get("release") or "-"
    elapsed = _elapsed(strategy, None)
    took = f" in {elapsed}" if elapsed else ""
    if state == "applied":
        hosts = len(host_status(strategy))
        return f"Strategy applied: {release} on {hosts} hosts ({done}/{total} steps){took}."
    reason = strategy.get("reason") or ""
    failed_stage = next((s for s in stages_of(strategy) if s.get("state") == "failed"), None)
    where = ""
    if failed_stage is not None:
        where = f" in stage {stage_label(failed_stage, stages_of(strategy))}"
    tail = f": {reason}" if reason else ""
    return f"strategy {state}{where} after {done}/{total} steps{took}{tail}"


# Commands ---------------------------------------------------------------------------------------


def _get_strategy(client: ServiceClient) -> dict[str, Any]:
    try:
        body = client.get("/v1/strategy")
    except CliError as exc:
        if exc.exit_code is ExitCode.not_found:
            raise CliError(
                "404 there is no update strategy; create one with 'roost strategy create RELEASE'",
                ExitCode.not_found,
                problem=exc.problem,
            ) from None
        raise
    return body if isinstance(body, dict) else {}


def watch(ctx: typer.Context, client: ServiceClient) -> None:
    """Follow the strategy until it is applied, failed or aborted; exit 0 only when applied.

    On a terminal the view is redrawn in place; piped, only the last view is printed (with
    ``--format json``, the last document). Ctrl-C stops watching only: the strategy goes on in
    the service (``roost strategy abort`` stops it)."""
    strategy = _get_strategy(client)
    failing_since: float | None = None
    note: str | None = None
    as_json = context.wants_json(ctx)
    piped = not sys.stdout.isatty() and not os.environ.get("COLUMNS")
    console = Console(highlight=False, width=render.PIPE_WIDTH if piped else None)
    live = None
    if not as_json and console.is_terminal and not console.is_dumb_terminal:
        live = Live(console=console, auto_refresh=False, redirect_stdout=False)
    try:
        if live is not None:
            live.start()
        while True:
            if live is not None:
                live.update(watch_view(strategy, note=note), refresh=True)
            if strategy.get("state") in FINISHED:
                break
            time.sleep(POLL_S)
            try:
                strategy = _get_strategy(client)
                failing_since, note = None, None
            except CliError as exc:
                if exc.exit_code is not ExitCode.unreachable:
                    raise
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > UNREACHABLE_GIVE_UP_S:
                    raise
                note = f"{exc.message} (still trying)"
    except KeyboardInterrupt:
        _end_view(live, console, strategy, note, as_json)
        sys.stderr.write(
            f"roost: stopped watching; the strategy is still {strategy.get('state')} "
            "(Ctrl-C does not abort it: 'roost strategy abort' does)\n"
        )
        raise typer.Exit(130) from None
    except BaseException:
        _end_view(live, console, strategy, note, as_json)
        raise
    _end_view(live, console, strategy, note, as_json)
    if as_json:
        render.print_json(strategy)
    if strategy.get("state") != "applied":
        raise CliError(outcome(strategy))
    if not as_json:
        render.message(outcome(strategy))


def _end_view(
    live: Live | None,
    console: Console,
    strategy: Mapping[str, Any],
    note: str | None,
    as_json: bool,
) -> None:
    """Leave the last view on screen: stop the live display, or print it once when piped."""
    if live is not None:
        live.stop()
    elif not as_json:
        console.print(watch_view(strategy, note=note))


@app.command("create")
def create(
    ctx: typer.Context,
    release: Annotated[str, typer.Argument(metavar="RELEASE", help="The release to roll out.")],
    controller_apply_type: Annotated[
        ControllerApply,
        typer.Option("--controller-apply-type", help="Controllers one at a time, or not at all."),
    ] = ControllerApply.serial,
    worker_apply_type: Annotated[
        WorkerApply,
        typer.Option("--worker-apply-type", help="Workers one at a time, a few at once, or none."),
    ] = WorkerApply.serial,
    max_parallel_worker_hosts: Annotated[
        int,
        typer.Option(
            "--max-parallel-worker-hosts",
            min=2,
            max=100,
            metavar="N",
            help="Workers updated at once with --worker-apply-type parallel.",
        ),
    ] = 2,
    default_instance_action: Annotated[
        InstanceAction,
        typer.Option(
            "--default-instance-action",
            help="migrate: move workloads and service activity away before a lock; stop-start: "
            "the lock stops them.",
        ),
    ] = InstanceAction.migrate,
    alarm_restrictions: Annotated[
        AlarmRestrictions,
        typer.Option(
            "--alarm-restrictions",
            help="strict: any alarm blocks a stage; relaxed: only management-affecting ones.",
        ),
    ] = AlarmRestrictions.strict,
    stop_on_failure: Annotated[
        bool,
        typer.Option(
            "--stop-on-failure/--no-stop-on-failure",
            help="Stop at the first failed stage (default), or go on with the next.",
        ),
    ] = True,
) -> None:
    """Plan an update strategy for a release: the stages and steps it will run."""
    body = {
        "release": release.strip(),
        "controller_apply_type": controller_apply_type.value,
        "worker_apply_type": worker_apply_type.value,
        "max_parallel_worker_hosts": max_parallel_worker_hosts,
        "default_instance_action": default_instance_action.value,
        "alarm_restrictions": alarm_restrictions.value,
        "stop_on_failure": stop_on_failure,
    }
    strategy = context.client(ctx, "software").post("/v1/strategy", body) or {}
    if context.wants_json(ctx):
        render.print_json(strategy)
        return
    render_strategy(strategy, details=False)
    render.message(
        f"Strategy for {strategy.get('release') or release} created "
        f"({strategy.get('state')}); apply it with 'roost strategy apply --watch'."
    )


@app.command("show")
def show(
    ctx: typer.Context,
    details: Annotated[bool, typer.Option("--details", help="Every step of every stage.")] = False,
    watch_it: Annotated[
        bool, typer.Option("--watch", help="Follow it live until it ends (Ctrl-C stops watching).")
    ] = False,
) -> None:
    """Show the update strategy: settings, progress, stages (with --details, their steps)."""
    client = context.client(ctx, "software")
    if watch_it:
        watch(ctx, client)
        return
    strategy = _get_strategy(client)
    render.print_json(strategy) if context.wants_json(ctx) else render_strategy(
        strategy, details=details
    )


@app.command("apply")
def apply(
    ctx: typer.Context,
    watch_it: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Follow it live until it ends; exit 0 only when applied (Ctrl-C stops watching, "
            "not the strategy).",
        ),
    ] = False,
) -> None:
    """Apply the update strategy, or resume an aborted or failed one."""
    client = context.client(ctx, "software")
    body = client.post("/v1/strategy/apply", None)
    if watch_it:
        watch(ctx, client)
        return
    if context.wants_json(ctx):
        render.print_json(body or {})
        return
    release = (body or {}).get("release") if isinstance(body, dict) else None
    render.message(
        f"Strategy{' for ' + release if release else ''} is applying; follow it with "
        "'roost strategy show --watch'."
    )


@app.command("abort")
def abort(ctx: typer.Context) -> None:
    """Abort the strategy: the stage in flight finishes (hosts unlocked), then it stops."""
    body = context.client(ctx, "software").post("/v1/strategy/abort", None)
    if context.wants_json(ctx):
        render.print_json(body or {})
    else:
        render.message(
            "Strategy aborting: the stage in flight finishes, then it stops "
            "('roost strategy show --watch' follows it)."
        )


@app.command("delete")
def delete(ctx: typer.Context) -> None:
    """Delete the strategy (refused while it is applying or aborting)."""
    context.client(ctx, "software").delete("/v1/strategy")
    if context.wants_json(ctx):
        render.print_json({"deleted": "strategy"})
    else:
        render.message("Strategy deleted.")


for _command in app.registered_commands:
    if _command.callback is not None:
        _command.callback = naming_fields(_command.callback)


def register(cli: typer.Typer) -> None:
    """Add ``roost strategy ...`` to the ``roost`` app."""
    cli.add_typer(app, name="strategy")
