"""``roost token ...``: the operator's tool for the API tokens file (``ROOST_AUTH_TOKENS_FILE``).

The file lists token digests (never tokens) with a name and a role; every service reads it again
when it changes, so what these commands do counts at once, without a restart. A new token is
printed once and never stored in plain (except, for the CLI's own ``admin``/``reader`` tokens,
in the credentials file it reads, which ``rotate`` keeps up to date). Writes are atomic (a
temporary file renamed over the old one, mode 0600).

The commands work on the file directly (no service involved): they run where the file is, as
the user who owns it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from roost_cli import context, render
from roost_cli.config import credentials_path
from roost_cli.errors import CliError, ExitCode
from roost_shared.auth import (
    Role,
    TokenRecord,
    digest,
    new_token,
    read_tokens_file,
    save_tokens_file,
)

token_app = typer.Typer(
    name="token",
    help="API tokens: list, create, rotate (with a grace period) and revoke, in the tokens file "
    "every service watches.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
#: The credentials file's keys for the all-in-one tokens of these names.
_CREDENTIAL_KEYS = {"admin": "admin_token", "reader": "reader_token"}


class RoleChoice(StrEnum):
    admin = "admin"
    reader = "reader"
    peer = "peer"


def default_tokens_file() -> Path:
    """``ROOST_AUTH_TOKENS_FILE``, else the all-in-one's ``$ROOST_STATE_DIR/auth/tokens.json``
    (``state/auth/tokens.json`` from the checkout, where ``make run`` keeps it)."""
    explicit = os.environ.get("ROOST_AUTH_TOKENS_FILE")
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("ROOST_STATE_DIR") or "state") / "auth" / "tokens.json"


TokensFile = Annotated[
    Path | None,
    typer.Option(
        "--tokens-file",
        help="The tokens file (default: ROOST_AUTH_TOKENS_FILE, else the all-in-one's "
        "state/auth/tokens.json).",
        show_default=False,
    ),
]


def parse_duration(text: str) -> timedelta:
    """``90``, ``30s``, ``10m``, ``2h``, ``1d`` as a duration (CliError otherwise)."""
    m = _DURATION.match(text)
    if m is None:
        raise CliError(
            f"--grace takes a duration such as 30s, 10m, 2h or 1d, not {text!r}", ExitCode.usage
        )
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def _load(path: Path, *, must_exist: bool = True) -> list[TokenRecord]:
    if not path.exists():
        if must_exist:
            raise CliError(f"no tokens file at {path} (give --tokens-file)", ExitCode.not_found)
        return []
    try:
        return read_tokens_file(path)
    except OSError as e:
        raise CliError(f"cannot read tokens file {path}: {e.strerror or e}") from None
    except ValueError as e:
        errors = e.errors() if isinstance(e, ValidationError) else []
        first = errors[0]["msg"] if errors else (str(e).splitlines() or ["invalid"])[0]
        raise CliError(f"tokens file {path} is not a list of token records: {first}") from None


def _save(path: Path, records: list[TokenRecord]) -> None:
    now = datetime.now(UTC)
    kept = [r for r in records if not r.expired(now)]  # a grace that is over: nothing to keep
    try:
        save_tokens_file(path, kept)
    except OSError as e:
        raise CliError(f"cannot write tokens file {path}: {e.strerror or e}") from None


def _current(records: list[TokenRecord], name: str) -> list[TokenRecord]:
    """The records of ``name`` that are not on their way out (no ``not_after``)."""
    return [r for r in records if r.name == name and r.not_after is None]


def _state(record: TokenRecord, now: datetime) -> str:
    if record.not_after is None:
        return "active"
    if record.expired(now):
        return "expired"
    return f"until {record.not_after:%Y-%m-%d %H:%M:%S}Z"


def _row(record: TokenRecord, now: datetime) -> dict[str, Any]:
    return {
        "name": record.name,
        "role": record.role.value,
        "state": _state(record, now),
        "peer": record.peer or record.role is Role.peer,
        "created_at": record.created_at.isoformat() if record.created_at else None,
        "not_after": record.not_after.isoformat() if record.not_after else None,
        "sha256": record.sha256[:12],
    }


def _update_credentials(name: str, old_digests: set[str], token: str) -> Path | None:
    """Put the new token in the CLI's credentials file when that file held the rotated one;
    the file's path if it changed."""
    key = _CREDENTIAL_KEYS.get(name)
    path = credentials_path()
    if key is None or not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # not ours to repair: the new token was printed
    held = data.get(key) if isinstance(data, dict) else None
    if not isinstance(held, str) or digest(held.strip()) not in old_digests:
        return None
    data[key] = token
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CliError(
            f"the token was rotated but {path} could not be updated ({e.strerror or e}); "
            f"new token: {token}"
        ) from None
    return path


def _print_new(ctx: typer.Context, record: TokenRecord, token: str, note: str) -> None:
    if context.wants_json(ctx):
        render.print_json({**_row(record, datetime.now(UTC)), "token": token})
        return
    render.message(note)
    render.message(f"token: {token}")
    render.message("It is shown only this once: the tokens file keeps only its SHA-256.")


@token_app.command("list")
def list_tokens(ctx: typer.Context, tokens_file: TokensFile = None) -> None:
    """The tokens in the file: name, role, state (active, until its grace ends, expired),
    whether it is a service's peer token, and the start of its digest (never the token)."""
    path = tokens_file or default_tokens_file()
    now = datetime.now(UTC)
    rows = [_row(r, now) for r in _load(path)]
    if context.wants_json(ctx):
        render.print_json({"tokens": rows})
        return
    render.table(
        ["Name", "Role", "State", "Peer", "Created", "SHA-256"],
        [
            (
                r["name"],
                r["role"],
                r["state"],
                "yes" if r["peer"] else "",
                r["created_at"] or "",
                r["sha256"] + "…",
            )
            for r in rows
        ],
        no_wrap=["Name", "State", "Created", "SHA-256"],
    )


@token_app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Who uses it (shown in the audit log).")],
    role: Annotated[
        RoleChoice,
        typer.Option(
            "--role",
            help="reader: read only; admin: all; peer: a service calling others (reads, host "
            "lock/unlock, swacts; never rate-limited).",
        ),
    ],
    peer: Annotated[
        bool,
        typer.Option(
            "--peer", help="A service's token for calling other services (no rate limit)."
        ),
    ] = False,
    tokens_file: TokensFile = None,
) -> None:
    """Make a new token, print it once, and list its digest in the file (valid at once)."""
    if not name.strip() or _CONTROL.search(name):
        raise CliError("NAME must be a non-empty printable name", ExitCode.usage)
    path = tokens_file or default_tokens_file()
    records = _load(path, must_exist=False)
    if _current(records, name):
        raise CliError(
            f"a token named {name!r} exists; rotate it ('roost token rotate {name}') or revoke "
            "it first"
        )
    token = new_token()
    record = TokenRecord(
        name=name,
        role=Role(role.value),
        sha256=digest(token),
        created_at=datetime.now(UTC),
        peer=peer,
    )
    _save(path, [*records, record])
    _print_new(ctx, record, token, f"Token {name!r} ({role.value}) created in {path}.")


@token_app.command("rotate")
def rotate(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The token to replace.")],
    grace: Annotated[
        str,
        typer.Option(
            "--grace",
            help="How long the old token keeps working (30s, 10m, 2h, 1d); 0: refused at once.",
        ),
    ] = "0",
    tokens_file: TokensFile = None,
) -> None:
    """Replace a token with a new one (same name, role and peer flag), printed once; the old one
    keeps working for --grace. The CLI's credentials file is updated when it held the old one."""
    period = parse_duration(grace)
    path = tokens_file or default_tokens_file()
    records = _load(path)
    old = _current(records, name)
    if not old:
        raise CliError(f"no active token named {name!r} in {path}", ExitCode.not_found)
    now = datetime.now(UTC)
    token = new_token()
    record = TokenRecord(
        name=name,
        role=old[0].role,
        sha256=digest(token),
        created_at=now,
        peer=old[0].peer,
    )
    ending = now + period
    kept: list[TokenRecord] = []
    for r in records:
        if r in old:
            if period <= timedelta(0):
                continue  # refused at once
            r = r.model_copy(update={"not_after": ending})
        kept.append(r)
    _save(path, [*kept, record])
    changed = _update_credentials(name, {r.sha256 for r in old}, token)
    until = f"until {ending:%Y-%m-%d %H:%M:%S}Z" if period > timedelta(0) else "no longer"
    note = f"Token {name!r} rotated in {path}; the old one works {until}."
    if changed is not None:
        note += f" {changed} now holds the new one."
    _print_new(ctx, record, token, note)


@token_app.command("revoke")
def revoke(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The token to revoke (every token of that name).")],
    tokens_file: TokensFile = None,
) -> None:
    """Remove a token from the file: every service refuses it at once (401)."""
    path = tokens_file or default_tokens_file()
    records = _load(path)
    gone = [r for r in records if r.name == name]
    if not gone:
        raise CliError(f"no token named {name!r} in {path}", ExitCode.not_found)
    _save(path, [r for r in records if r.name != name])
    if context.wants_json(ctx):
        render.print_json({"revoked": name, "tokens": len(gone)})
        return
    note = f"Token {name!r} revoked ({len(gone)} removed from {path})."
    if name in _CREDENTIAL_KEYS:
        note += (
            f" Note: 'make run' lists {credentials_path()}'s {name} token again at its next start."
        )
    render.message(note)


def register(cli: typer.Typer) -> None:
    """Add ``roost token ...`` to the ``roost`` app."""
    cli.add_typer(token_app, name="token")
