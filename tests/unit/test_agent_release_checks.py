"""The agent's release checks without processes: where it may download from, the release keys it
reads, and the streaming unpack of an archive (roost_shared.releases.unpack)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from roost_agent.download import Refused, Sources, parse_bases
from roost_agent.release_keys import NoReleaseKeys, site_release_keys
from roost_agent.settings import AgentSettings
from roost_shared import releases
from roost_shared.releases import ReleaseError, build_archive, unpack, verify_signature
from roost_shared.signing import Signer
from roost_sim.fleet import Fleet
from tests.support.releases import SITE, release_dir, signed, write_keys

SOFTWARE = Sources.of("http://software.example:8105, https://mirror.example/roost")


@pytest.mark.parametrize(
    "url",
    [
        "http://software.example:8105/v1/releases/r/archive?ticket=1.abc",
        "http://SOFTWARE.example:8105/x",
        "https://mirror.example/roost/r.tar.gz",
        "https://mirror.example:443/roost/sub/r.tar.gz",
    ],
)
def test_urls_of_the_software_service_are_allowed(url):
    SOFTWARE.check(url)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("file:///etc/passwd", "only http and https"),
        ("data:application/gzip;base64,H4sI", "only http and https"),
        ("ftp://software.example:8105/r", "only http and https"),
        ("http://software.example:8106/r", "is not the software service"),
        ("https://software.example:8105/r", "is not the software service"),
        ("http://evil.example:8105/r", "is not the software service"),
        ("http://software.example:8105@evil.example/r", "credentials"),
        ("http://evil.example#@software.example:8105/r", "is not the software service"),
        ("https://mirror.example/roostx/r", "is not the software service"),
        ("https://mirror.example/roost/../admin", "'..'"),
        ("https://mirror.example/roost/%2e%2e/admin", "'..'"),
        ("http://software.example:99999/r", "port"),
        ("http://software.example:8105/r\r\nX: y", "control characters"),
        ("//software.example:8105/r", "only http and https"),
    ],
)
def test_anything_else_is_refused(url, why):
    with pytest.raises(Refused, match=why):
        SOFTWARE.check(url)


def test_no_software_service_refuses_every_url():
    with pytest.raises(Refused, match="ROOST_SOFTWARE_URL"):
        Sources.of(None).check("http://software.example:8105/r")


def test_bad_software_url_setting_fails_at_start():
    assert parse_bases("") == ()
    with pytest.raises(ValueError, match="only http and https"):
        AgentSettings(mgmt_mac="02:00:00:00:00:01", software_url="file:///srv")
    with pytest.raises(ValueError, match="no query"):
        AgentSettings(mgmt_mac="02:00:00:00:00:01", software_url="http://a:1/?x=1")


def test_release_keys_from_the_file_and_the_setting(tmp_path):
    other = Signer.generate()
    path = write_keys(tmp_path / "keys.pub", SITE)
    assert site_release_keys(path, [other.public_key]) == [other.public_key, SITE.public_key]
    assert site_release_keys(tmp_path / "absent", [other.public_key]) == [other.public_key]
    with pytest.raises(NoReleaseKeys, match="does not exist"):
        site_release_keys(tmp_path / "absent", [])
    with pytest.raises(NoReleaseKeys, match="no release signing keys"):
        site_release_keys(None, [])
    (tmp_path / "empty.pub").write_text("# nothing yet\n")
    with pytest.raises(NoReleaseKeys, match="no release signing keys"):
        site_release_keys(tmp_path / "empty.pub", [])
    (tmp_path / "bad.pub").write_text("not-a-key\n")
    with pytest.raises(NoReleaseKeys, match=r"bad\.pub:1"):
        site_release_keys(tmp_path / "bad.pub", [])


def test_the_fleet_provisions_release_keys_and_the_software_service(tmp_path):
    fleet = Fleet(tmp_path)
    env = fleet.agent_env(fleet.add(), "amqp://x/")
    assert env["ROOST_RELEASE_KEYS_FILE"] == str(tmp_path / "release-keys.pub")
    assert env["ROOST_SOFTWARE_URL"] == "http://127.0.0.1:8105"


def _archive_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "r.tar.gz"
    path.write_bytes(data)
    return path


def test_unpack_streams_a_signed_release(tmp_path):
    source = release_dir(tmp_path / "src", "roost-1.1.0", "1.1.0", hooks={"install": "true"})
    archive = _archive_file(tmp_path, signed(source))
    out = unpack(archive, tmp_path / "out")
    assert out.metadata.id == "roost-1.1.0" and out.files == out.metadata.files
    assert (tmp_path / "out" / "hooks" / "install").read_text() == "#!/bin/sh\ntrue\n"
    assert out.modes["hooks/install"] == 0o755
    assert verify_signature(out, [SITE.public_key]) == SITE.public_key
    with pytest.raises(ReleaseError, match="not made by any"):
        verify_signature(out, [Signer.generate().public_key])


def test_signatures_of_cryptography_keys_verify(tmp_path):
    pem, public = releases.generate_key()  # cryptography's key, as `roost software keygen`
    source = release_dir(tmp_path / "src", "roost-1.1.0", "1.1.0")
    out = unpack(_archive_file(tmp_path, releases.pack(source, pem)), tmp_path / "out")
    assert verify_signature(out, [SITE.public_key, public]) == public


@pytest.mark.parametrize(
    ("members", "why"),
    [
        ({"../evil": b"x"}, "not a payload path"),
        ({"/etc/evil": b"x"}, "not a payload path"),
        ({"payload": b"x"}, "no metadata.json"),
    ],
)
def test_unpack_refuses_bad_members(tmp_path, members, why):
    with pytest.raises(ReleaseError, match=why):
        unpack(_archive_file(tmp_path, build_archive(members)), tmp_path / "out")
    assert not (tmp_path / "evil").exists()


def test_unpack_refuses_links_and_tampered_files(tmp_path):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(ReleaseError, match="only regular files"):
        unpack(_archive_file(tmp_path, out.getvalue()), tmp_path / "a")
    source = release_dir(tmp_path / "src", "roost-1.1.0", "1.1.0")
    good = releases.read_archive(signed(source))
    changed = {releases.METADATA: good.metadata_bytes, "payload/readme.txt": b"evil\n"}
    with pytest.raises(ReleaseError, match="sha256 does not match"):
        unpack(_archive_file(tmp_path, build_archive(changed)), tmp_path / "b")
    with pytest.raises(ReleaseError, match="not a readable"):
        unpack(_archive_file(tmp_path, b"not gzip at all"), tmp_path / "c")
