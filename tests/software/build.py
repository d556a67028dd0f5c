"""Building release archives in tests (``roost_shared.releases.pack`` over a directory)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

from roost_shared.releases import build_archive, pack


def release_dir(
    root: Path,
    release_id: str,
    version: str,
    *,
    files: dict[str, bytes] | None = None,
    hooks: dict[str, str] | None = None,
    **fields: Any,
) -> Path:
    """An author's directory: ``release.json`` plus ``files`` (hooks as executable scripts:
    ``hooks`` maps hook name → shell script body)."""
    d = root / f"src-{release_id}"
    d.mkdir(parents=True)
    for name, data in (files or {"payload/readme.txt": f"{release_id}\n".encode()}).items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
    hook_paths = {}
    for hook, body in (hooks or {}).items():
        path = d / "hooks" / hook
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
        hook_paths[hook] = f"hooks/{hook}"
    meta = {"id": release_id, "version": version, "summary": f"test {release_id}", **fields}
    if hook_paths:
        meta["hooks"] = hook_paths
    (d / "release.json").write_text(json.dumps(meta))
    return d


def build(root: Path, release_id: str, version: str, key: str | None, **kw: Any) -> bytes:
    """A packed archive (signed with the PEM ``key``, unsigned without)."""
    return pack(release_dir(root, release_id, version, **kw), key)


def members(archive: bytes) -> dict[str, bytes]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for info in tar:
            f = tar.extractfile(info)
            assert f is not None
            out[info.name] = f.read()
    return out


def tampered(archive: bytes, name: str, data: bytes) -> bytes:
    """The same archive (same signed metadata) with one file changed after packing."""
    changed = members(archive)
    assert name in changed
    changed[name] = data
    return build_archive(changed)
