"""Config service settings (``ROOST_*`` environment variables)."""

from pydantic import Field, SecretStr

from roost_shared.settings import RoostSettings


class ConfigSettings(RoostSettings):
    service: str = "config"
    port: int = 8101
    system_name: str = Field("roost", description="The system's name until an operator sets it.")
    secret_key: SecretStr | None = Field(
        None,
        description="Fernet key (url-safe base64, 32 bytes) encrypting BMC passwords at rest; "
        "unset: a key file generated under ROOST_STATE_DIR on first start (mode 0600).",
    )
    config_grace_s: float = Field(
        10.0, gt=0, description="How long target may differ from applied before alarm 250.001."
    )
    drift_check_period_s: float = Field(1.0, gt=0, description="How often drift is checked.")
    command_deadline_s: float = Field(
        120.0, gt=0, description="A config.apply command not started by then is rejected."
    )
    forgery_alarm_threshold: int = Field(
        3,
        ge=1,
        le=1000,
        description="Forged commands a host's agent refuses within forgery_alarm_window_s "
        "before alarm 250.011 is raised.",
    )
    forgery_alarm_window_s: float = Field(600.0, gt=0, description="See forgery_alarm_threshold.")
    host_service_url: str | None = Field(
        None, description="Host service base URL; when set, deleting an unlocked host is refused."
    )
    host_service_token: SecretStr | None = Field(
        None, description="Token sent to the host service when asking a host's state."
    )
