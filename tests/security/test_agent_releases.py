"""Agents verify releases themselves: attacks on ``software.install`` against real agent
processes, a real broker (the test's vhost) and real HTTP servers run by the test.

The attacker here can put a ``software.install`` on the bus (the shared broker credentials, or
a forged command once commands are signed) and serve bytes over HTTP, but holds no site release
signing key. Whatever the command says, the agent must run nothing it cannot verify itself: a
release signed by another key, an unsigned one, one from a ``file:`` or ``data:`` URL or from
any host but the software service, any release on a node without release keys. Every hook of
these releases writes a marker file; none may exist afterwards. A large release must stream
through the agent without growing its memory.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from roost_shared.bus import Bus
from roost_shared.catalog import SoftwareInstall
from roost_shared.releases import pack, read_archive
from roost_shared.signing import Signer
from tests.support.agents import AgentUnderTest, Events, listen, send
from tests.support.releases import SITE, pack_file, release_dir, signed
from tests.support.waiting import eventually

REPORTED = "agent.software.reported"
ANNOUNCED = "agent.host.announced"
REFUSALS = "roost_agent_software_refusals_total"


# HTTP servers ------------------------------------------------------------------------------------


@dataclass
class Server:
    """Files served over HTTP on 127.0.0.1 (streamed from disk or from memory), every request
    path recorded. ``redirects`` maps a path to the URL it redirects to; ``truncate`` maps a
    path to how many bytes of it are sent (with the full Content-Length) before closing."""

    port: int
    files: dict[str, bytes | Path] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    truncate: dict[str, int] = field(default_factory=dict)
    chunked: set[str] = field(default_factory=set)
    requests: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, name: str, data: bytes | Path) -> str:
        self.files[name] = data
        return f"{self.base}/{name}"


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            name = self.path.lstrip("/").split("?", 1)[0]
            server.requests.append(self.path)
            if name in server.redirects:
                self.send_response(302)
                self.send_header("Location", server.redirects[name])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = server.files.get(name)
            if body is None:
                self.send_error(404)
                return
            size = body.stat().st_size if isinstance(body, Path) else len(body)
            self.send_response(200)
            if name in server.chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", str(size))
            self.send_header("Connection", "close")
            self.end_headers()
            limit = server.truncate.get(name, size)
            source = body.open("rb") if isinstance(body, Path) else _Bytes(body)
            with source as f:
                sent = 0
                while sent < limit and (chunk := f.read(min(1 << 20, limit - sent))):
                    if name in server.chunked:
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    else:
                        self.wfile.write(chunk)
                    sent += len(chunk)
            if name in server.chunked and limit == size:
                self.wfile.write(b"0\r\n\r\n")
            self.close_connection = True

        def log_message(self, *_: Any) -> None:
            pass

    return Handler


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def __enter__(self) -> _Bytes:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def read(self, n: int) -> bytes:
        chunk = self.data[self.at : self.at + n]
        self.at += len(chunk)
        return chunk


@pytest.fixture
def servers() -> Iterator[Callable[[], Server]]:
    """``servers()`` starts one more HTTP server; all stop after the test."""
    running: list[ThreadingHTTPServer] = []

    def start() -> Server:
        server = Server(0)
        http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
        http.daemon_threads = True
        server.port = http.server_address[1]
        threading.Thread(target=http.serve_forever, daemon=True).start()
        running.append(http)
        return server

    yield start
    for http in running:
        http.shutdown()
        http.server_close()


@pytest.fixture
def agents(stack, tmp_path: Path) -> Iterator[Callable[..., AgentUnderTest]]:
    """``agents(**env)`` starts one agent (a worker; provisioned with the test site's release
    key); all stop after the test."""
    started: list[AgentUnderTest] = []

    def start(**env: str) -> AgentUnderTest:
        agent = AgentUnderTest(
            stack.amqp_url,
            tmp_path / f"site-{len(started)}",
            PYTHONPYCACHEPREFIX=str(stack.workdir / "pycache"),
            **env,
        )
        started.append(agent.start())
        return agent

    yield start
    for agent in started:
        agent.stop()


# Releases and commands ---------------------------------------------------------------------------


def release(root: Path, rid: str, version: str, marker: Path, key: Signer | None = SITE) -> bytes:
    """A release archive whose install and activate hooks write ``marker`` (signed with
    ``key``; unsigned with None)."""
    hooks = {kind: f'echo "{kind} {rid}" >> {marker}' for kind in ("install", "activate")}
    source = release_dir(root / f"src-{rid}-{os.urandom(4).hex()}", rid, version, hooks=hooks)
    return pack(source, None) if key is None else signed(source, key)


def install_of(archive: bytes, url: str) -> SoftwareInstall:
    """The command for ``archive`` with digests that match it (what an attacker who built the
    archive can always send)."""
    meta = read_archive(archive).metadata
    return SoftwareInstall(
        release_id=meta.id,
        version=meta.version,
        url=url,
        archive_sha256=hashlib.sha256(archive).hexdigest(),
        files=meta.files,
        install_hook=meta.hooks.install,
        activate_hook=meta.hooks.activate,
        reboot_required=meta.reboot_required,
    )


async def started(stack: Any, agents: Callable[..., AgentUnderTest], **env: str):
    bus = await stack.bus()
    events = await listen(bus)
    agent = agents(**env)
    await events.wait_for(ANNOUNCED, agent.mac, timeout=30)
    return bus, events, agent


async def outcome(events: Events, agent: AgentUnderTest, command_id: str) -> dict[str, Any]:
    """The install's last report (installed or failed) for the command ``command_id``."""

    def done(d: dict[str, Any]) -> bool:
        return d.get("command") == command_id and d["state"] in ("installed", "failed")

    return (await events.wait_for(REPORTED, agent.mac, done, timeout=60))["data"]


async def install(bus: Bus, events: Events, agent: AgentUnderTest, cmd: SoftwareInstall):
    return await outcome(events, agent, await send(bus, agent.mac, cmd))


def refusals(agent: AgentUnderTest, reason: str) -> float:
    return agent.metric(REFUSALS, reason=reason)


def nothing_left(agent: AgentUnderTest, rid: str) -> None:
    """No download, staged or installed copy of ``rid`` that could be taken for good."""
    software = agent.state_dir / "software"
    downloads = software / "downloads"
    assert not downloads.exists() or not any(downloads.iterdir()), list(downloads.iterdir())
    assert not (software / "releases" / rid).exists()
    assert not (software / "releases" / f".{rid}.partial").exists()


# Tests -------------------------------------------------------------------------------------------


async def test_release_not_signed_by_a_site_key_runs_nothing(stack, agents, servers, tmp_path):
    """The archive is signed by the attacker's own key and the command's digests match it:
    the agent checks the signature against the site's keys on the node, and runs no hook."""
    software = servers()
    bus, events, agent = await started(stack, agents, ROOST_SOFTWARE_URL=software.base)
    marker = tmp_path / "attacker-ran"
    attacker = Signer.generate()

    forged = release(tmp_path, "roost-6.6.6", "6.6.6", marker, key=attacker)
    failed = await install(bus, events, agent, install_of(forged, software.add("f.tgz", forged)))
    assert failed["state"] == "failed", failed
    assert "signature" in failed["error"] and "nothing was run" in failed["error"]
    assert failed["running_version"] == "1.0.0"
    assert not marker.exists(), marker.read_text()
    nothing_left(agent, "roost-6.6.6")

    unsigned = release(tmp_path, "roost-6.6.7", "6.6.7", marker, key=None)
    url = software.add("u.tgz", unsigned)
    failed = await install(bus, events, agent, install_of(unsigned, url))
    assert failed["state"] == "failed" and "not signed" in failed["error"], failed
    assert not marker.exists()
    nothing_left(agent, "roost-6.6.7")

    # The site's own release, from the same place, installs: the refusals were the signature's.
    good_marker = tmp_path / "site-ran"
    good = release(tmp_path, "roost-1.1.0", "1.1.0", good_marker)
    done = await install(bus, events, agent, install_of(good, software.add("g.tgz", good)))
    assert done["state"] == "installed", done
    assert good_marker.read_text().split() == ["install", "roost-1.1.0", "activate", "roost-1.1.0"]
    assert not marker.exists()
    await eventually(lambda: refusals(agent, "signature") == 1, what="the signature refusal")
    assert refusals(agent, "unsigned") == 1


async def test_node_without_release_keys_installs_nothing(stack, agents, servers, tmp_path):
    """Secure by default: a node with no release key provisioned refuses every install (even
    one the site signed), before any request."""
    software = servers()
    bus, events, agent = await started(
        stack,
        agents,
        ROOST_SOFTWARE_URL=software.base,
        ROOST_RELEASE_KEYS_FILE=str(tmp_path / "absent.pub"),
    )
    marker = tmp_path / "ran"
    archive = release(tmp_path, "roost-1.1.0", "1.1.0", marker)
    failed = await install(bus, events, agent, install_of(archive, software.add("a.tgz", archive)))
    assert failed["state"] == "failed", failed
    assert "no release signing keys" in failed["error"] or "does not exist" in failed["error"]
    assert "nothing is installed" in failed["error"]
    assert not marker.exists() and software.requests == []
    nothing_left(agent, "roost-1.1.0")
    await eventually(lambda: refusals(agent, "no-keys") == 1, what="the no-keys refusal")


async def test_download_only_from_the_software_service(stack, agents, servers, tmp_path):
    """``file:``, ``data:``, ``ftp:``, another port and a redirect elsewhere: refused before
    any request to them, even for a release the site signed (the URL is what is refused)."""
    software, elsewhere = servers(), servers()
    bus, events, agent = await started(stack, agents, ROOST_SOFTWARE_URL=software.base)
    marker = tmp_path / "ran"
    archive = release(tmp_path, "roost-1.1.0", "1.1.0", marker)
    on_disk = tmp_path / "release.tar.gz"
    on_disk.write_bytes(archive)
    software.redirects["away.tgz"] = elsewhere.add("r.tgz", archive)
    urls = {
        "file": on_disk.as_uri(),
        "data": "data:application/gzip;base64," + base64.b64encode(archive).decode(),
        "ftp": f"ftp://127.0.0.1:{elsewhere.port}/r.tgz",
        "another port": elsewhere.add("a.tgz", archive),
        "credentials": f"http://x:y@127.0.0.1:{software.port}/a.tgz",
        "redirect": f"{software.base}/away.tgz",
    }
    for what, url in urls.items():
        failed = await install(bus, events, agent, install_of(archive, url))
        assert failed["state"] == "failed", (what, failed)
        assert "download refused" in failed["error"], (what, failed["error"])
        assert not marker.exists(), what
        nothing_left(agent, "roost-1.1.0")
    assert elsewhere.requests == []
    assert software.requests == ["/away.tgz"]  # the redirect's target was never asked
    await eventually(lambda: refusals(agent, "url") == len(urls), what="every URL refusal")


async def test_oversized_and_truncated_downloads_leave_nothing(stack, agents, servers, tmp_path):
    """A download larger than ROOST_MAX_RELEASE_BYTES (declared or not) and one cut short fail
    cleanly: no hook ran, no file is left that a later step could take for the release."""
    software = servers()
    bus, events, agent = await started(
        stack, agents, ROOST_SOFTWARE_URL=software.base, ROOST_MAX_RELEASE_BYTES="200000"
    )
    marker = tmp_path / "ran"
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(400_000))
    big = pack_file(
        tmp_path / "big.tgz",
        "roost-2.0.0",
        "2.0.0",
        {"payload.bin": payload},
        hooks={"install": f"echo install >> {marker}"},
    ).read_bytes()
    small = release(tmp_path, "roost-1.1.0", "1.1.0", marker)
    software.chunked.add("chunked.tgz")
    software.truncate["cut.tgz"] = len(small) // 2
    cases = {
        "declared too large": install_of(big, software.add("big.tgz", big)),
        "chunked too large": install_of(big, software.add("chunked.tgz", big)),
        "cut short": install_of(small, software.add("cut.tgz", small)),
    }
    for what, cmd in cases.items():
        failed = await install(bus, events, agent, cmd)
        assert failed["state"] == "failed", (what, failed)
        assert "download failed" in failed["error"], (what, failed["error"])
        assert not marker.exists(), what
        nothing_left(agent, cmd.release_id)
    await eventually(lambda: refusals(agent, "download") == len(cases), what="the refusals")


@pytest.mark.timeout(300)
async def test_large_release_streams_through_a_small_agent(stack, agents, servers, tmp_path):
    """A 200 MB release installs without the agent's peak memory (VmHWM) growing by more than
    a few MB: the archive goes to disk as it arrives and is hashed on the way."""
    size_mb = 200
    software = servers()
    bus, events, agent = await started(stack, agents, ROOST_SOFTWARE_URL=software.base)
    marker = tmp_path / "ran"
    # A small release first: every code path of an install is loaded before measuring.
    warm = release(tmp_path, "roost-1.1.0", "1.1.0", marker)
    done = await install(bus, events, agent, install_of(warm, software.add("warm.tgz", warm)))
    assert done["state"] == "installed", done

    payload = tmp_path / "payload.bin"
    block = os.urandom(1 << 20)
    with payload.open("wb") as f:
        for i in range(size_mb):
            f.write(block[i:] + block[:i])  # incompressible, and no two MB alike
    archive = pack_file(
        tmp_path / "big.tgz",
        "roost-2.0.0",
        "2.0.0",
        {"payload.bin": payload},
        hooks={"install": f"echo install-big >> {marker}"},
    )
    digest = hashlib.sha256()
    with archive.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    meta_files = _signed_files(archive)
    payload_sha = meta_files["payload.bin"]
    payload.unlink()
    cmd = SoftwareInstall(
        release_id="roost-2.0.0",
        version="2.0.0",
        url=software.add("big.tgz", archive),
        archive_sha256=digest.hexdigest(),
        files=meta_files,
        install_hook="hooks/install",
    )
    try:
        before = _kb(agent.status()["VmHWM"])
        done = await install(bus, events, agent, cmd)
        after = _kb(agent.status()["VmHWM"])
        assert done["state"] == "installed", done
        assert done["running_version"] == "2.0.0"
        installed = agent.state_dir / "software" / "releases" / "roost-2.0.0" / "payload.bin"
        assert installed.stat().st_size == size_mb << 20
        assert _sha256(installed) == payload_sha
        assert marker.read_text().splitlines()[-1] == "install-big"
        nothing_left_but(agent, "roost-2.0.0")
        grown_mb = (after - before) / 1024
        print(f"agent VmHWM {before / 1024:.1f} MB -> {after / 1024:.1f} MB installing "
              f"{archive.stat().st_size / 1e6:.0f} MB")  # fmt: skip
        assert grown_mb < 5, f"the agent's peak RSS grew by {grown_mb:.1f} MB"
    finally:
        archive.unlink(missing_ok=True)
        shutil.rmtree(agent.state_dir / "software" / "releases" / "roost-2.0.0", True)


def nothing_left_but(agent: AgentUnderTest, rid: str) -> None:
    software = agent.state_dir / "software"
    downloads = software / "downloads"
    assert not downloads.exists() or not any(downloads.iterdir())
    assert not (software / "releases" / f".{rid}.partial").exists()


def _signed_files(archive: Path) -> dict[str, str]:
    import json
    import tarfile

    with tarfile.open(archive, "r|gz") as tar:
        for info in tar:
            if info.name == "metadata.json":
                f = tar.extractfile(info)
                assert f is not None
                return json.loads(f.read())["files"]
    raise AssertionError("no metadata.json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _kb(value: str) -> int:
    return int(value.split()[0])
