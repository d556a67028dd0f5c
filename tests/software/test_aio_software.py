"""``make run``'s part for the software service: its peers' URLs and token, and the site's
release signing key pair made once."""

from __future__ import annotations

import base64

from roost_shared.releases import public_key_of
from roost_sim.aio import service_env
from roost_sim.credentials import ensure_release_keys


def test_software_env_names_every_installed_peer_and_its_own_peer_token():
    installed = ["config", "fault", "host", "service", "software"]
    env = service_env("software", installed, {"software": "software-peer-token"})
    assert env == {
        "ROOST_HOST_URL": "http://127.0.0.1:8103",
        "ROOST_SERVICE_URL": "http://127.0.0.1:8104",
        "ROOST_FAULT_URL": "http://127.0.0.1:8102",
        "ROOST_CONFIG_URL": "http://127.0.0.1:8101",
        "ROOST_PEER_TOKEN": "software-peer-token",
    }
    assert "ROOST_SERVICE_URL" not in service_env("software", ["host", "software"], {})


def test_release_keys_made_once(tmp_path):
    private = ensure_release_keys(tmp_path)
    assert private == tmp_path / "release-signing.pem"
    assert private.stat().st_mode & 0o777 == 0o600
    pem = private.read_text()
    lines = (tmp_path / "release-keys.pub").read_text().splitlines()
    keys = [line for line in lines if line and not line.startswith("#")]
    assert keys == [public_key_of(pem)] and len(base64.b64decode(keys[0])) == 32
    # Kept across runs.
    assert ensure_release_keys(tmp_path) == private and private.read_text() == pem
    assert (tmp_path / "release-keys.pub").read_text().splitlines() == lines
