"""Encryption at rest: the key file is made once, owner-only, and round-trips secrets."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from roost_config.vault import KEY_FILE, Vault, load_or_create_key


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
