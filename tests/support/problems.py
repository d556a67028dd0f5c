"""Checking an API refusal: the status, an RFC 9457 problem+json body, the field it names."""

from __future__ import annotations

from typing import Any

import httpx


def problem(r: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    """Assert ``r`` is a ``status`` problem naming ``field`` (in ``errors``); its body."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    if field is not None:
        assert field in [e["field"] for e in body.get("errors", [])], body
    return body
