"""Service-to-service calls carry peer tokens, and a peer token is worth only what peers need.

Against real host, config and fault processes: a service's peer token (role ``peer``, as
``make run`` and the tests write them) reads everything, and may lock and unlock a host (the
software strategy's steps), but may not reboot, power off or reinstall one, create or delete
inventory, or clear alarms: whoever steals it from a service's environment or its traffic gets
no admin. Sites configured with environment tokens derive the same kind of token from the admin
token (one-way): the services accept it with the peer role and a peer's own token is that one.
"""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from roost_shared.auth import Authenticator, Role, derive_peer_token, own_peer_token
from roost_shared.settings import RoostSettings
from tests.config.helpers import new_mac

pytestmark = pytest.mark.slow


async def test_a_peer_token_reads_and_locks_but_is_no_admin(stack):
    fault = stack.start("fault")
    host = stack.start("host", ROOST_FAULT_URL=fault.url)
    config = stack.start("config", ROOST_FAULT_URL=fault.url)
    peer = stack.tokens.peers["software"]
    async with (
        config.client(stack.tokens.admin) as admin,
        config.client(peer) as as_peer,
        host.client(peer) as host_peer,
        fault.client(peer) as fault_peer,
    ):
        body = {"hostname": "peer-victim", "personality": "worker", "mgmt_mac": new_mac()}
        r = await admin.post("/v1/hosts", json=body)
        assert r.status_code == 201, r.text
        victim = r.json()

        # Reads: allowed.
        assert (await as_peer.get("/v1/hosts")).status_code == 200
        assert (await fault_peer.get("/v1/alarms")).status_code == 200
        assert (await host_peer.get("/v1/hosts")).status_code == 200

        # What no peer needs: refused, whatever the service.
        body2 = {"hostname": "peer-made", "personality": "worker", "mgmt_mac": new_mac()}
        r = await as_peer.post("/v1/hosts", json=body2)
        assert r.status_code == 403, r.text
        r = await as_peer.delete(f"/v1/hosts/{victim['uuid']}")
        assert r.status_code == 403, r.text
        r = await as_peer.patch(f"/v1/hosts/{victim['uuid']}", json={"location": "x"})
        assert r.status_code == 403, r.text
        r = await fault_peer.delete("/v1/alarms/00000000-0000-0000-0000-000000000000")
        assert r.status_code == 403, r.text
        for action in ("reboot", "power-off", "reset", "reinstall"):
            r = await host_peer.post(
                "/v1/hosts/peer-victim/actions", json={"action": action, "reason": "stolen"}
            )
            assert r.status_code == 403, (action, r.text)
            assert "peer" in r.json()["detail"]

        # What a strategy needs: lock (the host service decides on the state: never a 403).
        r = await host_peer.post(
            "/v1/hosts/peer-victim/actions", json={"action": "lock", "reason": "strategy"}
        )
        assert r.status_code not in (401, 403), r.text


def test_environment_sites_derive_peer_tokens_from_the_admin_token():
    settings = RoostSettings(service="software", admin_token=SecretStr("the-admin-token"))
    mine = own_peer_token(settings)
    assert mine is not None and mine.get_secret_value() != "the-admin-token"
    assert mine.get_secret_value() == derive_peer_token("the-admin-token", "software")
    host_settings = RoostSettings(service="host", admin_token=SecretStr("the-admin-token"))
    accepting = Authenticator(host_settings)
    principal = accepting.principal(mine.get_secret_value())
    assert principal is not None and principal.role is Role.peer and principal.peer
    assert principal.name == "peer-software"
    # A configured token wins; another site's admin token derives other tokens.
    assert own_peer_token(settings, SecretStr("explicit")).get_secret_value() == "explicit"
    other = Authenticator(RoostSettings(service="host", admin_token=SecretStr("other-site")))
    assert other.principal(mine.get_secret_value()) is None
    # ROOST_PEER_SECRET, when set, replaces the admin token as the secret.
    split = RoostSettings(
        service="software", admin_token=SecretStr("a"), peer_secret=SecretStr("peer-secret")
    )
    assert own_peer_token(split).get_secret_value() == derive_peer_token("peer-secret", "software")
