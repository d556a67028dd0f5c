"""All-in-one credentials: API tokens made at the first ``make run``, and a release signing key.

Services read only token digests (``<state>/auth/tokens.json``); the CLI and the dashboard read
the plain tokens from the user's config (``$XDG_CONFIG_HOME/roost/credentials.json``, mode 0600).

The release signing key pair is made once in the state directory: the private key
``release-signing.pem`` (mode 0600; ``roost software pack DIR -o R.tar.gz --key
state/release-signing.pem``) and the public key ``release-keys.pub``, which the software service
reads as the site's accepted keys (its default ``release_keys_file``) and every simulated agent
verifies releases with (``ROOST_RELEASE_KEYS_FILE``, :class:`roost_sim.fleet.Fleet`).
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
        keep_others=True,  # tokens made with `roost token create` survive a restart
    )
    return creds, tokens_file


RELEASE_SIGNING_KEY = "release-signing.pem"
RELEASE_PUBLIC_KEYS = "release-keys.pub"


def ensure_release_keys(state_dir: Path) -> Path:
    """Make the all-in-one release signing key pair once (kept across runs); the private key's
    path. The public key file is what the software service accepts and what every simulated
    agent verifies releases with (PyNaCl: nothing to install)."""
    from roost_shared.signing import Signer

    private = state_dir / RELEASE_SIGNING_KEY
    public = state_dir / RELEASE_PUBLIC_KEYS
    if private.exists():
        if not public.exists():
            key = Signer.from_file(private).public_key
            public.write_text(f"# make run's release signing key\n{key}\n")
        return private
    state_dir.mkdir(parents=True, exist_ok=True)
    signer = Signer.generate()
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(signer.pem())
    if public.exists():  # keys added by the operator stay; make run's is appended
        with public.open("a") as f:
            f.write(f"# make run's release signing key\n{signer.public_key}\n")
    else:
        public.write_text(f"# make run's release signing key\n{signer.public_key}\n")
    return private


COMMAND_KEYS_DIR = "command-keys"
COMMAND_TRUST_FILE = "command-keys.json"


def ensure_command_keys(state_dir: Path) -> tuple[Path, Path]:
    """The site's command signing keys, made once and kept across runs: one private key per
    issuing service, ``<state>/command-keys/<service>.pem`` (read by that service), and the
    public keys every agent trusts, ``<state>/command-keys.json``. Returns both paths."""
    from roost_shared.commands import ensure_site_keys

    keys_dir = state_dir / COMMAND_KEYS_DIR
    return keys_dir, ensure_site_keys(keys_dir, state_dir / COMMAND_TRUST_FILE)
