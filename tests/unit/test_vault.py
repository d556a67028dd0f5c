"""Encryption at rest (roost_shared.vault): the key file is made once, owner-only, shared by
processes starting together, and round-trips secrets."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from roost_shared.vault import KEY_FILE, Vault, load_or_create_key


def test_key_file_is_created_once_with_owner_only_permissions(tmp_path):
    key = load_or_create_key(tmp_path / "state" / KEY_FILE)
    assert (tmp_path / "state" / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(tmp_path / "state" / KEY_FILE) == key
    vault = Vault.from_settings(None, tmp_path / "state")
    token = vault.encrypt("hunter2")
    assert "hunter2" not in token and vault.decrypt(token) == "hunter2"


def test_key_from_settings_wins_and_a_wrong_key_cannot_decrypt(tmp_path):
    key = Fernet.generate_key().decode()
    vault = Vault.from_settings(SecretStr(key), tmp_path)
    assert not (tmp_path / KEY_FILE).exists()
    token = vault.encrypt("s3cret")
    with pytest.raises(ValueError, match="cannot be decrypted"):
        Vault(Fernet.generate_key()).decrypt(token)
    with pytest.raises(SystemExit, match="Fernet key"):
        Vault.from_settings(SecretStr("not-a-key"), tmp_path)


def test_loose_key_file_permissions_are_tightened(tmp_path):
    path = tmp_path / KEY_FILE
    path.write_bytes(Fernet.generate_key())
    path.chmod(0o644)
    load_or_create_key(path)
    assert path.stat().st_mode & 0o777 == 0o600


def test_processes_starting_together_share_one_key(tmp_path):
    # Config and host start together in one state directory: every process must read the key
    # the first one wrote, never an empty or half-written file, never a key of its own.
    import subprocess
    import sys

    state = tmp_path / "state"
    code = (
        "import sys; from pathlib import Path; from roost_shared.vault import load_or_create_key; "
        "sys.stdout.write(load_or_create_key(Path(sys.argv[1])).decode())"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(state / KEY_FILE)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(8)
    ]
    keys = {p.communicate(timeout=60)[0] for p in procs}
    assert len(keys) == 1 and Fernet(keys.pop().encode())
    assert [p.name for p in state.iterdir()] == [KEY_FILE]  # no temporary file left behind
