"""Software releases and their deployment over the software service (StarlingX ``software``).

``register(cli)`` adds the ``roost software`` group: ``keygen`` and ``pack`` (local: build a
signed release archive), ``upload``, ``list``, ``show``, ``delete`` (releases), and
``deploy-precheck``, ``deploy-start``, ``deploy-host``, ``deploy-rollback``, ``deploy-show``,
``deploy-delete`` and ``hosts`` (the deployment, host by host). Rolling a release over the
fleet with a strategy is ``roost strategy`` (``strategy.py``).

``keygen`` and ``pack`` use ``roost_shared.releases`` (the archive format), imported only when
they run: the CLI does not depend on roost-shared, so without it they say what to install.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer
import yaml
from rich.text import Text

from roost_cli import context, render
from roost_cli.client import path_part
from roost_cli.config import page_size
from roost_cli.errors import CliError, ExitCode

#: Largest page asked for when listing every release.
LIMIT_MAX = 1000
#: Where ``keygen`` writes the key pair (inside its DIR).
PRIVATE_KEY_FILE = "release-signing.pem"
PUBLIC_KEY_FILE = "release-signing.pub"

app = typer.Typer(
    name="software",
    help="Software releases: build, upload, precheck and deploy them host by host "
    "(rolling updates over the fleet: 'roost strategy').",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ReleaseId = Annotated[str, typer.Argument(metavar="RELEASE", help="A release id, e.g. roost-1.1.0")]
HostName = Annotated[str, typer.Argument(metavar="HOSTNAME", help="A host's hostname.")]


# Shared with strategy.py ------------------------------------------------------------------------


def refused(exc: CliError) -> CliError:
    """A 422 whose problem lists ``errors`` as its first bad field and that field's message;
    a 409 that lists them (a deployment refused by its prechecks) with the first one."""
    problem = exc.problem if isinstance(exc.problem, dict) else {}
    errors = [e for e in problem.get("errors") or [] if isinstance(e, dict)]
    if not exc.message.startswith(("422 ", "409 ")) or not errors:
        return exc
    field, text = str(errors[0].get("field") or ""), str(errors[0].get("message") or "")
    if not field or not text:
        return exc
    text = text.removeprefix(f"{field}: ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if exc.message.startswith("409 "):  # a conflict: its detail, then the first reason
        if text in exc.message and not more:
            return exc
        return CliError(f"{exc.message} — {field}: {text}{more}", exc.exit_code, problem=problem)
    return CliError(f"422 {field}: {text}{more}", exc.exit_code, problem=problem)


def naming_fields(command: Callable[..., None]) -> Callable[..., None]:
    """Run ``command``; a 422 names its first bad field (see ``refused``)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except CliError as exc:
            raise refused(exc) from None

    return run


def when(value: Any) -> str:
    """An ISO time as ``YYYY-MM-DD HH:MM:SS`` (UTC as the service gives it), ``-`` if unset."""
    if not value:
        return "-"
    return str(value)[:19].replace("T", " ")


def yes_no(value: Any) -> str:
    return "yes" if value else "no"


def hosts_text(hosts: Any) -> str:
    return ", ".join(str(h) for h in hosts or []) or "-"


STATE_STYLES = {
    "available": "",
    "deploying": "yellow",
    "deployed": "green",
    "removing": "yellow",
    "unavailable": "dim",
    "pending": "",
    "installing": "yellow",
    "installed": "green",
    "failed": "bold red",
}


def state_text(value: Any, styles: Mapping[str, str] = STATE_STYLES) -> Text:
    text = "-" if value in (None, "") else str(value)
    return Text(text, style=styles.get(text, ""))


# Local: keys and archives -----------------------------------------------------------------------


def _releases_module(command: str) -> ModuleType:
    """``roost_shared.releases``, or one line saying what to install."""
    try:
        from roost_shared import releases
    except ImportError as exc:
        raise CliError(
            f"'roost software {command}' needs the roost-shared package ({exc}): run it from the "
            "Roost workspace (uv sync --all-packages) or pip install ./shared cryptography",
        ) from None
    return releases


def _missing_crypto(exc: ImportError) -> CliError:
    return CliError(
        f"signing needs the cryptography package ({exc}): pip install cryptography",
    )


@app.command("keygen")
def keygen(
    ctx: typer.Context,
    directory: Annotated[
        Path, typer.Argument(metavar="DIR", help="Where to write the key pair (created).")
    ],
) -> None:
    """Make a release-signing key pair in DIR and print the public key."""
    releases = _releases_module("keygen")
    private, public = directory / PRIVATE_KEY_FILE, directory / PUBLIC_KEY_FILE
    if private.exists():
        raise CliError(f"{private} exists; not overwriting a signing key", ExitCode.usage)
    try:
        pem, key = releases.generate_key()
    except ImportError as exc:
        raise _missing_crypto(exc) from None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        private.touch(mode=0o600, exist_ok=False)
        private.write_text(pem)
        public.write_text(key + "\n")
    except OSError as exc:
        raise CliError(f"cannot write the key pair in {directory}: {exc.strerror or exc}") from None
    if context.wants_json(ctx):
        render.print_json(
            {"private_key_file": str(private), "public_key_file": str(public), "public_key": key}
        )
        return
    render.message(f"Private key: {private} (keep it secret; pack --key {private})")
    render.message(f"Public key:  {key}")
    render.message(
        "Give the public key to the software service: ROOST_RELEASE_PUBLIC_KEYS='[\"…\"]' or a "
        "line of <state_dir>/release-keys.pub."
    )


@app.command("pack")
def pack(
    ctx: typer.Context,
    source: Annotated[
        Path,
        typer.Argument(metavar="SOURCE", help="A directory with release.yaml and the payload."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The archive to write.")],
    key: Annotated[
        Path | None,
        typer.Option("--key", metavar="PEM", help="Ed25519 private key; unsigned without."),
    ] = None,
) -> None:
    """Build a release archive (.tar.gz) from a directory, signed with --key."""
    releases = _releases_module("pack")
    if not source.is_dir():
        raise CliError(f"{source} is not a directory", ExitCode.usage)
    try:
        pem = key.read_text() if key is not None else None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(
            f"cannot read the key {key}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    try:
        data = releases.pack(source, pem)
        release = releases.read_archive(data)
    except ImportError as exc:
        raise _missing_crypto(exc) from None
    except releases.ReleaseError as exc:
        raise CliError(f"{source}: {exc.field}: {exc.reason}", ExitCode.usage) from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CliError(f"{source}: release.yaml is not YAML: {first}", ExitCode.usage) from None
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot pack {source}: {exc}", ExitCode.usage) from None
    try:
        output.write_bytes(data)
    except OSError as exc:
        raise CliError(f"cannot write {output}: {exc.strerror or exc}") from None
    meta = release.metadata
    summary = {
        "id": meta.id,
        "version": meta.version,
        "signed": release.signature is not None,
        "files": len(meta.files),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "output": str(output),
    }
    if context.wants_json(ctx):
        render.print_json(summary)
        return
    signed = "signed" if summary["signed"] else "unsigned"
    render.message(
        f"Packed {meta.id} (version {meta.version}, {signed}, {_files(summary['files'])}) into "
        f"{output} ({len(data)} bytes)."
    )


def _files(count: int) -> str:
    return "1 file" if count == 1 else f"{count} files"


# Releases ---------------------------------------------------------------------------------------


def release_rows(items: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    return [
        [
            r.get("id"),
            r.get("version"),
            state_text(r.get("state")),
            yes_no(r.get("reboot_required")),
            hosts_text(r.get("applies_to")),
            r.get("summary") or "",
        ]
        for r in items
    ]


def render_releases(items: Sequence[Mapping[str, Any]]) -> None:
    columns = ["ID", "Version", "State", "Reboot", "Applies To", "Summary"]
    render.table(columns, release_rows(items), no_wrap=["ID", "Version", "State", "Reboot"])


def render_release(item: Mapping[str, Any]) -> None:
    rows = []
    for key, value in item.items():
        if key == "state":
            value = state_text(value)
        elif key in ("requires", "applies_to") and isinstance(value, list):
            value = hosts_text(value)
        elif key == "reboot_required":
            value = yes_no(value)
        rows.append((key, value))
    render.table(["Property", "Value"], rows, no_wrap=["Property"])


def _release_path(release: str, suffix: str = "") -> str:
    release = release.strip()
    if not release:
        raise CliError("the release id must not be empty", ExitCode.usage)
    return f"/v1/releases/{path_part(release)}{suffix}"


def _read_archive_file(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except IsADirectoryError:
        raise CliError(
            f"{file} is a directory; build an archive with "
            f"'roost software pack {file} -o R.tar.gz'",
            ExitCode.usage,
        ) from None
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror or exc}", ExitCode.usage) from None


def upload(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A release archive (.tar.gz).")],
) -> None:
    """Upload a release archive; the service checks its signature and every file's digest."""
    data = _read_archive_file(file)
    _, body = context.client(ctx, "software").send(
        "POST", "/v1/releases", content=data, headers={"Content-Type": "application/gzip"}
    )
    body = body or {}
    if context.wants_json(ctx):
        render.print_json(body)
        return
    signer = body.get("signed_by")
    signed = f"signed by {signer}" if signer else "unsigned"
    render.message(
        f"Release {body.get('id')} (version {body.get('version')}) uploaded, {signed}: "
        f"{body.get('state')}."
    )


def release_list(
    ctx: typer.Context,
    limit: Annotated[int | None, context.limit_option(LIMIT_MAX)] = None,
) -> None:
    """List releases: version, state, whether hosts reboot, which personalities it is for."""
    body = context.client(ctx, "software").collect(
        "/v1/releases", "releases", [], limit=limit, page_size=min(page_size(), LIMIT_MAX)
    )
    if context.wants_json(ctx):
        render.print_json(body)
    else:
        render_releases(body.get("releases", []))


def release_show(ctx: typer.Context, release: ReleaseId) -> None:
    """Show every field of one release."""
    body = context.client(ctx, "software").get(_release_path(release)) or {}
    render.print_json(body) if context.wants_json(ctx) else render_release(body)


def release_delete(ctx: typer.Context, release: ReleaseId) -> None:
    """Delete a release (refused while it is deploying or deployed, or another requires it)."""
    context.client(ctx, "software").delete(_release_path(release))
    if context.wants_json(ctx):
        render.print_json({"deleted": release})
    else:
        render.message(f"Release {release} deleted.")


# Deployment -------------------------------------------------------------------------------------


def check_rows(checks: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    return [
        [
            Text("✓", style="green") if c.get("ok") else Text("✗", style="bold red"),
            c.get("check"),
            c.get("host") or "-",
            c.get("reason") or "",
        ]
        for c in checks
    ]


def deploy_precheck(
    ctx: typer.Context,
    release: ReleaseId,
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="Only these hosts' checks (repeat or comma-separate)."),
    ] = None,
) -> None:
    """Check a release can be deployed now: ✓/✗ per check and host (exit 1 if any failed)."""
    request: dict[str, Any] = {"release": release.strip()}
    hosts = [h.strip() for value in host or [] for h in value.split(",") if h.strip()]
    if hosts:
        request["hosts"] = hosts
    body = context.client(ctx, "software").post("/v1/deploy/precheck", request) or {}
    checks = [c for c in body.get("checks") or [] if isinstance(c, dict)]
    failed = [c for c in checks if not c.get("ok")]
    if context.wants_json(ctx):
        render.print_json(body)
    else:
        render.table(
            ["", "Check", "Host", "Reason"],
            check_rows(checks),
            no_wrap=["", "Check", "Host"],
            title=f"Precheck of {body.get('release') or release}",
        )
    if failed or body.get("ok") is False:
        raise CliError(
            f"precheck of {release} failed: {len(failed)} of {len(checks)} checks failed"
        )
    if not context.wants_json(ctx):
        render.message(f"Precheck of {release} passed ({len(checks)} checks).")


def deploy_host_rows(hosts: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    return [
        [
            h.get("hostname"),
            h.get("personality") or "-",
            state_text(h.get("state")),
            h.get("agent_state") or "-",
            h.get("running_version") or "-",
            yes_no(h.get("pending_reboot")),
            when(h.get("updated_at")),
            h.get("reason") or "",
        ]
        for h in hosts
    ]


def render_deployment(body: Mapping[str, Any]) -> None:
    rows = [
        ("release", body.get("release")),
        ("version", body.get("version")),
        ("state", state_text(body.get("state"))),
        ("started at", when(body.get("started_at"))),
        ("updated at", when(body.get("updated_at"))),
    ]
    if body.get("finished_at"):
        rows.append(("finished at", when(body.get("finished_at"))))
    render.table(["Property", "Value"], rows, no_wrap=["Property"])
    render.table(
        ["Host", "Personality", "State", "Agent", "Running", "Reboot", "Updated At", "Reason"],
        deploy_host_rows([h for h in body.get("hosts") or [] if isinstance(h, dict)]),
        title="Hosts",
        no_wrap=["Host", "Personality", "State", "Agent", "Running", "Reboot", "Updated At"],
    )


def deploy_start(ctx: typer.Context, release: ReleaseId) -> None:
    """Start deploying a release (then 'deploy-host' on locked hosts, or 'roost strategy')."""
    body = context.client(ctx, "software").post("/v1/deploy", {"release": release.strip()}) or {}
    if context.wants_json(ctx):
        render.print_json(body)
        return
    hosts = [h for h in body.get("hosts") or [] if isinstance(h, dict)]
    render.message(
        f"Deployment of {body.get('release') or release} started ({body.get('state')}, "
        f"{len(hosts)} hosts)."
    )


def deploy_host(ctx: typer.Context, hostname: HostName) -> None:
    """Install the release being deployed on one host (lock it first)."""
    path = f"/v1/deploy/hosts/{path_part(hostname.strip())}"
    body = context.client(ctx, "software").post(path, None) or {}
    if context.wants_json(ctx):
        render.print_json(body)
    else:
        render.message(
            f"Install on {hostname} requested ({body.get('state') or 'accepted'}); follow it "
            "with 'roost software deploy-show'."
        )


def deploy_rollback(ctx: typer.Context, hostname: HostName) -> None:
    """Run the release's rollback hook on one host."""
    path = f"/v1/deploy/hosts/{path_part(hostname.strip())}/rollback"
    body = context.client(ctx, "software").post(path, None) or {}
    if context.wants_json(ctx):
        render.print_json(body)
    else:
        render.message(
            f"Rollback on {hostname} requested ({body.get('state') or 'accepted'}); follow it "
            "with 'roost software deploy-show'."
        )


def deploy_show(ctx: typer.Context) -> None:
    """Show the deployment: release, state and every host's deploy state."""
    body = context.client(ctx, "software").get("/v1/deploy") or {}
    render.print_json(body) if context.wants_json(ctx) else render_deployment(body)


def deploy_delete(ctx: typer.Context) -> None:
    """Forget a finished (or never started) deployment."""
    context.client(ctx, "software").delete("/v1/deploy")
    if context.wants_json(ctx):
        render.print_json({"deleted": "deployment"})
    else:
        render.message("Deployment deleted.")


def _host_items(body: Any) -> list[dict[str, Any]]:
    items = body.get("hosts") if isinstance(body, dict) else body
    return [h for h in items or [] if isinstance(h, dict)]


def software_hosts(ctx: typer.Context) -> None:
    """List every host's running release and version, as its agent reported."""
    body = context.client(ctx, "software").get("/v1/hosts")
    if context.wants_json(ctx):
        render.print_json(body)
        return
    rows = [
        [
            h.get("hostname") or f"({h.get('mgmt_mac') or '?'})",
            h.get("running_release") or "-",
            h.get("running_version") or "-",
            h.get("agent_state") or "-",
            yes_no(h.get("pending_reboot")),
            "-" if h.get("disk_free_mb") is None else h.get("disk_free_mb"),
            when(h.get("time")),
            h.get("error") or "",
        ]
        for h in _host_items(body)
    ]
    columns = [
        "Host",
        "Release",
        "Version",
        "Agent",
        "Pending Reboot",
        "Disk Free (MB)",
        "Reported At",
        "Error",
    ]
    render.table(columns, rows, no_wrap=columns[:-1])


COMMANDS: dict[str, Callable[..., None]] = {
    "upload": upload,
    "list": release_list,
    "show": release_show,
    "delete": release_delete,
    "deploy-precheck": deploy_precheck,
    "deploy-start": deploy_start,
    "deploy-host": deploy_host,
    "deploy-rollback": deploy_rollback,
    "deploy-show": deploy_show,
    "deploy-delete": deploy_delete,
    "hosts": software_hosts,
}

for _name, _command in COMMANDS.items():
    app.command(_name)(naming_fields(_command))


def register(cli: typer.Typer) -> None:
    """Add ``roost software ...`` to the ``roost`` app."""
    cli.add_typer(app, name="software")
