"""Browser sessions: the cookie holds a random session id, never the operator's API token.

The store is in the dashboard's memory: a session id (256 random bits) maps to the operator's
token, a CSRF token of its own and an expiry (``session_ttl_s`` after login, absolute). The
token never leaves the process (no cookie, no database). A restart ends every session (the
operator logs in again); with several replicas the load balancer keeps a browser on one
(Kubernetes: ``sessionAffinity: ClientIP``). At most ``max_sessions`` live at once; past that
the oldest ends.

A lookup by session id is a dict lookup on its SHA-256, so its timing tells nothing about the
id; CSRF tokens are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MAX_SESSIONS = 10_000


@dataclass
class Session:
    token: str
    csrf: str
    expires_at: float

    def csrf_ok(self, sent: str | None) -> bool:
        return bool(sent) and hmac.compare_digest(self.csrf.encode(), str(sent).encode())


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    """Live sessions by the digest of their id, oldest first."""

    def __init__(
        self,
        ttl_s: float,
        *,
        max_sessions: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, token: str) -> tuple[str, Session]:
        """A new session for ``token``: (its id for the cookie, the session)."""
        self._expire()
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
        session_id = secrets.token_urlsafe(32)
        session = Session(token, secrets.token_urlsafe(32), self.clock() + self.ttl_s)
        self._sessions[_key(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of ``session_id``; None when unknown, ended or expired."""
        if not session_id:
            return None
        key = _key(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        if session.expires_at <= self.clock():
            del self._sessions[key]
            return None
        return session

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(_key(session_id), None)

    def _expire(self) -> None:
        now = self.clock()
        while self._sessions:
            key, oldest = next(iter(self._sessions.items()))
            if oldest.expires_at > now:
                return
            del self._sessions[key]
