"""Tokens rotated and revoked without a restart (issue 9): the fault and host services, running as
real processes, follow the tokens file an operator changes with ``roost token``.

* a revoked token is refused (401) by both within a second, by the same processes;
* a new token works at once, with its role;
* a rotated token's old value keeps working until its grace period ends, then 401;
* a half-written (or emptied) tokens file locks nobody out: the previous tokens stay until a
  good file replaces it.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from roost_shared.auth import Role, new_token, write_tokens_file
from tests.support.cli import Run, clean_env, run_cli
from tests.support.problems import problem
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

#: A GET any valid token may make, per service.
READ = {"fault": "/v1/alarms", "host": "/v1/hosts"}


async def roost_token(home: Path, tokens_file: Path, *args: str) -> Run:
    """``roost --format json token ... --tokens-file F`` as the operator runs it."""
    run = await run_cli(
        ["--format", "json", "token", *args, "--tokens-file", str(tokens_file)], clean_env(home)
    )
    assert run.code == 0, run.err
    return run


async def status(url: str, token: str, path: str) -> int:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        return (await http.get(path, headers={"Authorization": f"Bearer {token}"})).status_code


@pytest.fixture
def site(stack, tmp_path: Path):
    """Fault and host services reading a tokens file of this test's own."""
    tokens_file = tmp_path / "tokens.json"
    admin, ops = new_token(), new_token()
    write_tokens_file(tokens_file, {"admin": (Role.admin, admin), "ops": (Role.admin, ops)})
    env = {"ROOST_AUTH_TOKENS_FILE": str(tokens_file)}
    services = {name: stack.start(name, **env) for name in READ}
    return services, tokens_file, admin, ops


async def all_status(services, token: str) -> set[int]:
    return {await status(svc.url, token, READ[name]) for name, svc in services.items()}


async def test_revoked_token_is_refused_within_a_second_and_a_new_one_works(site, tmp_path):
    services, tokens_file, admin, ops = site
    pids = {name: svc.proc.proc.pid for name, svc in services.items()}
    assert await all_status(services, ops) == {200}

    await roost_token(tmp_path, tokens_file, "revoke", "ops")
    revoked_at = time.monotonic()
    await eventually(
        lambda: _is(all_status(services, ops), {401}), timeout=1.0, what="ops refused everywhere"
    )
    print(f"revoked token refused {time.monotonic() - revoked_at:.3f}s after the revoke")
    async with httpx.AsyncClient(base_url=services["fault"].url) as http:
        r = await http.get(READ["fault"], headers={"X-Auth-Token": ops})
        assert "revoked" in problem(r, 401)["detail"]
    assert await all_status(services, admin) == {200}  # the others are untouched

    created = (await roost_token(tmp_path, tokens_file, "create", "ci", "--role", "reader")).json()
    assert created["role"] == "reader" and created["token"]
    assert await all_status(services, created["token"]) == {200}  # at once
    async with httpx.AsyncClient(base_url=services["fault"].url) as http:
        r = await http.post(
            "/v1/alarms",
            json={},
            headers={"Authorization": f"Bearer {created['token']}"},
        )
        problem(r, 403)  # its role counts, not only its existence
    # Same processes all along: nothing was restarted.
    assert {name: svc.proc.proc.pid for name, svc in services.items()} == pids
    assert all(svc.proc.proc.poll() is None for svc in services.values())


async def _is(coro, wanted: set[int]) -> bool:
    return await coro == wanted


async def test_rotated_token_works_until_its_grace_ends(site, tmp_path):
    services, tokens_file, _, ops = site
    rotated = (await roost_token(tmp_path, tokens_file, "rotate", "ops", "--grace", "3s")).json()
    new = rotated["token"]
    assert new != ops and rotated["role"] == "admin"
    assert await all_status(services, new) == {200}
    assert await all_status(services, ops) == {200}  # within the grace period
    listed = (await roost_token(tmp_path, tokens_file, "list")).json()["tokens"]
    states = sorted(t["state"].split()[0] for t in listed if t["name"] == "ops")
    assert states == ["active", "until"], listed

    await eventually(
        lambda: _is(all_status(services, ops), {401}), timeout=6.0, what="old ops token refused"
    )
    assert await all_status(services, new) == {200}

    # Rotation without grace: the old value is refused at once.
    again = (await roost_token(tmp_path, tokens_file, "rotate", "ops")).json()["token"]
    assert await all_status(services, new) == {401}
    assert await all_status(services, again) == {200}


async def test_half_written_tokens_file_locks_nobody_out(site, tmp_path):
    services, tokens_file, admin, ops = site
    good = tokens_file.read_text()
    for broken in ("", good[: len(good) // 2], "[{]"):
        tokens_file.write_text(broken)  # in place, as a careless editor would
        assert await all_status(services, admin) == {200}, repr(broken)
        assert await all_status(services, ops) == {200}, repr(broken)
    # A good file again: its content counts (ops is gone from it).
    write_tokens_file(tokens_file, {"admin": (Role.admin, admin)})
    assert await all_status(services, ops) == {401}
    assert await all_status(services, admin) == {200}
    log = services["fault"].log_path.read_text()
    assert "not readable" in log and "keeping the previous tokens" in log
