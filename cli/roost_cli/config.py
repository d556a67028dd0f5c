"""Where the CLI finds the fault, config, host and service services and its API token.

Precedence: command-line option, then environment (``ROOST_FAULT_URL``, ``ROOST_CONFIG_URL``,
``ROOST_HOST_URL``, ``ROOST_SERVICE_URL``, ``ROOST_TOKEN``), then the credentials file
(``ROOST_CREDENTIALS``, else ``$XDG_CONFIG_HOME/roost/credentials.json``, else
``~/.config/roost/credentials.json``), which holds ``{"admin_token": ..., "reader_token":
...}``. One token serves every service.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from roost_cli.errors import CliError, ExitCode

DEFAULT_FAULT_URL = "http://127.0.0.1:8102"
DEFAULT_CONFIG_URL = "http://127.0.0.1:8101"
DEFAULT_HOST_URL = "http://127.0.0.1:8103"
DEFAULT_SERVICE_URL = "http://127.0.0.1:8104"
DEFAULT_PAGE_SIZE = 2000  # the fault API's limit_max


class OutputFormat(StrEnum):
    table = "table"
    json = "json"


def credentials_path() -> Path:
    """The credentials file this environment points at (it need not exist)."""
    explicit = os.environ.get("ROOST_CREDENTIALS")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "roost" / "credentials.json"


def token_from_file(path: Path) -> str | None:
    """``admin_token`` (else ``reader_token``) from the credentials file; None if it is absent."""
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CliError(f"cannot read credentials file {path}: {e.strerror or e}") from None
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise CliError(f"credentials file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CliError(f"credentials file {path} must hold a JSON object with 'admin_token'")
    for key in ("admin_token", "reader_token"):
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def page_size() -> int:
    """Items per request when fetching every page (``ROOST_PAGE_SIZE``, 1..2000)."""
    raw = os.environ.get("ROOST_PAGE_SIZE", "")
    if not raw:
        return DEFAULT_PAGE_SIZE
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if not 1 <= size <= DEFAULT_PAGE_SIZE:
        raise CliError(
            f"ROOST_PAGE_SIZE must be a number from 1 to {DEFAULT_PAGE_SIZE}, not {raw!r}",
            ExitCode.usage,
        )
    return size


def _base_url(given: str | None, default: str, option: str) -> str:
    url = (given or default).strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise CliError(f"{option} must start with http:// or https://, not {url!r}", ExitCode.usage)
    return url


@dataclass(frozen=True)
class Settings:
    """The global options as given (option or environment); resolved only when a command calls
    the service, so ``--help`` works whatever the credentials file holds."""

    fault_url: str | None
    token: str | None
    output: OutputFormat
    config_url: str | None = None
    host_url: str | None = None
    service_url: str | None = None

    def url(self) -> str:
        """The fault service's base URL (default: the all-in-one port on localhost)."""
        return _base_url(self.fault_url, DEFAULT_FAULT_URL, "--fault-url")

    def config_service_url(self) -> str:
        """The config service's base URL (default: the all-in-one port on localhost)."""
        return _base_url(self.config_url, DEFAULT_CONFIG_URL, "--config-url")

    def host_service_url(self) -> str:
        """The host service's base URL (default: the all-in-one port on localhost)."""
        return _base_url(self.host_url, DEFAULT_HOST_URL, "--host-url")

    def service_service_url(self) -> str:
        """The service service's base URL (default: the all-in-one port on localhost)."""
        return _base_url(self.service_url, DEFAULT_SERVICE_URL, "--service-url")

    def resolved_token(self) -> str | None:
        """``--token``/``ROOST_TOKEN``, else the credentials file, else None (the API says 401)."""
        if self.token and self.token.strip():
            return self.token.strip()
        return token_from_file(credentials_path())
