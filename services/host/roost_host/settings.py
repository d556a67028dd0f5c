"""Host service settings (``ROOST_*`` environment variables)."""

from pydantic import Field

from roost_shared.settings import RoostSettings


class HostSettings(RoostSettings):
    service: str = "host"
    port: int = 8103
    intest_s: float = Field(
        1.0,
        gt=0,
        le=3600,
        description="How long the in-test after an unlock runs before the host is enabled.",
    )
    step_s: float = Field(
        1.0,
        gt=0,
        le=3600,
        description="How long a reboot, reset, reinstall or power-on takes until the host is "
        "back online (simulated in this version; later versions wait for the agent).",
    )
    step_poll_s: float = Field(
        1.0, gt=0, description="Fallback period of the timed-step runner when nothing is due."
    )
