"""Ed25519 keys and signatures: commands to agents and software releases.

PyNaCl (libsodium) rather than ``cryptography``: it costs an agent ~1.3 MB of memory against
~11 MB for cryptography's bindings (measured on this machine), and the agent's idle budget is
40 MB; it also verifies faster (~11,000 signatures/s a core against ~6,800).

Keys on disk are interchangeable with the ones ``cryptography`` and OpenSSL write: a private
key is a PKCS#8 PEM (``openssl genpkey -algorithm ed25519``, ``roost software pack --key``),
a public key is the base64 of its 32 raw bytes (as the software service's release keys are).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterable
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

#: DER prefix of an unencrypted PKCS#8 Ed25519 private key (RFC 8410); the 32-byte seed follows.
_PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
_PEM_HEADER = "-----BEGIN PRIVATE KEY-----"
_PEM_FOOTER = "-----END PRIVATE KEY-----"


class BadKey(ValueError):
    """A key file or key text that is not an Ed25519 key of the expected form."""


def _seed_of_pem(pem: str) -> bytes:
    """The seed of a PEM key, or of its base64 body alone (one line: what fits an environment
    variable or a docker-compose .env file)."""
    text = pem.strip()
    if text.startswith(_PEM_HEADER) and text.endswith(_PEM_FOOTER):
        text = text[len(_PEM_HEADER) : -len(_PEM_FOOTER)]
    elif text.startswith("-----"):
        raise BadKey("not a PEM private key (BEGIN PRIVATE KEY)")
    body = "".join(text.split())
    try:
        der = base64.b64decode(body, validate=True)
    except binascii.Error:
        raise BadKey("the PEM body is not base64") from None
    if len(der) != len(_PKCS8_PREFIX) + 32 or not der.startswith(_PKCS8_PREFIX):
        raise BadKey("not an unencrypted Ed25519 PKCS#8 key")
    return der[len(_PKCS8_PREFIX) :]


def _pem_of_seed(seed: bytes) -> str:
    body = base64.b64encode(_PKCS8_PREFIX + seed).decode()
    return f"{_PEM_HEADER}\n{body}\n{_PEM_FOOTER}\n"


class Signer:
    """An Ed25519 private key."""

    def __init__(self, key: SigningKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> Signer:
        return cls(SigningKey.generate())

    @classmethod
    def from_pem(cls, pem: str) -> Signer:
        return cls(SigningKey(_seed_of_pem(pem)))

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        try:
            return cls.from_pem(path.read_text())
        except BadKey as exc:
            raise BadKey(f"{path}: {exc}") from None

    def pem(self) -> str:
        return _pem_of_seed(bytes(self._key))

    def one_line(self) -> str:
        """The PEM's base64 body alone, which :meth:`from_pem` also reads."""
        return self.pem().splitlines()[1]

    def write(self, path: Path) -> None:
        """Write the private key, readable by its owner only (never world-readable, even for a
        moment: the file is created with mode 0600)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.pem())

    @property
    def public_key(self) -> str:
        """base64 of the 32 raw bytes of the public key."""
        return base64.b64encode(bytes(self._key.verify_key)).decode()

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message).signature

    def __repr__(self) -> str:  # never the key itself, in a log or a traceback
        return f"Signer(public_key={self.public_key!r})"


def verify_key(public_key: str) -> VerifyKey:
    """A public key from its base64 form; :class:`BadKey` if it is not 32 bytes of base64."""
    try:
        raw = base64.b64decode(public_key.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BadKey("a public key is the base64 of 32 bytes") from None
    if len(raw) != 32:
        raise BadKey(f"a public key is 32 bytes, this one is {len(raw)}")
    return VerifyKey(raw)


def verifies(key: VerifyKey, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``key``'s signature of ``message``."""
    try:
        key.verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def signed_by(public_keys: Iterable[str], message: bytes, signature: bytes) -> str | None:
    """The one of ``public_keys`` (base64) whose signature ``signature`` is, else None."""
    for encoded in public_keys:
        if verifies(verify_key(encoded), message, signature):
            return encoded
    return None


def read_public_keys(path: Path) -> list[str]:
    """Public keys from a file: one base64 key a line; blank lines and ``#`` comments skipped.
    Each is checked, so a corrupt file fails at start, not at the first verification."""
    keys = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            verify_key(text)
        except BadKey as exc:
            raise BadKey(f"{path}:{number}: {exc}") from None
        keys.append(text)
    return keys
