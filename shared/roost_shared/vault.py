"""Encryption at rest for BMC passwords (Fernet: AES-128-CBC with HMAC-SHA256, from
``cryptography``), shared by the config service (which encrypts) and the host service (which
decrypts in memory when it calls a BMC).

The key comes from ``ROOST_SECRET_KEY`` or, when that is unset, from
``<state dir>/config-secret.key``, generated on first start and readable by the owner only
(0600). Config and host starting together in one state directory must end up with the same
key, so the file appears atomically: whoever writes it first wins and the other reads it. A
stolen database without the key yields only ciphertext; back the key file up with the database.

``cryptography`` is imported here but declared by the services that use the vault (config and
host), so the others' images do not carry it.
"""

from __future__ import annotations

import logging
import os
import tempfile
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
        """The vault of ``ROOST_SECRET_KEY`` if set, else of the state directory's key file."""
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
        """Fernet ciphertext (text) of ``plain``."""
        return self._fernet.encrypt(plain.encode()).decode()

    def decrypt(self, token: str) -> str:
        """The plain text of ``token``; ValueError if this key did not make it."""
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ValueError("secret cannot be decrypted with this key") from None


def load_or_create_key(path: Path) -> bytes:
    """Read the key file, creating it (0600) on first use.

    The key is written to a temporary file in the same directory and then hard-linked to its
    name: ``link`` fails if the name exists, so exactly one process creates it, and no reader
    can see a half-written file (an ``O_EXCL`` create followed by a write could be read empty).
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".key-", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(Fernet.generate_key())
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:  # another process (config or host, or a replica) won
                pass
            else:
                log.info("generated the secret key file %s (back it up with the database)", path)
        finally:
            os.unlink(tmp)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("secret key file %s is readable by others (mode %o); tightening", path, mode)
        path.chmod(0o600)
    return path.read_bytes().strip()
