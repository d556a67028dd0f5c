"""Per-host keys of heartbeats and the service link, derived from one site secret.

The site secret (32 random bytes, hex in a file: ``ROOST_HEARTBEAT_SECRET_FILE``) is held by the
services that receive heartbeats and hellos (host, service). Each agent holds only its own
**host key**, ``HMAC-SHA256(site_secret, "roost-heartbeat" + MAC bytes)``, provisioned when the
host is enrolled: a compromised host learns its own key and can speak for itself only. The
service link uses a key of its own derived from the host key (``link_key``), so one datagram
format's signature can never be replayed as the other's.

Provisioning a real node (run where the site secret is)::

    python -m roost_shared.hostkeys new-secret /etc/roost/heartbeat-secret.key
    python -m roost_shared.hostkeys derive 02:00:00:00:00:01 \\
        --secret-file /etc/roost/heartbeat-secret.key > heartbeat.key   # to the node, mode 0600

The agent reads ``<ROOST_STATE_DIR>/heartbeat.key`` (or ``ROOST_HEARTBEAT_KEY_FILE``);
``python -m roost_agent.hostkey`` writes it on the node itself where the site secret is handed
to an enrolment step there (the Kubernetes DaemonSet's init container).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import secrets
import sys
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr

HEARTBEAT_LABEL = b"roost-heartbeat"
LINK_LABEL = b"roost-sm-link"
SECRET_BYTES = 32
#: Where an agent finds its host key by default (in its state directory).
HOST_KEY_FILE = "heartbeat.key"


class KeyFileError(RuntimeError):
    """A key or secret file that is missing, unreadable or not 32+ bytes of hex."""


class SiteSecretSettings(BaseModel):
    """The receiving services' half (mixed into their ``RoostSettings``)."""

    heartbeat_secret_file: Path | None = Field(
        None,
        description="File with the site secret (hex) every host's heartbeat and service-link "
        "key is derived from. This or heartbeat_secret is required unless heartbeat_insecure.",
    )
    heartbeat_secret: SecretStr | None = Field(
        None,
        description="The site secret itself (hex), for deployments that hand secrets over in "
        "the environment (docker-compose, a Kubernetes Secret); wins over the file.",
    )
    heartbeat_insecure: bool = Field(
        False,
        description="Run without a site secret: heartbeats and hellos are accepted unsigned "
        "(anyone on the management network can keep a dead host alive). Never in production.",
    )


def mac_bytes(mac: str) -> bytes:
    """``"02:00:00:00:00:01"`` → its 6 bytes."""
    raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return raw


def host_key(site_secret: bytes, mac: str | bytes) -> bytes:
    """The host key of the host with this management MAC (6 bytes or text)."""
    raw = mac if isinstance(mac, bytes) else mac_bytes(mac)
    return hmac.digest(site_secret, HEARTBEAT_LABEL + raw, hashlib.sha256)


def link_key(key: bytes) -> bytes:
    """The service-link key of a host, from its host key."""
    return hmac.digest(key, LINK_LABEL, hashlib.sha256)


def read_key(path: Path) -> bytes:
    """A secret or key file's bytes (hex text, surrounding whitespace ignored)."""
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    return parse_key(text, str(path))


def parse_key(text: str, where: str) -> bytes:
    """32 or more bytes from their hex (``where`` names the source in the error)."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise KeyFileError(f"{where} is not hex") from None
    if len(key) < SECRET_BYTES:
        raise KeyFileError(f"{where} holds {len(key)} bytes; at least {SECRET_BYTES} are needed")
    return key


def write_key(path: Path, key: bytes) -> None:
    """Write ``key`` as hex, readable by the owner only; never replaces an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")


def install_key(path: Path, key: bytes) -> Path:
    """Put ``key`` (hex, mode 0600) in ``path`` unless it is there already; replaces another."""
    text = key.hex() + "\n"
    try:
        if path.read_text() == text:
            return path
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def ensure_secret(path: Path) -> bytes:
    """The site secret in ``path``, made (random, mode 0600) if there is none yet."""
    if not path.exists():
        try:
            write_key(path, secrets.token_bytes(SECRET_BYTES))
        except FileExistsError:  # made by another process just now
            pass
    return read_key(path)


def site_secret(settings: SiteSecretSettings) -> bytes | None:
    """The configured site secret; None only with ``heartbeat_insecure``. Raises
    :class:`KeyFileError` (the service must not start) when it is neither configured nor
    explicitly waived."""
    if settings.heartbeat_secret is not None:
        return parse_key(settings.heartbeat_secret.get_secret_value(), "ROOST_HEARTBEAT_SECRET")
    if settings.heartbeat_secret_file is not None:
        return read_key(settings.heartbeat_secret_file)
    if settings.heartbeat_insecure:
        return None
    raise KeyFileError(
        "no site secret for heartbeats and the service link: set ROOST_HEARTBEAT_SECRET_FILE "
        "(python -m roost_shared.hostkeys new-secret FILE makes one), or ROOST_HEARTBEAT_INSECURE"
        "=true to accept unsigned heartbeats"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m roost_shared.hostkeys", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    new = sub.add_parser("new-secret", help="make a site secret file (mode 0600)")
    new.add_argument("file", type=Path)
    derive = sub.add_parser("derive", help="print a host's key (hex) for its agent")
    derive.add_argument("mac")
    derive.add_argument("--secret-file", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "new-secret":
            write_key(args.file, secrets.token_bytes(SECRET_BYTES))
            print(f"wrote a new site secret to {args.file}", file=sys.stderr)
            return 0
        print(host_key(read_key(args.secret_file), args.mac).hex())
        return 0
    except (KeyFileError, ValueError, FileExistsError) as exc:
        print(f"roost: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
