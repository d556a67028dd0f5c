"""Uploaded releases: their metadata (collection ``releases``), archives and download tickets.

An upload is checked in full before anything is stored (:func:`roost_shared.releases.read_archive`:
readable archive, valid metadata, every file's digest, nothing unlisted, hooks present; then the
signature against the site's keys, every ``requires`` uploaded, no duplicate id). The metadata
goes to MongoDB, the archive bytes to ``<state_dir>/releases/<id>.tar.gz``.

Storage note: the archives live on this process's disk, and the download-ticket key in
``<state_dir>/software-download.key``. Several replicas of the software service need both on
shared storage (a shared volume, or the archives in GridFS and the key in a secret), or an agent
may be sent to a replica that does not hold the archive.

Release states: ``available`` → ``deploying`` → ``deployed``; ``removing`` while a host rolls
back; ``unavailable`` for a version at or below the deployed one (computed at upload, and set on
the others when a release becomes deployed).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import time
import uuid
from pathlib import Path
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from roost_shared.catalog import SoftwareReleaseChanged
from roost_shared.db import Database, Session
from roost_shared.events import Envelope, utcnow_ms
from roost_shared.outbox import Outbox
from roost_shared.paging import SortSpec, page
from roost_shared.problems import Conflict, NotFound, RoostError
from roost_shared.releases import ReleaseError, read_archive, verify_signature, version_key
from roost_software.settings import SoftwareSettings

SOURCE = "roost/software"
RELEASES = "releases"
RELEASE_SORT: SortSpec = [("version_sort", 1), ("id", 1), ("uuid", 1)]

INDEXES: dict[str, list[IndexModel]] = {
    RELEASES: [
        IndexModel([("id", ASCENDING)], unique=True),
        IndexModel([("uuid", ASCENDING)], unique=True),
        IndexModel([(f, ASCENDING) for f, _ in RELEASE_SORT]),
        IndexModel([("requires", ASCENDING)]),
        IndexModel([("state", ASCENDING)]),
    ],
}


class ReleaseRefused(RoostError):
    """An archive that is not an acceptable release (422, naming the field)."""

    status = 422
    msg_fmt = "{field_name}: {reason}"


class TooLarge(RoostError):
    status = 413
    msg_fmt = "the release archive is larger than {limit} bytes"


def version_sort(version: str) -> str:
    """A string that sorts like the version (``1.2.10`` → ``000001.000002.000010.000000``)."""
    return ".".join(f"{p:06d}" for p in version_key(version))


def ticket_key(path: Path) -> bytes:
    """The key download tickets are signed with: ``path``'s, made (mode 0600) if absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(os.urandom(32)).decode())
    return base64.b64decode(path.read_text().strip())


def sign_ticket(key: bytes, release_id: str, expires: int) -> str:
    """HMAC-SHA256 over the release id and the expiry (unix seconds), URL-safe base64."""
    mac = hmac.new(key, f"{release_id}\n{expires}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def refused(field: str, reason: str) -> ReleaseRefused:
    return ReleaseRefused(f"{field}: {reason}", field=field)


class ReleaseStore:
    """Releases: upload, read, delete, state changes, archives and download tickets."""

    def __init__(self, db: Database, outbox: Outbox, settings: SoftwareSettings) -> None:
        self.db = db
        self.releases = db[RELEASES]
        self.outbox = outbox
        self.settings = settings
        self.dir = Path(settings.state_dir) / "releases"
        self._key: bytes | None = None

    # Keys ------------------------------------------------------------------------------------

    def public_keys(self) -> list[str]:
        """The site's accepted signing keys: settings plus the keys file (read at each upload,
        so a key added to the file is accepted without a restart)."""
        keys = [k.strip() for k in self.settings.release_public_keys if k.strip()]
        path = self.settings.release_keys_file
        if path is None:
            default = Path(self.settings.state_dir) / "release-keys.pub"
            path = default if default.exists() else None
        if path is not None:
            try:
                text = path.read_text()
            except OSError as exc:
                raise RoostError(f"cannot read the release keys file {path}: {exc}") from None
            for line in text.splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    keys.append(line)
        valid = []
        for k in keys:
            try:
                if len(base64.b64decode(k, validate=True)) == 32:
                    valid.append(k)
            except ValueError:
                continue
        return valid

    # Upload ----------------------------------------------------------------------------------

    def spool_path(self) -> Path:
        """A fresh temporary file in the releases directory an upload streams into."""
        self.dir.mkdir(parents=True, exist_ok=True)
        return self.dir / f".upload.{uuid.uuid4().hex}.part"

    async def upload_spooled(self, spooled: Path) -> dict[str, Any]:
        """:meth:`upload` of an archive already streamed to ``spooled`` (from
        :meth:`spool_path`): the file becomes the stored archive, or is removed."""
        try:
            data = await asyncio.to_thread(spooled.read_bytes)
            return await self.upload(data, spooled=spooled)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spooled)

    async def upload(self, data: bytes, *, spooled: Path | None = None) -> dict[str, Any]:
        """Check an archive in full and store it; the stored release. Nothing is stored when
        any check fails (422/409 naming the field; 413 for an archive over the cap).
        ``spooled``: the archive's bytes are already in that file (moved, not written again)."""
        if len(data) > self.settings.max_release_bytes:
            raise TooLarge(limit=self.settings.max_release_bytes)
        try:
            release = read_archive(data)
        except ReleaseError as exc:
            raise refused(exc.field, exc.reason) from None
        signed_by: str | None = None
        if release.signature is None:
            if not self.settings.allow_unsigned_releases:
                raise refused(
                    "signature",
                    "the release is unsigned (no metadata.sig) and this site accepts signed "
                    "releases only",
                )
        else:
            keys = self.public_keys()
            if keys:
                try:
                    signed_by = verify_signature(release, keys)
                except ReleaseError as exc:
                    raise refused(exc.field, exc.reason) from None
            elif not self.settings.allow_unsigned_releases:
                raise refused(
                    "signature",
                    "this site has no release signing keys (ROOST_RELEASE_PUBLIC_KEYS or "
                    "<state_dir>/release-keys.pub)",
                )
            # else: a lab without keys takes a signed release as an unsigned one (signed_by
            # None); with keys, a signature none of them verifies is refused even there.
        meta = release.metadata
        for i, required in enumerate(meta.requires):
            if await self.releases.find_one({"id": required}, {"_id": 1}) is None:
                raise refused(
                    f"metadata.requires.{i}",
                    f"missing dependency: release {required} is not uploaded",
                )
        if await self.find(meta.id) is not None:
            raise Conflict(
                kind="Release", id=meta.id, reason="a release with this id exists", field="id"
            )
        deployed = await self.deployed()
        state = "available"
        if deployed is not None and version_key(meta.version) <= version_key(deployed["version"]):
            state = "unavailable"
        now = utcnow_ms()
        doc = {
            "id": meta.id,
            "uuid": str(uuid.uuid4()),
            "version": meta.version,
            "version_sort": version_sort(meta.version),
            "summary": meta.summary,
            "description": meta.description,
            "requires": list(meta.requires),
            "reboot_required": meta.reboot_required,
            "applies_to": list(meta.applies_to),
            "hooks": meta.hooks.model_dump(),
            "files": dict(meta.files),
            "archive_sha256": release.archive_sha256,
            "size": release.size,
            "signed_by": signed_by,
            "state": state,
            "uploaded_at": now,
            "updated_at": now,
            "deployed_at": None,
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{meta.id}.{uuid.uuid4().hex}.part"
        if spooled is not None:
            os.replace(spooled, tmp)
        else:
            tmp.write_bytes(data)

        async def work(session: Session) -> None:
            await self.releases.insert_one(dict(doc), session=session)
            await self._event(session, doc)

        try:
            await self.db.in_transaction(work)
        except DuplicateKeyError:
            tmp.unlink(missing_ok=True)
            raise Conflict(
                kind="Release", id=meta.id, reason="a release with this id exists", field="id"
            ) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(self.archive_path(meta.id))
        self.outbox.wake()
        return doc

    # Reads -----------------------------------------------------------------------------------

    async def find(self, release_id: str, session: Session | None = None) -> dict[str, Any] | None:
        return await self.releases.find_one({"id": release_id}, session=session)

    async def get(self, release_id: str, session: Session | None = None) -> dict[str, Any]:
        doc = await self.find(release_id, session)
        if doc is None:
            raise NotFound(kind="Release", id=release_id, field="path.id")
        return doc

    async def list(self, marker: str | None, limit: int) -> list[dict[str, Any]]:
        """Releases by version (then id); ``marker`` is a release's uuid."""
        return await page(
            self.releases, {}, RELEASE_SORT, marker=marker, limit=limit, what="release"
        )

    async def deployed(self, session: Session | None = None) -> dict[str, Any] | None:
        """The release the whole site runs (the last one whose deployment finished)."""
        return await self.releases.find_one({"state": "deployed"}, session=session)

    # Changes ---------------------------------------------------------------------------------

    async def delete(self, release_id: str) -> None:
        """Remove a release and its archive: refused (409) while deploying, deployed or rolling
        back, or while another release requires it."""
        doc = await self.get(release_id)
        if doc["state"] in ("deploying", "deployed", "removing"):
            raise Conflict(
                kind="Release", id=release_id, reason=f"it is {doc['state']}", field="path.id"
            )
        dependent = await self.releases.find_one({"requires": release_id}, {"id": 1})
        if dependent is not None:
            raise Conflict(
                kind="Release",
                id=release_id,
                reason=f"release {dependent['id']} requires it",
                field="path.id",
            )

        async def work(session: Session) -> None:
            gone = await self.releases.find_one_and_delete(
                {"id": release_id, "state": {"$nin": ["deploying", "deployed", "removing"]}},
                session=session,
            )
            if gone is None:
                raise Conflict(
                    kind="Release", id=release_id, reason="its state changed", field="path.id"
                )
            await self._event(session, {**gone, "state": "deleted"})

        await self.db.in_transaction(work)
        self.outbox.wake()
        with contextlib.suppress(OSError):
            self.archive_path(release_id).unlink(missing_ok=True)

    async def set_state(self, session: Session, release_id: str, state: str) -> dict[str, Any]:
        """Move a release to ``state`` in the caller's transaction (with its event); becoming
        ``deployed`` also records when, and makes every other release at or below its version
        (the previously deployed one included) ``unavailable``."""
        doc = await self.get(release_id, session)
        now = utcnow_ms()
        if doc["state"] == state:
            return doc
        change: dict[str, Any] = {"state": state, "updated_at": now}
        if state == "deployed":
            change["deployed_at"] = now
        await self.releases.update_one({"id": release_id}, {"$set": change}, session=session)
        doc = {**doc, **change}
        await self._event(session, doc)
        if state == "deployed":
            async for other in self.releases.find(
                {
                    "id": {"$ne": release_id},
                    "state": {"$in": ["available", "deployed"]},
                    "version_sort": {"$lte": doc["version_sort"]},
                },
                session=session,
            ):
                await self.releases.update_one(
                    {"id": other["id"]},
                    {"$set": {"state": "unavailable", "updated_at": now}},
                    session=session,
                )
                await self._event(session, {**other, "state": "unavailable"})
        return doc

    async def _event(self, session: Session, doc: dict[str, Any]) -> None:
        payload = SoftwareReleaseChanged(id=doc["id"], version=doc["version"], state=doc["state"])
        env = Envelope.of(payload, source=SOURCE, subject=f"release={doc['id']}")
        await self.outbox.add(session, [env])

    # Archives and download tickets -----------------------------------------------------------

    def archive_path(self, release_id: str) -> Path:
        return self.dir / f"{release_id}.tar.gz"

    def _ticket_key(self) -> bytes:
        if self._key is None:
            self._key = ticket_key(Path(self.settings.state_dir) / "software-download.key")
        return self._key

    def _sign(self, release_id: str, expires: int) -> str:
        return sign_ticket(self._ticket_key(), release_id, expires)

    def ticket(self, release_id: str) -> str:
        """``<expiry>.<hmac>``: lets its holder download this release until the expiry."""
        expires = int(time.time() + self.settings.download_ticket_s)
        return f"{expires}.{self._sign(release_id, expires)}"

    def check_ticket(self, release_id: str, ticket: str) -> bool:
        expires_text, _, mac = ticket.partition(".")
        try:
            expires = int(expires_text)
        except ValueError:
            return False
        if expires < time.time():
            return False
        return hmac.compare_digest(mac, self._sign(release_id, expires))

    def base_url(self) -> str:
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        host = self.settings.bind_host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "[::1]"
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.settings.port}"

    def download_url(self, release_id: str) -> str:
        """Where an agent GETs the archive, with a ticket valid ``download_ticket_s``."""
        return (
            f"{self.base_url()}/v1/releases/{release_id}/archive?ticket={self.ticket(release_id)}"
        )
