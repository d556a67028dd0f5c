"""Fault service settings (``ROOST_*`` environment variables)."""

from pydantic import Field, IPvAnyNetwork

from roost_shared.settings import RoostSettings


class FaultSettings(RoostSettings):
    service: str = "fault"
    port: int = 8102
    event_log_max_count: int = Field(
        20_000, ge=100, description="Event log records kept (StarlingX FM keeps 4,000)."
    )
    event_log_max_age_days: float = Field(90, gt=0, description="Older records are dropped.")
    audit_log_max_count: int = Field(
        10_000,
        ge=100,
        description="API audit records (500.900) kept, apart from alarms and logs: they never "
        "count against event_log_max_count.",
    )
    audit_log_max_age_days: float = Field(90, gt=0, description="Older audit records are dropped.")
    retention_period_s: float = Field(60, gt=0, description="How often retention runs.")
    webhook_timeout_s: float = Field(5, gt=0)
    webhook_batch_max: int = Field(
        500, ge=1, le=1000, description="Most notifications per POST (fewer round trips)."
    )
    webhook_retry_cap_s: float = Field(30, gt=0, description="Longest back-off between tries.")
    webhook_allow_nets: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="Networks webhooks may reach although they are loopback, link-local, "
        'private, unspecified or multicast (JSON list of CIDRs, e.g. ["10.20.0.0/16"]); '
        "everything else in those ranges is refused.",
    )
    webhook_backlog_max: int = Field(
        10_000,
        ge=1,
        description="Notifications kept for one subscription; beyond that, the oldest it has "
        "not received are dropped and counted (a dead receiver cannot grow the log forever).",
    )
