"""All-in-one credentials: API tokens made at the first ``make run``.

Services read only token digests (``<state>/auth/tokens.json``); the CLI and the dashboard read
the plain tokens from the user's config (``$XDG_CONFIG_HOME/roost/credentials.json``, mode 0600).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel

from roost_shared.auth import Role, new_token, write_tokens_file


class Credentials(BaseModel):
    admin_token: str
    reader_token: str


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "roost"


def credentials_path() -> Path:
    return Path(os.environ.get("ROOST_CREDENTIALS") or config_dir() / "credentials.json")


def ensure_credentials(state_dir: Path) -> tuple[Credentials, Path]:
    """Load the user's tokens or make new ones; (re)write the services' digest file."""
    path = credentials_path()
    if path.exists():
        creds = Credentials.model_validate_json(path.read_text())
    else:
        creds = Credentials(admin_token=new_token(), reader_token=new_token())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(creds.model_dump(), indent=2))
        path.chmod(0o600)
    tokens_file = state_dir / "auth" / "tokens.json"
    write_tokens_file(
        tokens_file,
        {"admin": (Role.admin, creds.admin_token), "reader": (Role.reader, creds.reader_token)},
    )
    return creds, tokens_file
