"""Service service settings (``ROOST_*`` environment variables)."""

from pydantic import Field, SecretStr

from roost_shared.hostkeys import SiteSecretSettings
from roost_shared.settings import RoostSettings


class ServiceSettings(RoostSettings, SiteSecretSettings):
    service: str = "service"
    port: int = 8104
    config_service_url: str | None = Field(
        None,
        description="Config service base URL; when set, a group's member hosts must exist there "
        "(unset: they are checked when the group is placed).",
    )
    config_service_token: SecretStr | None = Field(
        None,
        description="Token sent to the config service: the service service's own peer token; "
        "unset: derived from ROOST_PEER_SECRET (default the admin token).",
    )
    max_body_bytes: int = Field(
        1_048_576, gt=0, description="Largest service group document accepted (JSON or YAML)."
    )
    activity_ttl_s: float = Field(
        4.0,
        gt=0,
        le=3600,
        description="Activity lease TTL: renewed every TTL/4 while the active's host is in "
        "service. After a host failure a standby takes over when the host service confirms the "
        "fence, else once the lease expires; an active's agent steps it down when no grant "
        "reached it for TTL minus its margin (so this also bounds how long the service "
        "service itself may be away before actives step down).",
    )
    sm_link_port: int = Field(
        8198, ge=0, le=65535, description="UDP port of the service link (0: any free port)."
    )
    sm_link_path_timeout_s: float = Field(
        3.0, gt=0, description="A link path silent this long while the other talks: 400.005."
    )
    sm_link_max_peers: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="Most hosts the service link keeps state for; hellos from more are refused "
        '(counted: roost_sm_link_refused_total{reason="table-full"}).',
    )
    sm_link_boot_window_s: float = Field(
        60.0,
        ge=0,
        le=86_400,
        description="A hello that starts an agent boot this service does not know must be "
        "stamped within this many seconds of its clock (0: no clock check).",
    )
    command_deadline_s: float = Field(
        30.0, gt=0, description="Deadline of assign/remove commands to agents."
    )
    action_wait_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="How long an operator action (swact, restart, enable/disable, member "
        "lock/unlock) waits for the leader replica to take it (it runs there only; a takeover "
        "after a crash takes ~3-4 s); then 503 with Retry-After and nothing done.",
    )
