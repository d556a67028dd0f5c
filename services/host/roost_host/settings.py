"""Host service settings (``ROOST_*`` environment variables).

The Kubernetes settings (``ROOST_KUBE_*``, see :class:`roost_host.kube.KubeSettings`) are
inherited; with neither ``ROOST_KUBE_CONFIG`` nor ``ROOST_KUBE_API_URL`` set the service runs
without a cluster and never cordons or drains.
"""

from pydantic import Field, SecretStr

from roost_host.kube import KubeSettings
from roost_shared.hostkeys import SiteSecretSettings
from roost_shared.settings import RoostSettings


class HostSettings(RoostSettings, KubeSettings, SiteSecretSettings):
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
        "back online when it is simulated: a reboot, and any power step of a host without a BMC.",
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

    # Heartbeats (see roost_host/liveness.py for how they combine) -----------------------------
    heartbeat_port: int = Field(
        8199, ge=0, le=65535, description="UDP port the agents' heartbeats arrive on (0: any)."
    )
    heartbeat_period_ms: int = Field(
        100, ge=20, le=10_000, description="The agents' UDP heartbeat period."
    )
    heartbeat_probe_after_ms: int = Field(
        200, gt=0, description="UDP silence after which the host is probed over the bus."
    )
    heartbeat_fail_ms: int = Field(
        300,
        gt=0,
        description="UDP silence that, with an unanswered bus probe, makes a host silent on "
        "every path (a failure candidate).",
    )
    heartbeat_probe_timeout_ms: int = Field(
        150, gt=0, description="How long a bus probe may take to be answered."
    )
    heartbeat_udp_loss_ms: int = Field(
        1000, gt=0, description="UDP silence (bus still answering) that raises 200.005."
    )
    heartbeat_bus_loss_ms: int = Field(
        15_000,
        gt=0,
        description="Bus silence (UDP still arriving) that raises 200.009: three of the agents' "
        "5 s bus heartbeats.",
    )
    heartbeat_check_source: bool = Field(
        True,
        description="Believe a UDP heartbeat only from its host's management address (mgmt_ip). "
        "Turn off only where the network rewrites source addresses (a Kubernetes NodePort "
        "with externalTrafficPolicy Cluster); the per-host signature still holds.",
    )
    heartbeat_boot_window_s: float = Field(
        60.0,
        ge=0,
        le=86_400,
        description="A heartbeat that starts a boot this service does not know (after a reboot, "
        "or this service's restart) must be stamped within this many seconds of this "
        "service's clock: bounds the replay of a recording (0: no clock check).",
    )
    mnfa_threshold: int = Field(
        2,
        ge=0,
        description="Hosts silent together that mean a site fault, not host deaths: they are "
        "held degraded instead of failed (StarlingX mnfa_threshold; 0 turns it off).",
    )

    # Auto-recovery ----------------------------------------------------------------------------
    recovery_attempts: int = Field(
        3, ge=0, le=100, description="Fence/power-on attempts before giving up (0: never fence)."
    )
    recovery_backoff_s: float = Field(
        5.0, ge=0, description="Wait before attempt n+1 (doubled each time, capped at 300 s)."
    )
    recovery_boot_s: float = Field(
        120.0, gt=0, description="How long a powered-on host may take until it heartbeats."
    )
    recovery_fence_s: float = Field(
        20.0, gt=0, description="How long the BMC may take to report power off after off."
    )
    bmc_confirm_timeout_s: float = Field(
        1.0,
        gt=0,
        le=30,
        description="How long a failure decision waits for the BMC's power state (one try); "
        "a BMC that cannot say in time does not stop the failure, it is recorded as unconfirmed.",
    )
    graceful_wait_s: float = Field(
        60.0,
        ge=0,
        description="How long a host whose agent said it was stopping (a reboot) may stay "
        "silent before it is fenced.",
    )

    # BMCs (IPMI) and sensors ----------------------------------------------------------------
    secret_key: SecretStr | None = Field(
        None,
        description="The config service's Fernet key (BMC passwords arrive encrypted with it); "
        "unset: <ROOST_STATE_DIR>/config-secret.key, shared with config in the same state dir.",
    )
    bmc_max_concurrency: int = Field(32, ge=1, le=1024, description="IPMI calls in flight.")
    bmc_timeout_s: float = Field(5.0, gt=0, le=120, description="Deadline of one IPMI attempt.")
    bmc_retries: int = Field(
        2, ge=0, le=10, description="Retries after an unreachable/timed-out attempt (never auth)."
    )
    bmc_breaker_failures: int = Field(
        3, ge=1, description="Consecutive failed calls that open a BMC's circuit breaker."
    )
    bmc_breaker_reset_s: float = Field(
        30.0, gt=0, description="How long an open breaker fails calls fast before one trial."
    )
    sensor_poll_s: float = Field(
        30.0, gt=0, description="How often every IPMI BMC's sensors and power are read."
    )
