"""The CloudEvents-style envelope every bus message carries.

A message body is one JSON envelope; ``type`` doubles as the AMQP routing key
(``<service>.<entity>.<verb>``) and ``id`` is what consumers de-duplicate on.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (every Roost timestamp is UTC)."""
    return datetime.now(UTC)


def utcnow_ms() -> datetime:
    """Now, UTC, truncated to the millisecond a BSON date keeps (what a read gives back)."""
    now = utcnow()
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class Envelope(BaseModel):
    """A CloudEvents 1.0 structured-mode event with Roost's ``correlationid`` extension."""

    model_config = ConfigDict(extra="ignore")

    specversion: str = "1.0"
    id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=1, max_length=200)
    type: str = Field(min_length=3, max_length=200, pattern=r"^[a-z0-9_-]+(\.[a-z0-9_-]+)+$")
    source: str = Field(min_length=1, max_length=200)
    time: datetime = Field(default_factory=utcnow)
    subject: str | None = None
    correlationid: str | None = None
    deadline: datetime | None = Field(
        None, description="Commands only: after this the receiver rejects it instead of acting."
    )
    # Commands only (roost_shared.commands): who signed it, for which agent, in which order.
    target: str | None = Field(None, max_length=64, description="Commands only: the agent id.")
    seq: int | None = Field(None, ge=0, description="Commands only: the issuer's sequence number.")
    signer: str | None = Field(None, max_length=64, description="Commands only: the issuer.")
    signature: str | None = Field(
        None, max_length=200, description="Commands only: base64 Ed25519 signature."
    )
    datacontenttype: str = "application/json"
    data: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(
        cls,
        data: BaseModel,
        *,
        source: str,
        type: str | None = None,
        subject: str | None = None,
        correlationid: str | None = None,
    ) -> Envelope:
        """Wrap a typed event payload; its type comes from the catalog unless given."""
        from roost_shared.catalog import type_of

        return cls(
            type=type or type_of(data),
            source=source,
            subject=subject,
            correlationid=correlationid,
            data=data.model_dump(mode="json", exclude_none=True),
        )
