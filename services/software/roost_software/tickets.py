"""Download tickets: HMAC-SHA256 over a release id and an expiry, with one key per site.

An agent downloads from whichever replica the Service sends it to, so a ticket issued by one
replica must check on every other: the key lives in the service's database (collection
``software_secrets``, ``_id: "download-ticket-key"``), made once by the first replica that
starts. A key file from a single-replica version (``<state_dir>/software-download.key``) becomes
that key, so tickets already handed out keep working across the upgrade. Anyone who can read the
database can forge a ticket, and could read the archives there anyway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from bson import Binary
from pymongo.errors import DuplicateKeyError

from roost_shared.db import Database

SECRETS = "software_secrets"
TICKET_KEY_ID = "download-ticket-key"


def ticket_key(path: Path) -> bytes:
    """The key in the file ``path`` (the single-replica layout), made (mode 0600) if absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(os.urandom(32)).decode())
    return base64.b64decode(path.read_text().strip())


async def shared_ticket_key(db: Database, legacy: Path) -> bytes:
    """The site's ticket key from the database; the first replica to ask stores it (the key of
    the ``legacy`` file if there is one, else a new random one) and every other reads that."""
    secrets = db[SECRETS]
    doc = await secrets.find_one({"_id": TICKET_KEY_ID})
    if doc is None:
        key = _legacy_key(legacy) or os.urandom(32)
        try:
            await secrets.insert_one({"_id": TICKET_KEY_ID, "key": Binary(key)})
        except DuplicateKeyError:
            pass  # another replica stored its key first: that one is the site's
        doc = await secrets.find_one({"_id": TICKET_KEY_ID})
        if doc is None:
            raise RuntimeError("the download ticket key could not be stored")
    return bytes(doc["key"])


def _legacy_key(path: Path) -> bytes | None:
    """The key of a single-replica version's file, if there is one."""
    try:
        return base64.b64decode(path.read_text().strip())
    except (OSError, ValueError):
        return None


def sign_ticket(key: bytes, release_id: str, expires: int) -> str:
    """HMAC-SHA256 over the release id and the expiry (unix seconds), URL-safe base64."""
    mac = hmac.new(key, f"{release_id}\n{expires}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")
