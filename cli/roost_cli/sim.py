"""``roost sim ...``: the simulated fleet (``roost_sim.fleet``), run as its own process.

``roost sim add-host`` runs ``python -m roost_sim.fleet [--state-dir DIR] add-host ...`` with
this interpreter and passes its output and exit code through, so the CLI does not depend on the
simulator's internals (the simulator is a development tool, not always installed).
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from roost_cli.errors import CliError, ExitCode

FLEET_MODULE = "roost_sim.fleet"

sim_app = typer.Typer(
    name="sim",
    help="The simulated fleet (development): add simulated hosts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fleet_module() -> object:
    """The simulator's fleet module, if it is installed and has ``add-host``."""
    try:
        spec = importlib.util.find_spec(FLEET_MODULE)
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        raise CliError(
            f"the simulator is not installed here ({FLEET_MODULE} not found in {sys.executable})"
        )
    module = importlib.import_module(FLEET_MODULE)
    if not callable(getattr(module, "add_host", None)):
        raise CliError(f"this {FLEET_MODULE} has no add-host command")
    return module


@sim_app.command("add-host")
def add_host(
    hostname: Annotated[
        str | None, typer.Option(help="Default: <profile>-<n>, the next free n.")
    ] = None,
    profile: Annotated[
        str, typer.Option(help="Hardware profile: controller, worker or storage.")
    ] = "worker",
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            help="The simulator's state directory (default: ROOST_STATE_DIR, else ./state).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Register one more simulated host; a running 'make run' starts its agent within a second,
    and the config service then discovers it (provision it with 'roost host-update')."""
    module = _fleet_module()
    known = getattr(module, "profiles", None)
    if callable(known):
        names = list(known())
        if names and profile not in names:
            raise CliError(
                f"unknown profile {profile!r}; choose from {', '.join(names)}", ExitCode.usage
            )
    argv = [sys.executable, "-m", FLEET_MODULE]
    if state_dir is not None:
        argv += ["--state-dir", str(state_dir)]
    argv += ["add-host", "--profile", profile]
    if hostname is not None:
        argv += ["--hostname", hostname]
    try:
        rc = subprocess.run(argv, check=False).returncode
    except OSError as e:
        raise CliError(f"cannot run {FLEET_MODULE}: {e.strerror or e}") from None
    raise typer.Exit(rc)


def register(cli: typer.Typer) -> None:
    """Add ``roost sim ...`` to the ``roost`` app."""
    cli.add_typer(sim_app, name="sim")
