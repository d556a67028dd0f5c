"""Release archives for tests (``roost_shared.releases.pack`` over an author's directory).

:func:`release_dir` writes any release; :func:`release_source` one whose hooks are real shell
scripts recording the version on the host (``$ROOST_STATE_DIR/running-version``), which the
end-to-end tests read back; :func:`tampered` changes a file after signing.

:data:`SITE` is the test site's release signing key: the agents under test
(:class:`tests.support.agents.AgentUnderTest`) are provisioned with its public key, as a node is at
enrolment, so what :func:`signed` packs installs there and anything else is refused.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

from roost_shared.releases import build_archive, pack
from roost_shared.signing import Signer

#: The test site's release signing key (one per test session).
SITE = Signer.generate()

INSTALL = """for bad in {fail_on}; do
  if [ "$ROOST_HOSTNAME" = "$bad" ]; then echo "no space left on $ROOST_HOSTNAME" >&2; exit 1; fi
done
echo "$ROOST_RELEASE_VERSION" > "$ROOST_STATE_DIR/staged-version\""""
ACTIVATE = 'echo "$ROOST_RELEASE_VERSION" > "$ROOST_STATE_DIR/running-version"'
ROLLBACK = 'echo "${ROOST_PREVIOUS_VERSION:-base}" > "$ROOST_STATE_DIR/running-version"'


def release_dir(
    d: Path,
    release_id: str,
    version: str,
    *,
    files: dict[str, bytes] | None = None,
    hooks: dict[str, str] | None = None,
    **fields: Any,
) -> Path:
    """An author's directory ``d``: ``release.json`` plus ``files`` (hooks as executable
    scripts: ``hooks`` maps hook name → shell script body); ``fields`` go in the metadata."""
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
    """A packed archive from ``root/src-<id>`` (signed with the PEM ``key``, unsigned
    without)."""
    return pack(release_dir(root / f"src-{release_id}", release_id, version, **kw), key)


def release_source(
    directory: Path,
    release_id: str,
    version: str,
    *,
    requires: tuple[str, ...] = (),
    reboot: bool = False,
    applies_to: tuple[str, ...] = ("controller", "worker"),
    fail_on: tuple[str, ...] = (),
    payload: bytes = b"new software\n",
) -> Path:
    """A release whose hooks record the version on the host; its install fails on the hosts
    named in ``fail_on``."""
    return release_dir(
        directory,
        release_id,
        version,
        files={"payload.bin": payload},
        hooks={
            "install": INSTALL.format(fail_on=" ".join(fail_on) or "-"),
            "activate": ACTIVATE,
            "rollback": ROLLBACK,
        },
        summary=f"test release {version}",
        requires=list(requires),
        reboot_required=reboot,
        applies_to=list(applies_to),
    )


def release_archive(directory: Path, *args: Any, key: str | None = None, **kwargs: Any) -> bytes:
    """:func:`release_source` packed (signed with ``key``, a PEM private key, if given)."""
    return pack(release_source(directory, *args, **kwargs), key)


def signed(source: Path, key: Signer = SITE) -> bytes:
    """An author's directory packed and signed with ``key`` (the test site's by default)."""
    return pack(source, key.pem())


def write_keys(path: Path, *keys: Signer) -> Path:
    """A release keys file (``release-keys.pub`` format) of ``keys`` (the site's by default)."""
    lines = [f"{k.public_key}\n" for k in keys or (SITE,)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# the test site's release signing keys\n" + "".join(lines))
    return path


def pack_file(
    out: Path,
    release_id: str,
    version: str,
    files: dict[str, Path],
    *,
    hooks: dict[str, str] | None = None,
    key: Signer | None = SITE,
    compresslevel: int = 1,
) -> Path:
    """A release archive written to ``out`` without holding its files in memory (a large
    release): ``files`` maps names to files on disk, ``hooks`` hook names to shell script
    bodies; signed with ``key`` (unsigned with None)."""
    import base64
    import hashlib

    from roost_shared.releases import METADATA, SIGNATURE, ReleaseMetadata

    scripts = {f"hooks/{h}": f"#!/bin/sh\n{body}\n".encode() for h, body in (hooks or {}).items()}
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in scripts.items()}
    for name, path in files.items():
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        digests[name] = digest.hexdigest()
    meta = ReleaseMetadata(
        id=release_id,
        version=version,
        hooks={h: f"hooks/{h}" for h in hooks or {}},
        files=digests,
    )
    metadata = meta.model_dump_json(indent=2).encode()

    def add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), mode
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(out, mode="w:gz", compresslevel=compresslevel) as tar:
        add(tar, METADATA, metadata)
        for name, data in scripts.items():
            add(tar, name, data, 0o755)
        for name, path in files.items():
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with path.open("rb") as f:
                tar.addfile(info, f)
        if key is not None:
            add(tar, SIGNATURE, base64.b64encode(key.sign(metadata)))
    return out


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
