"""``roost token list|create|rotate|revoke`` run as a real process on a tokens file (the running
services' side is tests/integration/test_token_rotation.py)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from roost_shared.auth import Role, digest, issue_token, read_tokens_file, write_tokens_file
from roost_sim.aio import issue_peer_tokens
from tests.support.cli import Run, clean_env, run_cli


async def roost(home: Path, *args: str, **env: str) -> Run:
    return await run_cli(list(args), clean_env(home, **env))


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "auth" / "tokens.json"
    write_tokens_file(
        path, {"admin": (Role.admin, "old-admin-token"), "reader": (Role.reader, "r")}
    )
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_create_prints_the_token_once_and_stores_only_its_digest(tmp_path, tokens_file):
    run = await roost(
        tmp_path, "token", "create", "ops", "--role", "admin", "--tokens-file", str(tokens_file)
    )
    assert run.code == 0, run.err
    token = next(line.split()[1] for line in run.out.splitlines() if line.startswith("token: "))
    text = tokens_file.read_text()
    assert token not in text and digest(token) in text
    assert mode(tokens_file) == 0o600
    assert not [p for p in tokens_file.parent.iterdir() if p.name.startswith(".")]  # no temp left

    listed = await roost(
        tmp_path, "--format", "json", "token", "list", "--tokens-file", str(tokens_file)
    )
    rows = {t["name"]: t for t in json.loads(listed.out)["tokens"]}
    assert rows["ops"]["role"] == "admin" and rows["ops"]["state"] == "active"
    assert token not in listed.out
    table = await roost(tmp_path, "token", "list", "--tokens-file", str(tokens_file))
    assert "ops" in table.out and digest(token)[:12] in table.out

    again = await roost(
        tmp_path, "token", "create", "ops", "--role", "reader", "--tokens-file", str(tokens_file)
    )
    assert again.code == 1 and "exists; rotate it" in again.error_line


async def test_rotate_with_grace_keeps_the_old_token_and_updates_the_credentials(
    tmp_path, tokens_file
):
    creds = tmp_path / "config" / "roost" / "credentials.json"
    creds.parent.mkdir(parents=True)
    creds.write_text(json.dumps({"admin_token": "old-admin-token", "reader_token": "r"}))
    run = await roost(
        tmp_path, "--format", "json", "token", "rotate", "admin", "--grace", "10m",
        "--tokens-file", str(tokens_file),
    )  # fmt: skip
    assert run.code == 0, run.err
    new = run.json()["token"]
    records = [r for r in read_tokens_file(tokens_file) if r.name == "admin"]
    by_digest = {r.sha256: r for r in records}
    assert by_digest[digest("old-admin-token")].not_after is not None  # the grace period
    assert by_digest[digest(new)].not_after is None and by_digest[digest(new)].role is Role.admin
    # The CLI's own token was the rotated one: the credentials file follows, still 0600.
    assert json.loads(creds.read_text()) == {"admin_token": new, "reader_token": "r"}
    assert mode(creds) == 0o600

    # Rotating a token the credentials file does not hold leaves that file alone.
    await roost(
        tmp_path, "token", "create", "ci", "--role", "reader", "--tokens-file", str(tokens_file)
    )
    run = await roost(tmp_path, "token", "rotate", "ci", "--tokens-file", str(tokens_file))
    assert run.code == 0 and "no longer" in run.out, run.err
    assert json.loads(creds.read_text())["admin_token"] == new
    assert [r.not_after for r in read_tokens_file(tokens_file) if r.name == "ci"] == [None]


async def test_revoke_removes_every_token_of_the_name(tmp_path, tokens_file):
    await roost(
        tmp_path, "token", "rotate", "reader", "--grace", "1h", "--tokens-file", str(tokens_file)
    )
    assert len([r for r in read_tokens_file(tokens_file) if r.name == "reader"]) == 2
    run = await roost(tmp_path, "token", "revoke", "reader", "--tokens-file", str(tokens_file))
    assert run.code == 0, run.err
    assert [r.name for r in read_tokens_file(tokens_file)] == ["admin"]


async def test_default_tokens_file_is_the_all_in_one_state(tmp_path, tokens_file):
    run = await roost(tmp_path, "token", "list", ROOST_STATE_DIR=str(tmp_path / "state"))
    assert run.code == 0 and "reader" in run.out, run.err


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (("token", "rotate", "nobody"), 5, "no active token named 'nobody'"),
        (("token", "revoke", "nobody"), 5, "no token named 'nobody'"),
        (("token", "rotate", "admin", "--grace", "soon"), 2, "--grace takes a duration"),
        (("token", "create", "x", "--role", "root"), 2, "root"),
        (("token", "create", "x"), 2, "--role"),
    ],
)
async def test_errors_are_one_line(tmp_path, tokens_file, args, code, words):
    run = await roost(tmp_path, *args, "--tokens-file", str(tokens_file))
    assert run.code == code, (run.code, run.err)
    assert words in run.error_line


async def test_missing_or_broken_tokens_file_is_one_line(tmp_path):
    missing = tmp_path / "nowhere.json"
    run = await roost(tmp_path, "token", "list", "--tokens-file", str(missing))
    assert run.code == 5 and "no tokens file" in run.error_line
    broken = tmp_path / "broken.json"
    broken.write_text("[{half")
    for args in (("list",), ("revoke", "admin"), ("create", "a", "--role", "reader")):
        run = await roost(tmp_path, "token", *args, "--tokens-file", str(broken))
        assert run.code == 1 and "is not a list of token records" in run.error_line, args
    assert broken.read_text() == "[{half"  # never overwritten


def test_make_run_keeps_tokens_made_with_roost_token(tmp_path, monkeypatch):
    from roost_sim.credentials import ensure_credentials

    monkeypatch.setenv("ROOST_CREDENTIALS", str(tmp_path / "credentials.json"))
    creds, path = ensure_credentials(tmp_path / "state")
    write_tokens_file(path, {"ops": (Role.admin, "ops-token")}, keep_others=True)
    again, path = ensure_credentials(tmp_path / "state")  # the next `make run`
    assert again == creds
    assert sorted(r.name for r in read_tokens_file(path)) == ["admin", "ops", "reader"]
    # make run's peer tokens: replaced each run, the others kept; an old admin "peers" goes.
    issue_token(path, "peers", Role.admin, peer=True)
    first = issue_peer_tokens(path)
    second = issue_peer_tokens(path)
    records = {r.name: r for r in read_tokens_file(path)}
    peers = [f"peer-{s}" for s in ("config", "service", "software")]
    assert sorted(records) == sorted(["admin", "ops", "reader", *peers])
    for s in ("config", "service", "software"):
        record = records[f"peer-{s}"]
        assert record.role is Role.peer
        assert record.sha256 == digest(second[s]) != digest(first[s])
