"""``roost software ...`` and ``roost strategy ...``: key and archive tools run as real processes,
release commands against a real software service, the ``--watch`` view from canned strategy
documents (the renderer is pure) and its polling loop against a small fake of
``GET /v1/strategy`` (so exit codes and Ctrl-C are tested without rolling a real fleet)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from roost_cli import strategy as strategy_cli
from roost_shared import releases
from roost_sim.ports import free_port
from tests.support.cli import RoostRunner, Run, clean_env
from tests.support.releases import release_source
from tests.support.site import open_site
from tests.support.waiting import eventually


class Roost(RoostRunner):
    """``roost --software-url URL ...``."""

    url_flag = "--software-url"


def author_dir(root: Path, release_id: str = "roost-1.1.0", version: str = "1.1.0") -> Path:
    """A release author's directory: release.yaml, an install hook and a payload file."""
    source = root / release_id
    (source / "bin").mkdir(parents=True)
    (source / "release.yaml").write_text(
        yaml.safe_dump(
            {
                "id": release_id,
                "version": version,
                "summary": "Agent fixes",
                "reboot_required": True,
                "applies_to": ["worker", "controller"],
                "hooks": {"install": "bin/install"},
            }
        )
    )
    hook = source / "bin" / "install"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    (source / "payload.txt").write_text("new bits\n")
    return source


# Local: keygen and pack (no service) -----------------------------------------------------------


async def test_keygen_and_pack_round_trip(tmp_path: Path) -> None:
    roost = Roost("http://127.0.0.1:9", None, tmp_path)  # never called: local commands
    keys = tmp_path / "keys"
    made = await roost.ok("software", "keygen", str(keys))
    pem_path, pub_path = keys / "release-signing.pem", keys / "release-signing.pub"
    assert pem_path.stat().st_mode & 0o777 == 0o600
    public = pub_path.read_text().strip()
    assert public == releases.public_key_of(pem_path.read_text())
    assert f"Public key:  {public}" in made.out and str(pem_path) in made.out

    again = await roost("software", "keygen", str(keys))
    assert again.code == 2 and "exists; not overwriting" in again.error_line

    source = author_dir(tmp_path)
    signed = tmp_path / "signed.tar.gz"
    packed = await roost.ok(
        "software", "pack", str(source), "-o", str(signed), "--key", str(pem_path)
    )
    size = signed.stat().st_size
    assert packed.out.strip() == (
        f"Packed roost-1.1.0 (version 1.1.0, signed, 2 files) into {signed} ({size} bytes)."
    )
    release = releases.read_archive(signed.read_bytes())
    assert releases.verify_signature(release, [public]) == public
    assert release.metadata.applies_to == ["controller", "worker"]
    assert release.metadata.files.keys() == {"bin/install", "payload.txt"}

    unsigned = await roost.js("software", "pack", str(source), "-o", str(tmp_path / "u.tar.gz"))
    assert unsigned["signed"] is False and unsigned["id"] == "roost-1.1.0"
    assert releases.read_archive((tmp_path / "u.tar.gz").read_bytes()).signature is None

    # Bad input: one line each, never a traceback.
    (source / "release.yaml").write_text("id: roost-1.2.0\nversion: one-two\n")
    bad = await roost("software", "pack", str(source), "-o", str(tmp_path / "bad.tar.gz"))
    assert bad.code == 2 and "metadata.version" in bad.error_line
    assert not (tmp_path / "bad.tar.gz").exists()
    nowhere = await roost("software", "pack", str(tmp_path / "nope"), "-o", str(tmp_path / "x"))
    assert nowhere.code == 2 and "is not a directory" in nowhere.error_line
    no_key = await roost(
        "software", "pack", str(source), "-o", str(tmp_path / "x"), "--key", str(tmp_path / "k")
    )
    assert no_key.code == 1 and "cannot read the key" in no_key.error_line


# Releases against the real service -------------------------------------------------------------


def tampered(archive: bytes) -> bytes:
    """The same metadata (and signature) with one payload byte changed."""
    release = releases.read_archive(archive)
    members = {releases.METADATA: release.metadata_bytes, **release.files}
    members["payload.txt"] = b"evil bits\n"
    return releases.build_archive(members)


@pytest.mark.slow
async def test_release_upload_list_show_delete_and_errors(stack, tmp_path: Path) -> None:
    site_pem, site_key = releases.generate_key()
    svc = stack.start(
        "software",
        ROOST_ALLOW_UNSIGNED_RELEASES="true",
        ROOST_RELEASE_PUBLIC_KEYS=json.dumps([site_key]),
    )
    roost = Roost(svc.url, stack.tokens.admin, tmp_path)
    # Archives built in-process (the pack command is tested above); CLI runs side by side.
    archive, other, foreign = (tmp_path / f"{n}.tar.gz" for n in ("r", "r2", "foreign"))
    archive.write_bytes(releases.pack(author_dir(tmp_path), None))
    source2 = author_dir(tmp_path, "roost-1.2.0", "1.2.0")
    other.write_bytes(releases.pack(source2, site_pem))
    source3 = author_dir(tmp_path, "roost-1.3.0", "1.3.0")
    foreign.write_bytes(releases.pack(source3, releases.generate_key()[0]))  # an unknown key
    bad = tmp_path / "tampered.tar.gz"
    bad.write_bytes(tampered(archive.read_bytes()))
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not an archive at all")

    uploaded = await roost.ok("software", "upload", str(archive))
    assert uploaded.out.strip() == (
        "Release roost-1.1.0 (version 1.1.0) uploaded, unsigned: available."
    ), uploaded.out
    second = await roost.ok("software", "upload", str(other))
    assert second.out.strip() == (
        f"Release roost-1.2.0 (version 1.2.0) uploaded, signed by {site_key}: available."
    )

    listed, table, limited, shown, shown_table = await asyncio.gather(
        roost.js("software", "list"),
        roost.ok("software", "list"),
        roost.js("software", "list", "--limit", "1"),
        roost.js("software", "show", "roost-1.1.0"),
        roost.ok("software", "show", "roost-1.1.0"),
    )
    assert [r["id"] for r in listed["releases"]] == ["roost-1.1.0", "roost-1.2.0"]
    for text in ("ID", "Version", "State", "Reboot", "Applies To", "Summary"):
        assert text in table.out
    row = next(line for line in table.out.splitlines() if "roost-1.1.0" in line)
    for text in ("1.1.0", "available", "yes", "controller, worker", "Agent fixes"):
        assert text in row, row
    assert [r["id"] for r in limited["releases"]] == ["roost-1.1.0"]
    assert shown["version"] == "1.1.0" and shown["reboot_required"] is True
    assert "archive_sha256" in shown_table.out and "controller, worker" in shown_table.out

    # Refusals: one readable line each, nothing on stdout.
    duplicate, unknown_key, refused, not_archive = await asyncio.gather(
        roost("software", "upload", str(archive)),
        roost("software", "upload", str(foreign)),
        roost("software", "upload", str(bad)),
        roost("software", "upload", str(junk)),
    )
    missing, directory, unknown, reader = await asyncio.gather(
        roost("software", "upload", str(tmp_path / "missing.tar.gz")),
        roost("software", "upload", str(tmp_path)),
        roost("software", "show", "roost-9.9.9"),
        roost("software", "upload", str(other), token=stack.tokens.reader),
    )
    assert duplicate.code == 1 and duplicate.error_line.startswith("roost: error: 409 ")
    assert duplicate.error_line.count("exists") == 1, duplicate.error_line  # said once
    assert unknown_key.code == 1 and unknown_key.error_line == (
        "roost: error: 422 signature: not made by any of the site's release signing keys"
    )
    assert refused.code == 1 and refused.out == ""
    assert refused.error_line.startswith("roost: error: 422 "), refused.err
    assert "payload.txt" in refused.error_line and "sha256" in refused.error_line
    assert not_archive.code == 1 and "422" in not_archive.error_line
    assert missing.code == 2 and "cannot read" in missing.error_line
    assert directory.code == 2 and "roost software pack" in directory.error_line
    assert unknown.code == 5 and unknown.error_line.startswith("roost: error: 404 ")
    assert reader.code == 4 and "403" in reader.error_line

    deleted = await roost.ok("software", "delete", "roost-1.2.0")
    assert deleted.out.strip() == "Release roost-1.2.0 deleted."
    gone, after = await asyncio.gather(
        roost("software", "delete", "roost-1.2.0"), roost.js("software", "list")
    )
    assert gone.code == 5 and "404" in gone.error_line
    assert [r["id"] for r in after["releases"]] == ["roost-1.1.0"]


@pytest.mark.slow
async def test_no_strategy_and_no_deployment_are_one_line(stack, tmp_path: Path) -> None:
    svc = stack.start("software", ROOST_ALLOW_UNSIGNED_RELEASES="true")
    roost = Roost(svc.url, stack.tokens.admin, tmp_path)
    unreachable_roost = Roost(f"http://127.0.0.1:{free_port()}", None, tmp_path)
    shown, watched, no_deploy = await asyncio.gather(
        roost("strategy", "show"),
        roost("strategy", "show", "--watch"),
        roost("software", "deploy-show"),
    )
    nothing, usage, unreachable = await asyncio.gather(
        roost("strategy", "create", "roost-9.9.9"),
        roost("strategy", "create", "r", "--worker-apply-type", "sideways"),
        unreachable_roost("software", "list"),
    )
    for run in (shown, watched):
        assert run.code == 5 and run.out == ""
        assert run.error_line == (
            "roost: error: 404 there is no update strategy; create one with "
            "'roost strategy create RELEASE'"
        )
    assert no_deploy.code == 5 and no_deploy.error_line.startswith("roost: error: 404 ")
    assert nothing.code in (1, 5) and nothing.error_line.startswith("roost: error: ")
    assert usage.code == 2 and "--worker-apply-type" in usage.error_line
    assert unreachable.code == 3 and "cannot reach the software service" in unreachable.error_line


# The watch view: pure, from canned documents ---------------------------------------------------


def canned_strategy() -> dict[str, Any]:
    """Applying: controllers done, workers in parallel mid-install, one stage to go."""

    def step(name: str, state: str, hosts: list[str] | None = None, reason: str = "") -> dict:
        return {"name": name, "hosts": hosts or [], "state": state, "reason": reason,
                "started_at": None, "finished_at": None}  # fmt: skip

    done = ["query-alarms", "swact", "lock", "install", "unlock", "wait-ready"]
    return {
        "uuid": "5b0c",
        "release": "roost-1.1.0",
        "version": "1.1.0",
        "state": "applying",
        "controller_apply_type": "serial",
        "worker_apply_type": "parallel",
        "max_parallel_worker_hosts": 2,
        "default_instance_action": "migrate",
        "alarm_restrictions": "strict",
        "stop_on_failure": True,
        "reason": "",
        "current_stage": 1,
        "steps_done": 8,
        "steps_total": 16,
        "created_at": "2026-01-02T10:00:00Z",
        "started_at": "2026-01-02T10:00:05Z",
        "finished_at": None,
        "stages": [
            {
                "index": 0,
                "name": "controllers",
                "hosts": ["controller-0"],
                "state": "done",
                "reason": "",
                "steps": [step(n, "done", ["controller-0"]) for n in done],
            },
            {
                "index": 1,
                "name": "workers",
                "hosts": ["worker-0", "worker-1"],
                "state": "in-progress",
                "reason": "",
                "steps": [
                    step("query-alarms", "done"),
                    step("lock", "done", ["worker-0", "worker-1"]),
                    step("install", "in-progress", ["worker-0", "worker-1"], "rebooting"),
                    step("unlock", "initial", ["worker-0", "worker-1"]),
                    step("wait-ready", "initial", ["worker-0", "worker-1"]),
                ],
            },
            {
                "index": 2,
                "name": "workers",
                "hosts": ["worker-2"],
                "state": "initial",
                "reason": "",
                "steps": [
                    step(n, "initial", ["worker-2"])
                    for n in ("lock", "install", "reboot", "unlock", "wait-ready")
                ],
            },
        ],
    }


def test_watch_view_shows_progress_stage_step_and_hosts() -> None:
    doc = canned_strategy()
    text = strategy_cli.plain_text(
        strategy_cli.watch_view(doc, now=strategy_cli._parse_time("2026-01-02T10:02:10Z"))
    )
    lines = text.splitlines()
    assert "Strategy roost-1.1.0  applying  (2m05s)" in lines[0]
    assert "8/16 steps (50%)" in lines[1] and "━" in lines[1]
    assert "Stage 2/3 workers on worker-0, worker-1: in-progress" in text
    assert "Step install on worker-0, worker-1: in-progress — rebooting" in text
    rows = {line.split()[1]: line for line in lines if line.startswith("│ ")}
    assert "1/3 controllers" in rows["controller-0"] and "done" in rows["controller-0"]
    assert "wait-ready" in rows["controller-0"]
    for worker in ("worker-0", "worker-1"):
        assert "2/3 workers" in rows[worker] and "in-progress" in rows[worker]
        assert "install" in rows[worker] and "rebooting" in rows[worker]
    assert "3/3 workers" in rows["worker-2"] and "waiting" in rows["worker-2"]


def test_watch_view_of_a_failed_strategy_and_outcome_lines() -> None:
    doc = canned_strategy()
    workers = doc["stages"][1]
    workers["state"] = "failed"
    workers["reason"] = "worker-1 did not come back"
    workers["steps"][2]["state"] = "done"
    workers["steps"][3]["state"] = "done"
    workers["steps"][4].update(state="failed", hosts=["worker-1"], reason="not available in 900 s")
    doc.update(state="apply-failed", reason="stage 2 failed", steps_done=10, current_stage=1,
               finished_at="2026-01-02T10:20:05Z")  # fmt: skip
    text = strategy_cli.plain_text(strategy_cli.watch_view(doc, note="503 busy (still trying)"))
    assert "apply-failed" in text.splitlines()[0] and "(20m00s)" in text.splitlines()[0]
    assert "10/16 steps (62%)" in text
    assert "Step wait-ready on worker-1: failed — not available in 900 s" in text
    rows = {line.split()[1]: line for line in text.splitlines() if line.startswith("│ ")}
    assert "failed" in rows["worker-1"] and "not available in 900 s" in rows["worker-1"]
    assert "failed" in rows["worker-0"] and "worker-1 did not come back" in rows["worker-0"]
    assert "503 busy (still trying)" in text
    assert strategy_cli.outcome(doc) == (
        "strategy apply-failed in stage 2/3 workers after 10/16 steps in 20m00s: stage 2 failed"
    )

    applied = canned_strategy()
    for stage in applied["stages"]:
        stage["state"] = "done"
        for s in stage["steps"]:
            s["state"] = "done"
    applied.update(state="applied", steps_done=16, current_stage=None,
                   finished_at="2026-01-02T10:30:05Z")  # fmt: skip
    assert strategy_cli.outcome(applied) == (
        "Strategy applied: roost-1.1.0 on 4 hosts (16/16 steps) in 30m00s."
    )
    assert "16/16 steps (100%)" in strategy_cli.plain_text(strategy_cli.watch_view(applied))


def test_watch_view_survives_a_sparse_document() -> None:
    """Fields missing or null (a service mid-change): still a view, never an exception."""
    for doc in ({}, {"state": "ready-to-apply", "stages": None}, {"stages": [{"steps": [{}]}]}):
        text = strategy_cli.plain_text(strategy_cli.watch_view(doc))
        assert "steps (" in text
    sparse = {"state": "applying", "steps_total": 3, "stages": [{"hosts": ["h"], "steps": []}]}
    text = strategy_cli.plain_text(strategy_cli.watch_view(sparse))
    assert "0/3 steps (0%)" in text and "h" in text


# The watch loop against a fake GET /v1/strategy ------------------------------------------------


class FakeStrategyService:
    """``GET /v1/strategy`` answers the next canned document each time (then the last one);
    ``POST /v1/strategy/apply`` is accepted."""

    def __init__(self, documents: list[dict[str, Any]]) -> None:
        self.port = free_port()
        self.documents = documents
        self.checks: list[dict[str, Any]] = []
        self.gets = 0
        self.applies = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _get(self, request: Request) -> JSONResponse:
        doc = self.documents[min(self.gets, len(self.documents) - 1)]
        self.gets += 1
        return JSONResponse(doc)

    async def _precheck(self, request: Request) -> JSONResponse:
        body = await request.json()
        ok = all(c["ok"] for c in self.checks)
        return JSONResponse({"release": body["release"], "ok": ok, "checks": self.checks})

    async def _apply(self, request: Request) -> JSONResponse:
        self.applies += 1
        return JSONResponse({"uuid": "5b0c", "state": "applying", "detail": "applying"}, 202)

    async def __aenter__(self) -> FakeStrategyService:
        app = Starlette(
            routes=[
                Route("/v1/strategy", self._get, methods=["GET"]),
                Route("/v1/strategy/apply", self._apply, methods=["POST"]),
                Route("/v1/deploy/precheck", self._precheck, methods=["POST"]),
            ]
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        await eventually(lambda: self._server is not None and self._server.started, what="fake")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None and self._task is not None
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await self._task


def progressed(doc: dict[str, Any], state: str, done: int) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out.update(state=state, steps_done=done, finished_at="2026-01-02T10:30:05Z")
    return out


async def test_apply_watch_polls_until_applied_or_failed(tmp_path: Path) -> None:
    doc = canned_strategy()
    sequence = [doc, progressed(doc, "applying", 12), progressed(doc, "applied", 16)]
    async with FakeStrategyService(sequence) as fake:
        roost = Roost(fake.url, "t", tmp_path)
        run = await roost.ok("strategy", "apply", "--watch")
        assert fake.applies == 1 and fake.gets == 3
        assert run.out.strip().endswith("(16/16 steps) in 30m00s."), run.out
        assert "Strategy applied: roost-1.1.0 on 4 hosts" in run.out
        assert "16/16 steps (100%)" in run.out  # the last view is left on screen

    failed = progressed(doc, "apply-failed", 9)
    failed["reason"] = "worker-1 install failed"
    async with FakeStrategyService([doc, failed]) as fake:
        roost = Roost(fake.url, "t", tmp_path)
        run = await roost("strategy", "show", "--watch")
        assert run.code == 1 and fake.applies == 0
        assert run.error_line.startswith("roost: error: strategy apply-failed after 9/16 steps")
        assert run.error_line.endswith(": worker-1 install failed")
        as_json = await roost("--format", "json", "strategy", "show", "--watch")
        assert as_json.code == 1 and as_json.json()["state"] == "apply-failed"


async def test_ctrl_c_stops_watching_not_the_strategy(tmp_path: Path) -> None:
    async with FakeStrategyService([canned_strategy()]) as fake:  # applying, forever
        env = clean_env(tmp_path, ROOST_TOKEN="t")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "roost_cli.main", "--software-url", fake.url,
            "strategy", "show", "--watch",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await eventually(lambda: fake.gets >= 3, what="a few polls")
        os.kill(proc.pid, signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=10)
        assert proc.returncode == 130, err
        lines = err.decode().strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err.decode()
        assert "stopped watching; the strategy is still applying" in lines[0]
        assert "does not abort it" in lines[0]
        assert "8/16 steps (50%)" in out.decode()


async def test_deploy_precheck_table_and_exit_code(tmp_path: Path) -> None:
    """Against the fake (the real checks need the host, service and fault services)."""
    async with FakeStrategyService([canned_strategy()]) as fake:
        roost = Roost(fake.url, "t", tmp_path)
        fake.checks = [
            {"check": "release-state", "host": None, "ok": True, "reason": ""},
            {"check": "reachable", "host": "worker-0", "ok": True, "reason": ""},
            {"check": "disk", "host": "worker-1", "ok": False, "reason": "40 MB free, 876 needed"},
        ]
        failed = await roost("software", "deploy-precheck", "roost-1.1.0")
        assert failed.code == 1
        assert failed.error_line == (
            "roost: error: precheck of roost-1.1.0 failed: 1 of 3 checks failed"
        )
        rows = [line for line in failed.out.splitlines() if line.startswith("│ ")]
        assert "✓" in rows[0] and "release-state" in rows[0] and "│ -" in rows[0]
        assert "✗" in rows[2] and "worker-1" in rows[2] and "40 MB free, 876 needed" in rows[2]
        as_json = await roost("--format", "json", "software", "deploy-precheck", "roost-1.1.0")
        assert as_json.code == 1 and as_json.json()["ok"] is False
        fake.checks = fake.checks[:2]
        passed = await roost.ok("software", "deploy-precheck", "roost-1.1.0")
        assert passed.out.strip().endswith("Precheck of roost-1.1.0 passed (2 checks).")


# A real rollout, driven by the CLI -------------------------------------------------------------


async def run_long(roost: Roost, *args: str, within: float) -> Run:
    """``roost`` with more time than RoostRunner's 30 s (a watched rollout)."""
    env = clean_env(roost.home, ROOST_TOKEN=roost.token or "")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "roost_cli.main", roost.url_flag, roost.url, *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=within)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


@pytest.mark.slow
@pytest.mark.timeout(360)
async def test_cli_rollout_precheck_strategy_apply_watch(stack, tmp_path: Path) -> None:
    """Pack, upload, precheck, create and apply --watch a strategy over a real 2-host site."""
    async with open_site(stack, tmp_path, 2, software=True) as site:
        roost = Roost(site.software.url, stack.tokens.admin, tmp_path)
        key = tmp_path / "site.pem"
        key.write_text(site.release_key)
        source = release_source(tmp_path / "r1", "roost-1.1.0", "1.1.0")
        archive = tmp_path / "r1.tar.gz"
        await roost.ok("software", "pack", str(source), "-o", str(archive), "--key", str(key))
        uploaded = await roost.ok("software", "upload", str(archive))
        assert "signed by " in uploaded.out

        precheck = await roost.ok("software", "deploy-precheck", "roost-1.1.0")
        assert "✗" not in precheck.out and "✓" in precheck.out
        last_line = precheck.out.strip().splitlines()[-1]
        assert last_line.startswith("Precheck of roost-1.1.0 passed ("), precheck.out

        created = await roost.ok(
            "strategy", "create", "roost-1.1.0", "--worker-apply-type", "serial",
            "--alarm-restrictions", "relaxed",
        )  # fmt: skip
        assert "ready-to-apply" in created.out and "Stages" in created.out
        assert "controller-0" in created.out and "worker-0" in created.out

        watched = await run_long(roost, "strategy", "apply", "--watch", within=240)
        assert watched.code == 0, watched.err
        assert watched.err == ""
        last = watched.out.strip().splitlines()[-1]
        assert last.startswith("Strategy applied: roost-1.1.0 on "), watched.out
        shown = await roost.js("strategy", "show")
        assert shown["state"] == "applied"
        done, total = shown["steps_done"], shown["steps_total"]
        assert f"({done}/{total} steps)" in last and f"{total}/{total} steps (100%)" in watched.out
        details = await roost.ok("strategy", "show", "--details")
        assert "Steps" in details.out and "applied" in details.out
        hosts = await roost.js("software", "hosts")
        assert {h["hostname"]: h["running_version"] for h in hosts["hosts"]} == {
            "controller-0": "1.1.0",
            "worker-0": "1.1.0",
        }
        table = await roost.ok("software", "hosts")
        assert "controller-0" in table.out and "1.1.0" in table.out
        busy = await roost("software", "delete", "roost-1.1.0")
        assert busy.code == 1 and busy.error_line.startswith("roost: error: 409 ")
        deleted = await roost.ok("strategy", "delete")
        assert deleted.out.strip() == "Strategy deleted."
