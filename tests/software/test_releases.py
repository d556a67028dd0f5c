"""The software service as a real process: uploading signed releases, every bad upload refused
with its reason and field and nothing stored, delete rules, archive downloads with tickets."""

from __future__ import annotations

import gzip
import json
import os
import tarfile
import time
from pathlib import Path

from roost_shared.releases import (
    MAX_UNPACKED_BYTES,
    ReleaseError,
    build_archive,
    generate_key,
    read_archive,
)
from roost_software.releases import sign_ticket, ticket_key
from tests.support.events import Listener
from tests.support.problems import problem
from tests.support.releases import build, tampered

GZIP = {"Content-Type": "application/gzip"}


def start(stack, public: str, **env: str):
    return stack.start("software", ROOST_RELEASE_PUBLIC_KEYS=json.dumps([public]), **env)


def state_dir(svc) -> Path:
    return Path(svc.env["ROOST_STATE_DIR"])


async def test_upload_list_show_and_events(stack, tmp_path):
    pem, public = generate_key()
    svc = start(stack, public)
    events = await Listener.on(await stack.bus(), "software.release.*")
    archive = build(tmp_path, "roost-1.1.0", "1.1.0", pem, reboot_required=True)
    async with svc.client(stack.tokens.admin) as http, svc.client(stack.tokens.reader) as ro:
        assert (await ro.post("/v1/releases", content=archive, headers=GZIP)).status_code == 403
        r = await http.post("/v1/releases", content=archive, headers=GZIP)
        assert r.status_code == 201, r.text
        rel = r.json()
        assert rel["id"] == "roost-1.1.0" and rel["version"] == "1.1.0"
        assert rel["state"] == "available" and rel["signed_by"] == public
        assert rel["reboot_required"] is True and rel["size"] == len(archive)
        assert set(rel["files"]) == {"payload/readme.txt"}
        assert (state_dir(svc) / "releases" / "roost-1.1.0.tar.gz").read_bytes() == archive

        newer = build(tmp_path, "roost-1.2.0", "1.2.0", pem, requires=["roost-1.1.0"])
        r = await http.post(
            "/v1/releases", content=newer, headers={"Content-Type": "application/octet-stream"}
        )
        assert r.status_code == 201, r.text
        assert r.json()["requires"] == ["roost-1.1.0"]

        listed = (await ro.get("/v1/releases")).json()
        assert [x["id"] for x in listed["releases"]] == ["roost-1.1.0", "roost-1.2.0"]
        first = (await ro.get("/v1/releases", params={"limit": 1})).json()
        assert [x["id"] for x in first["releases"]] == ["roost-1.1.0"] and first["next"]
        rest = (await ro.get("/v1/releases", params={"limit": 1, "marker": rel["uuid"]})).json()
        assert [x["id"] for x in rest["releases"]] == ["roost-1.2.0"]
        assert (await ro.get("/v1/releases/roost-1.1.0")).json() == rel
        problem(await ro.get("/v1/releases/nope"), 404, "path.id")
    await events.wait_for("uploaded", type="software.release.changed", id="roost-1.1.0")
    await events.wait_for(
        "uploaded", type="software.release.changed", id="roost-1.2.0", state="available"
    )


async def test_bad_uploads_refused_with_field_and_nothing_stored(stack, tmp_path):
    pem, public = generate_key()
    other_pem, _ = generate_key()
    svc = start(stack, public, ROOST_MAX_RELEASE_BYTES="200000")
    good = build(tmp_path, "good-1", "1.1.0", pem)
    async with svc.client(stack.tokens.admin) as http:
        assert (await http.post("/v1/releases", content=good, headers=GZIP)).status_code == 201

        async def refused(data: bytes, status: int, field: str, words: str) -> None:
            r = await http.post("/v1/releases", content=data, headers=GZIP)
            body = problem(r, status, field)
            assert words in body["detail"], body

        # A file changed after packing: the signed metadata pins its sha256.
        signed = build(tmp_path, "tampered-1", "1.1.0", pem)
        await refused(
            tampered(signed, "payload/readme.txt", b"evil\n"),
            422,
            "files.payload/readme.txt",
            "sha256 does not match",
        )
        # Signed, but by a key the site does not accept.
        await refused(
            build(tmp_path, "other-key-1", "1.1.0", other_pem), 422, "signature", "signing keys"
        )
        # Not signed at all.
        await refused(build(tmp_path, "unsigned-1", "1.1.0", None), 422, "signature", "unsigned")
        # Requires a release the site does not have.
        await refused(
            build(tmp_path, "needs-1", "1.2.0", pem, requires=["good-1", "absent-1"]),
            422,
            "metadata.requires.1",
            "missing dependency",
        )
        # The same id again, even with other content.
        await refused(build(tmp_path / "again", "good-1", "1.1.1", pem), 409, "id", "exists")
        # Not a gzip; a gzip of metadata with missing fields; a hook that is not in it.
        await refused(b"PK\x03\x04 not a tarball", 422, "archive", "not a readable")
        await refused(
            build_archive({"metadata.json": json.dumps({"id": "half-1"}).encode()}),
            422,
            "metadata.version",
            "required",
        )
        await refused(build_archive({"payload": b"x"}), 422, "archive", "no metadata.json")
        # Over the cap (ROOST_MAX_RELEASE_BYTES): 413 before reading it.
        big = build(tmp_path, "big-1", "1.1.0", pem, files={"blob": os.urandom(300_000)})
        r = await http.post("/v1/releases", content=big, headers=GZIP)
        assert r.status_code == 413, r.text

        listed = (await http.get("/v1/releases")).json()["releases"]
        assert [x["id"] for x in listed] == ["good-1"]
        stored = sorted(p.name for p in (state_dir(svc) / "releases").iterdir())
        assert stored == ["good-1.tar.gz"]
        assert (state_dir(svc) / "releases" / "good-1.tar.gz").read_bytes() == good


async def test_unsigned_releases_only_where_allowed_and_keys_file(stack, tmp_path):
    pem, public = generate_key()
    lab = stack.start("software", ROOST_ALLOW_UNSIGNED_RELEASES="true")
    async with lab.client(stack.tokens.admin) as http:
        r = await http.post(
            "/v1/releases", content=build(tmp_path, "lab-1", "1.1.0", None), headers=GZIP
        )
        assert r.status_code == 201, r.text
        assert r.json()["signed_by"] is None
        # A lab without keys takes a signed release as it would an unsigned one.
        r = await http.post(
            "/v1/releases", content=build(tmp_path, "lab-2", "1.2.0", pem), headers=GZIP
        )
        assert r.status_code == 201, r.text
        assert r.json()["signed_by"] is None

    # Keys from <state_dir>/release-keys.pub (what `make run` writes), comments allowed.
    keys_dir = stack.workdir / "state" / "keys-site"
    keys_dir.mkdir(parents=True)
    (keys_dir / "release-keys.pub").write_text(f"# site key\n{public}\n")
    site = stack.start("software", ROOST_STATE_DIR=str(keys_dir))
    async with site.client(stack.tokens.admin) as http:
        r = await http.post(
            "/v1/releases", content=build(tmp_path, "site-1", "1.1.0", pem), headers=GZIP
        )
        assert r.status_code == 201, r.text
        assert r.json()["signed_by"] == public
        r = await http.post(
            "/v1/releases", content=build(tmp_path, "site-2", "1.1.0", None), headers=GZIP
        )
        problem(r, 422, "signature")


async def test_delete_rules(stack, tmp_path):
    pem, public = generate_key()
    svc = start(stack, public)
    events = await Listener.on(await stack.bus(), "software.release.*")
    async with svc.client(stack.tokens.admin) as http, svc.client(stack.tokens.reader) as ro:
        for data in (
            build(tmp_path, "base-1", "1.1.0", pem),
            build(tmp_path, "top-1", "1.2.0", pem, requires=["base-1"]),
        ):
            assert (await http.post("/v1/releases", content=data, headers=GZIP)).status_code == 201
        assert (await ro.delete("/v1/releases/top-1")).status_code == 403
        body = problem(await http.delete("/v1/releases/base-1"), 409, "path.id")
        assert "top-1 requires it" in body["detail"]
        assert (await http.delete("/v1/releases/top-1")).status_code == 204
        assert not (state_dir(svc) / "releases" / "top-1.tar.gz").exists()
        assert (await http.get("/v1/releases/top-1")).status_code == 404
        assert (await http.delete("/v1/releases/base-1")).status_code == 204
        problem(await http.delete("/v1/releases/base-1"), 404, "path.id")
        assert (await http.get("/v1/releases")).json()["releases"] == []
    await events.wait_for("deleted", type="software.release.changed", id="top-1", state="deleted")


async def test_archive_download_with_ticket_or_token(stack, tmp_path):
    pem, public = generate_key()
    svc = start(stack, public)
    archive = build(tmp_path, "dl-1", "1.1.0", pem)
    key = ticket_key(state_dir(svc) / "software-download.key")  # the service's (or made now)
    path = "/v1/releases/dl-1/archive"
    async with svc.client(stack.tokens.admin) as http, svc.client(None) as anon:
        assert (await http.post("/v1/releases", content=archive, headers=GZIP)).status_code == 201
        async with svc.client(stack.tokens.reader) as ro:
            r = await ro.get(path)
            assert r.status_code == 200 and r.content == archive
            assert r.headers["content-type"] == "application/gzip"
        assert (await anon.get(path)).status_code == 401

        expires = int(time.time()) + 60
        good = f"{expires}.{sign_ticket(key, 'dl-1', expires)}"
        r = await anon.get(path, params={"ticket": good})
        assert r.status_code == 200 and r.content == archive
        # A ticket is for one release, until its expiry, and cannot be forged.
        past = int(time.time()) - 1
        for bad in (
            f"{expires}.{sign_ticket(key, 'other-1', expires)}",
            f"{past}.{sign_ticket(key, 'dl-1', past)}",
            f"{expires + 1}.{sign_ticket(key, 'dl-1', expires)}",
            "garbage",
        ):
            assert (await anon.get(path, params={"ticket": bad})).status_code == 403, bad
        assert (
            await anon.get("/v1/releases/nope/archive", params={"ticket": good})
        ).status_code in (
            403,
            404,
        )
    assert oct((state_dir(svc) / "software-download.key").stat().st_mode & 0o777) == "0o600"


def test_an_archive_that_would_unpack_too_big_is_refused_before_reading_it():
    """A "gzip bomb": a few bytes whose tar header says a file is 2 GiB; refused from the header,
    without reading (or allocating) the file."""
    info = tarfile.TarInfo("payload/huge")
    info.size = 2 * 1024**3
    bomb = gzip.compress(info.tobuf(format=tarfile.PAX_FORMAT) + b"\0" * 512)
    assert len(bomb) < 1000
    try:
        read_archive(bomb)
    except ReleaseError as exc:
        assert exc.field == "archive" and f"more than {MAX_UNPACKED_BYTES} bytes" in exc.reason
    else:
        raise AssertionError("the bomb was read")
