"""Release archives in the service's own database, in chunks: every replica serves every one.

Collection ``release_chunks``: ``{archive, n, data, at_ms}``, at most :data:`CHUNK_SIZE` bytes
of data each, unique on ``(archive, n)``. ``archive`` is an id made for each stored copy (not
the release's id): a release document names its copy in its ``archive`` field
(:meth:`ArchiveStore.put`'s answer), and chunks no release names are garbage.

Why not a shared volume: it would ask the cluster for a ReadWriteMany volume; the database is
already shared by every replica. Why not GridFS: the same layout, but our own keeps the
"chunks first, then the release document in a transaction" order and the garbage rule explicit.

* **Writes** go chunk by chunk, a few per round trip, *before* the release document is inserted:
  a crash mid-upload leaves chunks no release names, never a release without its bytes.
  :meth:`ArchiveStore.orphans` finds such leftovers once they are older than any upload can take.
* **Reads** stream a few chunks at a time (one download holds ~:data:`READ_BATCH` MB, not the
  archive), checking the order, the length and the sha256 on the way: a missing or changed chunk
  ends the response early (the client sees a short body: Content-Length is sent), never a
  quietly different archive.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

from bson import Binary
from pymongo import ASCENDING, IndexModel

from roost_shared.db import Database

log = logging.getLogger(__name__)

CHUNKS = "release_chunks"
#: Bytes per chunk document (well under MongoDB's 16 MB document limit).
CHUNK_SIZE = 1024 * 1024
#: Chunks per insert round trip (~8 MB per message).
WRITE_BATCH = 8
#: Chunks per read round trip: what one download holds in memory at most.
READ_BATCH = 4

INDEXES: dict[str, list[IndexModel]] = {
    CHUNKS: [
        IndexModel([("archive", ASCENDING), ("n", ASCENDING)], unique=True),
        IndexModel([("n", ASCENDING), ("at_ms", ASCENDING)]),
    ],
}


class ArchiveBroken(Exception):
    """A stored archive whose chunks do not add up to its recorded length and sha256."""


def slices(data: bytes | memoryview, size: int = CHUNK_SIZE) -> Iterable[bytes]:
    """``data`` in pieces of ``size`` bytes (the last one shorter)."""
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield bytes(view[start : start + size])


class ArchiveStore:
    """Chunked archive bytes in ``release_chunks``: put, stream, remove, find leftovers."""

    def __init__(self, db: Database) -> None:
        self.chunks = db[CHUNKS]

    async def put(self, pieces: Iterable[bytes]) -> dict[str, Any]:
        """Store ``pieces`` (each at most :data:`CHUNK_SIZE` bytes) as one new archive; its
        reference ``{id, chunks, chunk_size, size, sha256}``. On failure what was written is
        removed (best effort: a crash leaves it to :meth:`orphans`)."""
        archive = uuid.uuid4().hex
        digest = hashlib.sha256()
        size = n = 0
        batch: list[dict[str, Any]] = []
        try:
            for piece in pieces:
                if len(piece) > CHUNK_SIZE:
                    raise ValueError(f"a piece of {len(piece)} bytes is over {CHUNK_SIZE}")
                digest.update(piece)
                size += len(piece)
                batch.append({"archive": archive, "n": n, "data": Binary(piece), "at_ms": _ms()})
                n += 1
                if len(batch) >= WRITE_BATCH:
                    await self.chunks.insert_many(batch, ordered=True)
                    batch = []
            if batch:
                await self.chunks.insert_many(batch, ordered=True)
        except BaseException:
            await self.remove(archive)
            raise
        return {
            "id": archive,
            "chunks": n,
            "chunk_size": CHUNK_SIZE,
            "size": size,
            "sha256": digest.hexdigest(),
        }

    async def first(self, ref: dict[str, Any]) -> bytes | None:
        """The first chunk of an archive (b"" for an empty one); None when it is gone."""
        if int(ref["chunks"]) == 0:
            return b""
        doc = await self.chunks.find_one({"archive": ref["id"], "n": 0}, {"data": 1})
        return bytes(doc["data"]) if doc is not None else None

    async def stream(
        self, ref: dict[str, Any], sha256: str, first: bytes | None = None
    ) -> AsyncIterator[bytes]:
        """The archive's bytes, a few chunks per round trip; raises :class:`ArchiveBroken` (after
        what was good) when a chunk is missing or the bytes do not match ``sha256``. ``first``
        is chunk 0 when the caller already read it (:meth:`first`)."""
        total = int(ref["chunks"])
        digest = hashlib.sha256()
        expected = 0
        size = 0
        if first is not None and total > 0:
            digest.update(first)
            size += len(first)
            expected = 1
            yield first
        if expected < total:
            cursor = (
                self.chunks.find(
                    {"archive": ref["id"], "n": {"$gte": expected}}, {"data": 1, "n": 1}
                )
                .sort([("n", ASCENDING)])
                .batch_size(READ_BATCH)
            )
            try:
                async for doc in cursor:
                    if doc["n"] != expected:
                        break
                    data = bytes(doc["data"])
                    digest.update(data)
                    size += len(data)
                    expected += 1
                    yield data
                    if expected == total:
                        break
            finally:
                await cursor.close()
        if expected != total or size != int(ref["size"]) or digest.hexdigest() != sha256:
            log.error(
                "archive %s is broken: %d of %d chunks, %d bytes, sha256 %s",
                ref["id"],
                expected,
                total,
                size,
                "differs" if expected == total else "unchecked",
            )
            raise ArchiveBroken(f"archive {ref['id']}: chunk {expected} of {total} missing or bad")

    async def remove(self, archive: str) -> int:
        """Delete one archive's chunks; how many there were."""
        result = await self.chunks.delete_many({"archive": archive})
        return result.deleted_count

    async def older_than(self, cutoff_ms: int) -> list[str]:
        """Ids of archives whose first chunk was written before ``cutoff_ms`` (epoch ms)."""
        ids: list[str] = []
        async for doc in self.chunks.find({"n": 0, "at_ms": {"$lt": cutoff_ms}}, {"archive": 1}):
            ids.append(doc["archive"])
        return ids


def _ms() -> int:
    return int(time.time() * 1000)
