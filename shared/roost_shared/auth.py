"""Token authentication with three roles: ``reader`` (GET), ``admin`` (everything) and
``peer`` (a service calling another: every read, plus only the few mutating routes a service
needs of its peers, each marked with :func:`require_admin_or_peer`: the software strategy's
host lock/unlock/force-lock, service-group swact and member lock/unlock).

Each service that calls others has its own peer token, never the admin token: ``make run`` and
the tests write one per service to the tokens file (role ``peer``); a site configured with
environment tokens (docker-compose, Kubernetes) derives them (:func:`derive_peer_token`, an
HMAC of ``ROOST_PEER_SECRET``, by default of the admin token, and the service's name), so every
service accepts every peer's token and no step is needed. Knowing the admin token gives the
peer tokens; a peer token gives nothing more than its role.

Tokens arrive as ``Authorization: Bearer <t>`` or as OpenStack's ``X-Auth-Token: <t>`` (StarlingX
clients send only the latter). Tokens are compared by SHA-256 digest; the tokens file written by
the all-in-one bootstrap (and by ``roost token``) holds only digests, so a leaked state directory
leaks no credential.

The tokens file is watched (:class:`TokenFile`): every lookup stats it and reads it again when
it changed, so a token created, rotated or revoked there counts at once in every running
service, without a restart. A file that cannot be parsed (being rewritten in place) keeps the
previous tokens. A record may carry ``not_after``: after that moment the token is refused (the
grace period of a rotation). Several tokens may share a role (and a name, during a rotation).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from fastapi import Depends, HTTPException, Request
from pydantic import BaseModel, SecretStr, TypeAdapter

from roost_shared.settings import RoostSettings

log = logging.getLogger(__name__)


class Role(StrEnum):
    reader = "reader"
    admin = "admin"
    peer = "peer"


#: Services that call other services' APIs (each has a peer token of its own).
PEER_SERVICES = ("config", "service", "software")


def derive_peer_token(secret: str, service: str) -> str:
    """The peer token of ``service`` derived from the site's peer secret (one-way)."""
    mac = hmac.new(secret.encode(), b"roost peer token\0" + service.encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def _peer_secret(settings: RoostSettings) -> str | None:
    for secret in (settings.peer_secret, settings.admin_token):
        if secret is not None and secret.get_secret_value():
            return secret.get_secret_value()
    return None


def own_peer_token(settings: RoostSettings, explicit: SecretStr | None = None) -> SecretStr | None:
    """The token this service sends to its peers: ``explicit`` when configured, else its
    derived peer token (environment-configured sites), else None."""
    if explicit is not None and explicit.get_secret_value():
        return explicit
    secret = _peer_secret(settings)
    return SecretStr(derive_peer_token(secret, settings.service)) if secret else None


class TokenRecord(BaseModel):
    """One entry of the tokens file: a name for audit, the role, and the token's SHA-256.

    ``not_after``: the token is refused from then on (set on the old token by a rotation with a
    grace period). ``peer``: a service's own token for calling other services (never
    rate-limited: see :mod:`roost_shared.ratelimit`)."""

    name: str
    role: Role
    sha256: str
    created_at: datetime | None = None
    not_after: datetime | None = None
    peer: bool = False

    def expired(self, now: datetime | None = None) -> bool:
        """Whether the token's grace period is over."""
        return self.not_after is not None and self.not_after <= (now or datetime.now(UTC))


_RECORDS = TypeAdapter(list[TokenRecord])


def digest(token: str) -> str:
    """SHA-256 hex digest of a token (what is stored and compared)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def read_tokens_file(path: Path) -> list[TokenRecord]:
    """The records of a tokens file; ``OSError`` or ``ValueError`` (half written, not a list of
    records) when it cannot be used."""
    return _RECORDS.validate_json(path.read_bytes())


def save_tokens_file(path: Path, records: Iterable[TokenRecord]) -> None:
    """Replace the tokens file atomically: a temporary file made with mode 0600 in the same
    directory, flushed to disk, renamed over the old one (a reader sees the old file or the new
    one, never half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(
        [r.model_dump(mode="json", exclude_none=True, exclude_defaults=True) for r in records],
        indent=2,
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_tokens_file(
    path: Path, tokens: dict[str, tuple[Role, str]], *, keep_others: bool = False
) -> None:
    """Write ``{name: (role, plain token)}`` as digests only, readable by the owner alone;
    ``keep_others``: the file's records of other names stay (tokens made by ``roost token``)."""
    now = datetime.now(UTC)
    others: list[TokenRecord] = []
    if keep_others and path.exists():
        with contextlib.suppress(OSError, ValueError):  # unreadable: written anew
            others = [r for r in read_tokens_file(path) if r.name not in tokens]
    save_tokens_file(
        path,
        others
        + [
            TokenRecord(name=n, role=r, sha256=digest(t), created_at=now)
            for n, (r, t) in tokens.items()
        ],
    )


def issue_token(path: Path, name: str, role: Role, *, peer: bool = False) -> str:
    """Make a token named ``name`` in the tokens file (replacing any of that name, keeping the
    others) and return it: the one moment it exists in plain."""
    token = new_token()
    others = [r for r in read_tokens_file(path) if r.name != name] if path.exists() else []
    record = TokenRecord(
        name=name, role=role, sha256=digest(token), created_at=datetime.now(UTC), peer=peer
    )
    save_tokens_file(path, [*others, record])
    return token


class Principal(BaseModel):
    """Who made a request (``peer``: a service calling another, see :class:`TokenRecord`)."""

    name: str
    role: Role
    peer: bool = False

    @property
    def is_admin(self) -> bool:
        return self.role is Role.admin

    @property
    def is_peer(self) -> bool:
        return self.role is Role.peer


Stamp = tuple[int, int, int]


class TokenFile:
    """The tokens file as last read, read again when it changes.

    Each :meth:`refresh` costs one ``stat`` (about a microsecond, against the millisecond a
    request costs; no background task): the file is read again only when its inode, size or
    modification time changed. A token listed before and no longer listed is *revoked* (the
    dashboard refuses it even for a session it already holds). A file that cannot be parsed is
    retried on its next change; until then the previous tokens stay (nobody is locked out by a
    half-written file). A missing file lists no tokens.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.records: dict[str, TokenRecord] = {}
        self.revoked: set[str] = set()
        self._stamp: Stamp | None = None
        self._bad: Stamp | None = None
        if path is not None:
            self._stamp = self._stat()
            if self._stamp is not None:
                # At start a broken file is a configuration error: fail loudly.
                self.records = {r.sha256: r for r in read_tokens_file(path)}

    def _stat(self) -> Stamp | None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def refresh(self) -> bool:
        """Read the file again if it changed; whether the tokens changed."""
        if self.path is None:
            return False
        stamp = self._stat()
        if stamp == self._stamp or (stamp is not None and stamp == self._bad):
            return False
        try:
            records = read_tokens_file(self.path) if stamp is not None else []
        except FileNotFoundError:
            records = []
        except (OSError, ValueError) as exc:
            self._bad = stamp
            log.warning(
                "tokens file %s not readable (%s); keeping the previous tokens",
                self.path,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            return False
        fresh = {r.sha256: r for r in records}
        self.revoked = (self.revoked | (self.records.keys() - fresh.keys())) - fresh.keys()
        self.records = fresh
        self._stamp = stamp
        self._bad = None
        log.info("tokens file %s read again: %d tokens", self.path, len(fresh))
        return True


class Authenticator:
    """Maps token digests to principals: the tokens file (watched) and the env tokens."""

    def __init__(self, settings: RoostSettings) -> None:
        self.disabled = settings.auth_disabled
        self.file = TokenFile(settings.auth_tokens_file)
        self._env: dict[str, Principal] = {}
        for name, role, secret in (
            ("admin", Role.admin, settings.admin_token),
            ("reader", Role.reader, settings.reader_token),
        ):
            if secret is not None and secret.get_secret_value():
                self._env[digest(secret.get_secret_value())] = Principal(name=name, role=role)
        peer_secret = _peer_secret(settings)
        if peer_secret is not None:
            for service in PEER_SERVICES:
                self._env[digest(derive_peer_token(peer_secret, service))] = Principal(
                    name=f"peer-{service}", role=Role.peer, peer=True
                )
        if not self._env and not self.file.records and not self.disabled:
            log.warning("no API tokens configured: every request will be refused with 401")

    def by_digest(self, wanted: str) -> Principal | None:
        """The principal of a token digest now (the file re-checked), or None.

        A dict lookup rather than a constant-time comparison: the key is a SHA-256 of the
        secret, so its timing tells an attacker nothing about the secret itself."""
        self.file.refresh()
        principal = self._env.get(wanted)
        if principal is not None:
            return principal
        record = self.file.records.get(wanted)
        if record is None or record.expired():
            return None
        peer = record.peer or record.role is Role.peer
        return Principal(name=record.name, role=record.role, peer=peer)

    def principal(self, token: str | None) -> Principal | None:
        """The principal a token belongs to, or None."""
        if self.disabled:
            return Principal(name="anonymous", role=Role.admin)
        if not token:
            return None
        return self.by_digest(digest(token))

    def is_revoked(self, token: str) -> bool:
        """Whether the token was in the tokens file and is no longer valid there (removed since
        this process started, or past its ``not_after``)."""
        wanted = digest(token)
        self.file.refresh()
        if wanted in self._env:
            return False
        record = self.file.records.get(wanted)
        return wanted in self.file.revoked or (record is not None and record.expired())


def _token_from(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.headers.get("x-auth-token") or None


def current_principal(request: Request) -> Principal:
    """FastAPI dependency: the authenticated caller (401 without a valid token)."""
    auth: Authenticator = request.app.state.authenticator
    token = _token_from(request)
    principal = auth.principal(token)
    if principal is None:
        if not token:
            reason = "missing token"
        elif auth.is_revoked(token):
            reason = "revoked or expired token"
        else:
            reason = "invalid token"
        raise HTTPException(
            401,
            f"{reason}: send 'Authorization: Bearer <token>' or 'X-Auth-Token: <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    request.state.principal = principal
    return principal


def require_reader(principal: Principal = Depends(current_principal)) -> Principal:
    """Any valid token may read."""
    return principal


def require_admin(principal: Principal = Depends(current_principal)) -> Principal:
    """Mutations need the admin role (403 for readers and peers)."""
    if not principal.is_admin:
        raise HTTPException(403, f"role '{principal.role}' may not change anything; admin needed")
    return principal


def require_admin_or_peer(principal: Principal = Depends(current_principal)) -> Principal:
    """The few mutating routes another service calls (403 for readers)."""
    if not (principal.is_admin or principal.is_peer):
        raise HTTPException(403, f"role '{principal.role}' may not do this; admin or peer needed")
    return principal
