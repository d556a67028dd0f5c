"""Host service settings (``ROOST_*`` environment variables).

The Kubernetes settings (``ROOST_KUBE_*``, see :class:`roost_host.kube.KubeSettings`) are
inherited; with neither ``ROOST_KUBE_CONFIG`` nor ``ROOST_KUBE_API_URL`` set the service runs
without a cluster and never cordons or drains.
"""

from pydantic import Field

from roost_host.kube import KubeSettings
from roost_shared.settings import RoostSettings


class HostSettings(RoostSettings, KubeSettings):
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
    kube_drain_timeout_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="Deadline of the Kubernetes drain after a lock; pods still on the node then "
        "are reported on the timeline (the host stays locked).",
    )
