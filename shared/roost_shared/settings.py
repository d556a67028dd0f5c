"""Settings shared by every Roost process, read from ``ROOST_*`` environment variables.

Each service subclasses :class:`RoostSettings` to add its own options; the defaults are the
all-in-one (``make run``) values from ARCHITECTURE.md so a fresh checkout needs no configuration.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Default port of the embedded SecantusDB server started by ``make run`` and the tests.
EMBEDDED_DB_PORT = 8190


class RoostSettings(BaseSettings):
    """Options every service has. Environment variables are ``ROOST_<FIELD>`` (upper case)."""

    model_config = SettingsConfigDict(env_prefix="ROOST_", extra="ignore")

    service: str = Field("roost", description="Service name; also the database suffix.")
    database: str | None = Field(None, description="Database name; default roost_<service>.")
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    broker_passwords_dir: Path | None = Field(
        None,
        description="Directory of the site's broker passwords, one file per user "
        "(roost_shared.brokerusers): the process connects as its own user roost-<service>, "
        "whatever user amqp_url names. Unset: amqp_url's user.",
    )
    broker_site: str = Field(
        "",
        pattern=r"^[0-9a-z-]{0,32}$",
        description="Suffix of the site's broker user names (roost-<service>.<site>), for a "
        "broker several sites share (each site's users may use only its own virtual hosts).",
    )
    broker_management_url: SecretStr | None = Field(
        None,
        description="The broker's management API (http://admin:password@broker:15672), through "
        "which python -m roost_shared.brokerusers loads the site's users; unset: rabbitmqctl.",
    )
    mongo_url: str = f"mongodb://127.0.0.1:{EMBEDDED_DB_PORT}/?directConnection=true"
    bind_host: str = "127.0.0.1"
    port: int = 8100
    state_dir: Path = Path("state")
    log_level: str = "INFO"
    log_json: bool = True

    # TLS. The API serves HTTPS when both files are given (uvicorn). Clients (peers, the CLI,
    # the agent's downloads, AMQP over ``amqps://``) trust the site's CA through the standard
    # ``SSL_CERT_FILE`` variable, which httpx, urllib and aio-pika's default SSL context all
    # honour: no per-client option to forget (docs/operator-guide.md, "TLS").
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate (chain) the HTTP API serves; HTTPS when set."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")

    # Auth: a file of hashed tokens (written by ``make run``'s bootstrap) and/or tokens given
    # directly (handy for docker-compose). Plain tokens never leave process memory.
    auth_tokens_file: Path | None = None
    admin_token: SecretStr | None = None
    reader_token: SecretStr | None = None
    peer_secret: SecretStr | None = Field(
        None,
        description="Derives each service's peer token (its own, for calling other services) "
        "and the peer tokens every service accepts; default: the admin token. Sites with a "
        "tokens file (make run) list peer tokens there instead.",
    )
    auth_disabled: bool = Field(False, description="Accept every request as admin (tests only).")
    audit: bool = Field(
        True,
        description="Audit every mutating request (POST/PUT/PATCH/DELETE, refused ones too) as a "
        "customer log in the fault service's event log (fault.log.write).",
    )
    audit_refusals_window_s: float = Field(
        60.0,
        gt=0,
        description="Refused requests (401, 403, 429) are audited as one record per client "
        "address and caller per this many seconds, with a count, never one record each.",
    )
    rate_limit_per_s: float = Field(
        50.0,
        ge=0,
        description="API requests per second each caller may make on average (a token bucket "
        "per token, or per client address without a valid token); 0 disables the limit. "
        "Peer tokens, /healthz, /readyz and /metrics are never limited.",
    )
    max_body_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Largest request body any API route takes (413 above it, refused before "
        "authentication and parsing); a release upload has its own cap (max_release_bytes).",
    )
    rate_limit_burst: int = Field(
        200, ge=1, description="Requests a caller may make at once before the rate applies."
    )

    # Commands to agents are signed by their issuing service (roost_shared.commands).
    command_key: SecretStr | None = Field(
        None, description="This service's Ed25519 command signing key as PEM text."
    )
    command_key_file: Path | None = Field(
        None,
        description="This service's Ed25519 command signing key (PKCS#8 PEM); default "
        "<command_keys_dir>/<service>.pem.",
    )
    command_keys_dir: Path | None = Field(
        None, description="Directory of the site's command signing keys, one <service>.pem each."
    )

    # Storage.
    db_timeout_ms: int = Field(
        30_000,
        ge=0,
        description="Deadline of every database operation (PyMongo timeoutMS; each operation "
        "of a transaction on its own; 0: none).",
    )

    # Bus consumer behaviour.
    prefetch: int = Field(256, ge=1, le=5000, description="Unacked messages per consumer.")
    retry_delays_ms: list[int] = Field(
        default_factory=lambda: [500, 5_000, 30_000],
        description="Back-off before each redelivery of a failed message; then it is parked.",
    )
    delivery_limit: int = Field(
        10, description="Broker-side cap on redeliveries (a message that crashes consumers)."
    )
    inbox_ttl_s: int = Field(7 * 24 * 3600, description="How long processed event ids are kept.")
    outbox_poll_s: float = Field(1.0, description="Relay's fallback poll period when idle.")
    # Replicas (shared/roost_shared/leader.py): the singleton loops and the outbox relay run on
    # the one replica holding the service's leader lease; a standby takes over within
    # leader_ttl_s + leader_renew_s of the leader's last renewal.
    leader_ttl_s: float = Field(3.0, gt=0, le=60, description="Leader lease lifetime.")
    leader_renew_s: float = Field(1.0, gt=0, le=30, description="Leader lease attempt period.")

    @property
    def database_name(self) -> str:
        """Each service owns one database, ``roost_<service>``."""
        return self.database or f"roost_{self.service}"
