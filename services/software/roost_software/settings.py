"""Software service settings (``ROOST_*`` environment variables)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from roost_shared.settings import RoostSettings


class SoftwareSettings(RoostSettings):
    service: str = "software"
    port: int = 8105

    # Releases --------------------------------------------------------------------------------
    release_public_keys: list[str] = Field(
        default_factory=list,
        description="Base64 Ed25519 public keys whose signatures the site accepts "
        '(JSON list, e.g. ["n8hT...="]); added to those in release_keys_file.',
    )
    release_keys_file: Path | None = Field(
        None,
        description="A file of accepted public keys, one base64 key per line ('#' comments); "
        "default <state_dir>/release-keys.pub when it exists.",
    )
    allow_unsigned_releases: bool = Field(
        False, description="Accept releases without a signature (a lab; never a production site)."
    )
    max_release_bytes: int = Field(
        256 * 1024 * 1024, gt=0, description="Largest release archive accepted."
    )
    download_ticket_s: float = Field(
        900.0, gt=0, description="How long an agent's download link stays valid."
    )
    public_url: str | None = Field(
        None,
        description="Base URL agents download releases from; default http://<bind_host>:<port> "
        "(0.0.0.0 becomes 127.0.0.1).",
    )

    # Peers (their APIs; unset: the feature that needs them is refused with a clear error) -------
    host_url: str | None = Field(None, description="Host service base URL (locks, states).")
    service_url: str | None = Field(None, description="Service service base URL (swacts).")
    fault_url: str | None = Field(None, description="Fault service base URL (alarm checks).")
    config_url: str | None = Field(None, description="Config service base URL (personalities).")
    peer_token: SecretStr | None = Field(
        None,
        description="Token sent to the peers: the software service's own peer token (role "
        "peer: reads, host lock/unlock/force-lock, swacts and member locks, audited under its "
        "name); unset: derived from ROOST_PEER_SECRET (default the admin token).",
    )
    peer_timeout_s: float = Field(10.0, gt=0, description="Deadline of one peer API call.")

    # Deployment and strategy ----------------------------------------------------------------
    command_deadline_s: float = Field(
        60.0, gt=0, description="Deadline of install/rollback commands to agents."
    )
    install_timeout_s: float = Field(
        900.0, gt=0, description="How long a host may take to install (and reboot) a release."
    )
    host_ready_timeout_s: float = Field(
        900.0,
        gt=0,
        description="How long a host may take after its unlock to be available again (and its "
        "standbys running again).",
    )
    drain_timeout_s: float = Field(
        300.0, gt=0, description="How long moving workloads off a host may take before its lock."
    )
    query_alarms_wait_s: float = Field(
        30.0,
        ge=0,
        description="How long a stage's first step waits for blocking alarms to clear by "
        "themselves before it fails the stage (0: fail at once, as StarlingX vim does).",
    )
    alarm_wait_s: float = Field(
        600.0, ge=0, description="How long a stage waits for blocking alarms to clear."
    )
    precheck_disk_headroom_mb: int = Field(
        100, ge=0, description="Free disk a host needs besides twice the release's size."
    )
    peer_outage_s: float = Field(
        300.0,
        ge=0,
        description="How long a step keeps retrying while a peer service is unreachable (it "
        "restarts, its broker or database is away) before the step fails.",
    )
    poll_s: float = Field(
        0.5, gt=0, description="Period of a step's checks of peers while it waits."
    )
