"""Encryption at rest for BMC passwords (Fernet: AES-128-CBC with HMAC-SHA256, from
``cryptography``).

The key comes from ``ROOST_SECRET_KEY`` or, when that is unset, from
``<state dir>/config-secret.key``, generated on first start and readable by the owner only
(0600). A stolen database without the key yields only ciphertext; back the key file up with the
database.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from pydantic import SecretStr

log = logging.getLogger(__name__)

KEY_FILE = "config-secret.key"


class Vault:
    """Encrypts and decrypts small secrets with one Fernet key."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def from_settings(cls, secret_key: SecretStr | None, state_dir: Path) -> Vault:
        if secret_key is not None and secret_key.get_secret_value():
            try:
                return cls(secret_key.get_secret_value().encode())
            except ValueError:
                raise SystemExit(
                    "ROOST_SECRET_KEY must be a Fernet key (32 url-safe base64 bytes); make one "
                    "with: python -c 'from cryptography.fernet import Fernet; "
                    "print(Fernet.generate_key().decode())'"
                ) from None
        return cls(load_or_create_key(state_dir / KEY_FILE))

    def encrypt(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ValueError("secret cannot be decrypted with this key") from None


def load_or_create_key(path: Path) -> bytes:
    """Read the key file, creating it (0600, atomically) on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another replica made it first
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(Fernet.generate_key())
            log.info("generated the secret key file %s (back it up with the database)", path)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("secret key file %s is readable by others (mode %o); tightening", path, mode)
        path.chmod(0o600)
    return path.read_bytes().strip()
