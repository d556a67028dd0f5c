"""The software release archive: one ``.tar.gz`` with signed metadata and its payload.

Layout of an archive::

    metadata.json   the release's description (:class:`ReleaseMetadata`), with the sha256 of
                    every other file in the archive
    metadata.sig    base64 Ed25519 signature of the exact bytes of metadata.json (optional
                    when the site allows unsigned releases)
    <anything>      payload and hooks, each listed in ``metadata.files``

One signature covers everything: it signs the metadata, and the metadata pins every file by its
sha256, so a changed byte anywhere is found (StarlingX signs its patch metadata the same way, with
the payload digests inside). The software service verifies on upload (signature against the
site's keys, digests, no unlisted or missing file); an agent verifies both again on what it
downloaded (:func:`unpack` streams the archive to disk, hashing every file as it is written, and
:func:`verify_signature` checks the metadata against the site's keys held on the node) before
running a hook.

An author writes a directory with ``release.yaml`` (or ``release.json``): every field of
:class:`ReleaseMetadata` but ``files``; :func:`pack` computes ``files``, signs and builds the
archive. ``python -m roost_shared.releases keygen|pack`` are the command-line forms (also
``roost software keygen|pack``).

Signing needs ``cryptography`` (declared by the software service and the CLI); verifying a
signature needs only PyNaCl (:mod:`roost_shared.signing`, what agents can afford), reading and
checking digests only the standard library.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

METADATA = "metadata.json"
SIGNATURE = "metadata.sig"
AUTHOR_FILES = ("release.yaml", "release.yml", "release.json")
RELEASE_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
VERSION_PATTERN = r"^\d+(\.\d+){0,3}$"
HOOKS = ("install", "activate", "rollback")
#: Largest archive accepted (the software service also caps the request body).
MAX_ARCHIVE_BYTES = 512 * 1024 * 1024
#: Largest total of the files once unpacked, and most files: a small archive must not unpack
#: into more memory than an edge host has (a "gzip bomb"). Judged from the tar headers before
#: any file is read.
MAX_UNPACKED_BYTES = 1024 * 1024 * 1024
MAX_FILES = 10_000
#: Largest metadata.json (or metadata.sig) read while streaming an archive (:func:`unpack`).
MAX_METADATA_BYTES = 4 * 1024 * 1024
#: Bytes copied at a time by :func:`unpack`.
CHUNK_BYTES = 256 * 1024


class ReleaseError(ValueError):
    """An archive that is not a valid release; ``field`` names what is wrong (for 422s)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def version_key(version: str) -> tuple[int, ...]:
    """``"1.2.10"`` → ``(1, 2, 10, 0)``: versions compare numerically, padded to four parts."""
    parts = tuple(int(p) for p in version.split("."))
    return parts + (0,) * (4 - len(parts))


class Hooks(BaseModel):
    """Paths (inside the archive) of the executables run on a host; each is optional."""

    model_config = ConfigDict(extra="forbid")
    install: str | None = Field(None, description="Stages the release (before any reboot).")
    activate: str | None = Field(
        None, description="Makes it the running software (after the reboot, if one is required)."
    )
    rollback: str | None = Field(None, description="Takes the host back to the previous release.")


class ReleaseMetadata(BaseModel):
    """What ``metadata.json`` says about a release."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    id: str = Field(pattern=RELEASE_ID_PATTERN, examples=["roost-1.1.0"])
    version: str = Field(pattern=VERSION_PATTERN, examples=["1.1.0"])
    summary: str = Field("", max_length=500)
    description: str = Field("", max_length=5000)
    requires: list[str] = Field(
        default_factory=list, description="Ids of releases that must be deployed first."
    )
    reboot_required: bool = False
    applies_to: list[str] = Field(
        default_factory=lambda: ["controller", "worker", "storage"],
        min_length=1,
        description="Personalities of the hosts it is for.",
    )
    hooks: Hooks = Field(default_factory=Hooks)
    files: dict[str, str] = Field(
        default_factory=dict, description="sha256 (hex) of every other file in the archive."
    )

    @field_validator("applies_to")
    @classmethod
    def _personalities(cls, value: list[str]) -> list[str]:
        known = {"controller", "worker", "storage"}
        for p in value:
            if p not in known:
                raise ValueError(f"unknown personality {p!r}: expected one of {sorted(known)}")
        return sorted(set(value))

    @field_validator("requires")
    @classmethod
    def _requires(cls, value: list[str]) -> list[str]:
        for r in value:
            if not re.fullmatch(RELEASE_ID_PATTERN, r):
                raise ValueError(f"{r!r} is not a release id")
        return value

    @field_validator("files")
    @classmethod
    def _files(cls, value: dict[str, str]) -> dict[str, str]:
        for name, digest in value.items():
            _check_member_name(name)
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"{name}: expected a sha256 in hex, got {digest!r}")
        return value

    @property
    def key(self) -> tuple[int, ...]:
        return version_key(self.version)


def _metadata_error(exc: ValidationError) -> ReleaseError:
    """The first problem of invalid metadata, named by its field (``metadata.version``)."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return ReleaseError(f"metadata.{where}" if where else "metadata", err["msg"])


def _check_member_name(name: str) -> None:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or name in (METADATA, SIGNATURE) or not name:
        raise ValueError(f"{name!r} is not a payload path (relative, no '..')")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Release(BaseModel):
    """An archive read into memory: its metadata, the signed bytes, signature and files."""

    metadata: ReleaseMetadata
    metadata_bytes: bytes
    signature: bytes | None
    files: dict[str, bytes]
    archive_sha256: str
    size: int


def read_archive(data: bytes) -> Release:
    """Open an archive and check it is well formed: metadata valid, every file present with
    its digest, nothing unlisted, hooks among the files. Does not check the signature
    (:func:`verify_signature`). Raises :class:`ReleaseError` naming what is wrong."""
    if len(data) > MAX_ARCHIVE_BYTES:
        raise ReleaseError("archive", f"larger than {MAX_ARCHIVE_BYTES} bytes")
    try:
        members = _members(data)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ReleaseError("archive", f"not a readable .tar.gz: {exc}") from None
    raw = members.pop(METADATA, None)
    if raw is None:
        raise ReleaseError("archive", f"no {METADATA} in the archive")
    try:
        metadata = ReleaseMetadata.model_validate_json(raw)
    except ValidationError as exc:
        raise _metadata_error(exc) from None
    signature = _signature(members.pop(SIGNATURE, None))
    check_contents(metadata, {name: sha256(data) for name, data in members.items()})
    return Release(
        metadata=metadata,
        metadata_bytes=raw,
        signature=signature,
        files=members,
        archive_sha256=sha256(data),
        size=len(data),
    )


def _signature(sig: bytes | None) -> bytes | None:
    if sig is None:
        return None
    try:
        return base64.b64decode(sig.strip(), validate=True)
    except ValueError:
        raise ReleaseError("signature", "metadata.sig is not base64") from None


def check_contents(metadata: ReleaseMetadata, digests: dict[str, str]) -> None:
    """The files of an archive (name → sha256 of its bytes) are exactly those the metadata
    lists, with its digests, and its hooks are among them. Raises :class:`ReleaseError`."""
    for name, digest in metadata.files.items():
        if name not in digests:
            raise ReleaseError(f"files.{name}", "listed in the metadata but not in the archive")
        if digests[name] != digest:
            raise ReleaseError(f"files.{name}", "sha256 does not match the metadata (tampered?)")
    for name in digests:
        if name not in metadata.files:
            raise ReleaseError(f"files.{name}", "in the archive but not listed in the metadata")
    for hook in HOOKS:
        path = getattr(metadata.hooks, hook)
        if path is not None and path not in metadata.files:
            raise ReleaseError(f"metadata.hooks.{hook}", f"{path!r} is not a file of the release")


def _members(data: bytes) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    unpacked = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for info in tar:
            if info.isdir():
                continue
            name = info.name.removeprefix("./")
            if not info.isfile():
                raise ReleaseError(f"files.{name}", "only regular files are allowed")
            try:
                _check_member_name(name)
            except ValueError as exc:
                if name not in (METADATA, SIGNATURE):
                    raise ReleaseError(f"files.{name}", str(exc)) from None
            if name in members:
                raise ReleaseError(f"files.{name}", "appears twice in the archive")
            unpacked += info.size
            if unpacked > MAX_UNPACKED_BYTES:
                raise ReleaseError("archive", f"unpacks to more than {MAX_UNPACKED_BYTES} bytes")
            if len(members) >= MAX_FILES:
                raise ReleaseError("archive", f"more than {MAX_FILES} files")
            extracted = tar.extractfile(info)
            assert extracted is not None
            members[name] = extracted.read()
    return members


class Unpacked(BaseModel):
    """An archive streamed to a directory (:func:`unpack`): what was written, never in memory."""

    metadata: ReleaseMetadata
    metadata_bytes: bytes
    signature: bytes | None
    #: sha256 of every file as written, by name (equal to ``metadata.files``).
    files: dict[str, str]
    #: Permission bits of every file in the archive, by name.
    modes: dict[str, int]


def unpack(archive: Path, dest: Path) -> Unpacked:
    """Stream the ``.tar.gz`` at ``archive`` into the new directory ``dest``, one pass and
    :data:`CHUNK_BYTES` at a time, hashing every file as it is written; then check it as
    :func:`read_archive` does (metadata valid, every file with its digest, nothing unlisted,
    hooks among the files). Does not check the signature (:func:`verify_signature` on the
    result). Files are written mode 0600; ``dest`` is left as it is when this raises
    :class:`ReleaseError` (the caller removes it)."""
    dest.mkdir(parents=True)
    specials: dict[str, bytes] = {}
    digests: dict[str, str] = {}
    modes: dict[str, int] = {}
    unpacked = 0
    try:
        with archive.open("rb") as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
            for info in tar:
                if info.isdir():
                    continue
                name = info.name.removeprefix("./")
                if not info.isfile():
                    raise ReleaseError(f"files.{name}", "only regular files are allowed")
                if name in specials or name in digests:
                    raise ReleaseError(f"files.{name}", "appears twice in the archive")
                unpacked += info.size
                if unpacked > MAX_UNPACKED_BYTES:
                    raise ReleaseError(
                        "archive", f"unpacks to more than {MAX_UNPACKED_BYTES} bytes"
                    )
                if len(digests) + len(specials) >= MAX_FILES:
                    raise ReleaseError("archive", f"more than {MAX_FILES} files")
                source = tar.extractfile(info)
                assert source is not None
                if name in (METADATA, SIGNATURE):
                    if info.size > MAX_METADATA_BYTES:
                        raise ReleaseError(name, f"larger than {MAX_METADATA_BYTES} bytes")
                    specials[name] = source.read()
                    continue
                try:
                    _check_member_name(name)
                except ValueError as exc:
                    raise ReleaseError(f"files.{name}", str(exc)) from None
                digests[name] = _write_member(source, dest, name)
                modes[name] = info.mode & 0o777
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise ReleaseError("archive", f"not a readable .tar.gz: {exc}") from None
    raw_metadata = specials.get(METADATA)
    if raw_metadata is None:
        raise ReleaseError("archive", f"no {METADATA} in the archive")
    try:
        metadata = ReleaseMetadata.model_validate_json(raw_metadata)
    except ValidationError as exc:
        raise _metadata_error(exc) from None
    signature = _signature(specials.get(SIGNATURE))
    check_contents(metadata, digests)
    return Unpacked(
        metadata=metadata,
        metadata_bytes=raw_metadata,
        signature=signature,
        files=digests,
        modes=modes,
    )


def _write_member(source: Any, dest: Path, name: str) -> str:
    """Copy one member to ``dest/name`` (a new file: never through a link, never over another
    file); its sha256."""
    path = dest.joinpath(*PurePosixPath(name).parts)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise ReleaseError(f"files.{name}", f"cannot be written: {exc.strerror}") from None
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    with os.fdopen(fd, "wb") as out:
        while n := source.readinto(buffer):
            digest.update(view[:n])
            out.write(view[:n])
    return digest.hexdigest()


# Keys and signatures ---------------------------------------------------------------------------


def generate_key() -> tuple[str, str]:
    """A new Ed25519 key pair: (private key as PEM, public key as base64 of its 32 raw bytes)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return pem, public_key_of(pem)


def public_key_of(private_pem: str) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    raw = key.public_key().public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b64encode(raw).decode()


def sign(metadata_bytes: bytes, private_pem: str) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the signing key is not an Ed25519 key")
    return key.sign(metadata_bytes)


def verify_signature(release: Release | Unpacked, public_keys: Iterable[str]) -> str | None:
    """The base64 public key (of ``public_keys``) that signed ``release``; ``None`` if unsigned.
    Raises :class:`ReleaseError` for a signature no key verifies (and
    :class:`roost_shared.signing.BadKey` for a key that is not one)."""
    from roost_shared.signing import signed_by

    if release.signature is None:
        return None
    key = signed_by(public_keys, release.metadata_bytes, release.signature)
    if key is None:
        raise ReleaseError("signature", "not made by any of the site's release signing keys")
    return key


# Packing ---------------------------------------------------------------------------------------


def _author_metadata(source: Path) -> dict[str, Any]:
    for name in AUTHOR_FILES:
        path = source / name
        if path.is_file():
            text = path.read_text()
            if name.endswith(".json"):
                return json.loads(text)
            import yaml  # the CLI and the services that pack declare PyYAML

            loaded = yaml.safe_load(text)
            if not isinstance(loaded, dict):
                raise ReleaseError(name, "expected a mapping of metadata fields")
            return loaded
    raise ReleaseError("source", f"no {' or '.join(AUTHOR_FILES)} in {source}")


def pack(source: Path, private_pem: str | None) -> bytes:
    """Build a release archive from an author's directory (``release.yaml`` + files); signed
    when ``private_pem`` is given. Hooks keep their executable bit."""
    fields = _author_metadata(source)
    files: dict[str, bytes] = {}
    modes: dict[str, int] = {}
    for path in sorted(source.rglob("*")):
        if not path.is_file() or (path.name in AUTHOR_FILES and path.parent == source):
            continue
        name = path.relative_to(source).as_posix()
        files[name] = path.read_bytes()
        modes[name] = path.stat().st_mode & 0o777
    try:
        metadata = ReleaseMetadata.model_validate(
            {**fields, "files": {n: sha256(b) for n, b in files.items()}}
        )
    except ValidationError as exc:
        raise _metadata_error(exc) from None
    metadata_bytes = metadata.model_dump_json(indent=2).encode()
    members = {METADATA: metadata_bytes, **files}
    if private_pem is not None:
        members[SIGNATURE] = base64.b64encode(sign(metadata_bytes, private_pem))
    return build_archive(members, modes)


def build_archive(members: dict[str, bytes], modes: dict[str, int] | None = None) -> bytes:
    """A ``.tar.gz`` of ``members`` (name → bytes), deterministic (fixed times and owners)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=6) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = (modes or {}).get(name, 0o644)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    """``python -m roost_shared.releases keygen DIR | pack SOURCE -o OUT [--key PEM]``."""
    parser = argparse.ArgumentParser(prog="python -m roost_shared.releases")
    sub = parser.add_subparsers(dest="command", required=True)
    keygen = sub.add_parser("keygen", help="write release-signing.pem and print the public key")
    keygen.add_argument("directory", type=Path)
    packer = sub.add_parser("pack", help="build a release archive from a directory")
    packer.add_argument("source", type=Path)
    packer.add_argument("-o", "--output", type=Path, required=True)
    packer.add_argument("--key", type=Path, help="Ed25519 private key (PEM); unsigned without")
    args = parser.parse_args(argv)
    try:
        if args.command == "keygen":
            args.directory.mkdir(parents=True, exist_ok=True)
            pem, public = generate_key()
            path = args.directory / "release-signing.pem"
            path.touch(mode=0o600, exist_ok=False)
            path.write_text(pem)
            print(public)
            return 0
        pem = args.key.read_text() if args.key else None
        args.output.write_bytes(pack(args.source, pem))
        print(args.output)
        return 0
    except (ReleaseError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
