"""Token authentication with two roles: ``reader`` (GET) and ``admin`` (everything).

Tokens arrive as ``Authorization: Bearer <t>`` or as OpenStack's ``X-Auth-Token: <t>`` (StarlingX
clients send only the latter). Tokens are compared by SHA-256 digest; the tokens file written by
the all-in-one bootstrap holds only digests, so a leaked state directory leaks no credential.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from enum import StrEnum
from pathlib import Path

from fastapi import Depends, HTTPException, Request
from pydantic import BaseModel

from roost_shared.settings import RoostSettings

log = logging.getLogger(__name__)


class Role(StrEnum):
    reader = "reader"
    admin = "admin"


class TokenRecord(BaseModel):
    """One entry of the tokens file: a name for audit, the role, and the token's SHA-256."""

    name: str
    role: Role
    sha256: str


def digest(token: str) -> str:
    """SHA-256 hex digest of a token (what is stored and compared)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def write_tokens_file(path: Path, tokens: dict[str, tuple[Role, str]]) -> None:
    """Write ``{name: (role, plain token)}`` as digests only, readable by the owner alone."""
    records = [
        TokenRecord(name=n, role=r, sha256=digest(t)).model_dump() for n, (r, t) in tokens.items()
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=2))
    path.chmod(0o600)


class Principal(BaseModel):
    """Who made a request."""

    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.admin


class Authenticator:
    """Maps token digests to principals; built once per process from settings."""

    def __init__(self, settings: RoostSettings) -> None:
        self.disabled = settings.auth_disabled
        self._by_digest: dict[str, Principal] = {}
        if settings.auth_tokens_file and settings.auth_tokens_file.exists():
            for raw in json.loads(settings.auth_tokens_file.read_text()):
                rec = TokenRecord.model_validate(raw)
                self._by_digest[rec.sha256] = Principal(name=rec.name, role=rec.role)
        for name, role, secret in (
            ("admin", Role.admin, settings.admin_token),
            ("reader", Role.reader, settings.reader_token),
        ):
            if secret is not None and secret.get_secret_value():
                self._by_digest[digest(secret.get_secret_value())] = Principal(name=name, role=role)
        if not self._by_digest and not self.disabled:
            log.warning("no API tokens configured: every request will be refused with 401")

    def principal(self, token: str | None) -> Principal | None:
        """The principal a token belongs to, or None."""
        if self.disabled:
            return Principal(name="anonymous", role=Role.admin)
        if not token:
            return None
        wanted = digest(token)
        for known, principal in self._by_digest.items():
            if hmac.compare_digest(known, wanted):
                return principal
        return None


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
        reason = "missing token" if not token else "invalid token"
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
    """Mutations need the admin role (403 for readers)."""
    if not principal.is_admin:
        raise HTTPException(403, f"role '{principal.role}' may not change anything; admin needed")
    return principal
