"""Dashboard settings: where the service APIs are (the CLI's variable names and defaults)."""

from __future__ import annotations

from pydantic import Field

from roost_shared.settings import RoostSettings


class DashboardSettings(RoostSettings):
    service: str = "dashboard"
    port: int = 8100
    fault_url: str = Field("http://127.0.0.1:8102", description="ROOST_FAULT_URL")
    config_url: str = Field("http://127.0.0.1:8101", description="ROOST_CONFIG_URL")
    host_url: str = Field("http://127.0.0.1:8103", description="ROOST_HOST_URL")
    service_url: str = Field("http://127.0.0.1:8104", description="ROOST_SERVICE_URL")
    software_url: str | None = Field(
        None,
        description="ROOST_SOFTWARE_URL (e.g. http://127.0.0.1:8105); unset: the software page "
        "and the overview's update card say the software service is not configured.",
    )
    api_timeout_s: float = Field(5.0, description="Deadline of one call to a service API.")
    cookie_secure: bool = Field(
        False, description="Mark the session cookie Secure (set it when served over HTTPS)."
    )
    session_ttl_s: float = Field(
        8 * 3600.0,
        gt=0,
        description="How long a login lasts (absolute): then the session ends and the browser "
        "is sent to the login page.",
    )
    dashboard_origins: list[str] = Field(
        default_factory=list,
        description="Origins (https://console.example) form posts may come from besides the "
        "one the dashboard is asked under (a reverse proxy that rewrites Host or the scheme).",
    )
    alarms_page_size: int = Field(
        500, ge=1, le=2000, description="Alarms a page of the alarm list shows (most severe first)."
    )
    stream_keepalive_s: float = Field(15.0, description="Comment line on idle event streams.")
    stream_token_check_s: float = Field(
        30.0,
        gt=0,
        description="How often an open event stream checks its token again (the tokens file "
        "re-read; a token it no longer lists, or one the API now refuses, closes the stream).",
    )
    events_search_scan: int = Field(
        500,
        ge=50,
        le=2000,
        description="Events one search by reason text looks through (the fault API cannot search "
        "reason text: the dashboard filters one fetched page of this many).",
    )
