"""An admin token (or a stolen one) must not turn the fault service's webhooks into a way of
reaching what only the control plane can reach: this host's services, the cloud's metadata
endpoint, the site's private networks. And a reader must not learn a receiver's password."""

from __future__ import annotations

import base64
import ipaddress
import socket

import pytest

from roost_sim.ports import free_port
from tests.support.fault import alarm
from tests.support.receiver import WebhookReceiver
from tests.support.waiting import eventually

#: What a site that allow-lists nothing gets (the default).
NO_ALLOW_LIST = {"ROOST_WEBHOOK_ALLOW_NETS": "[]"}


def _loopback_name() -> str:
    """A host name (not an address, not ``localhost``) that resolves to this host."""
    name = socket.gethostname()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
    except OSError:
        addresses = set()
    if not addresses or not all(ipaddress.ip_address(a).is_loopback for a in addresses):
        pytest.skip(f"this host's name {name!r} does not resolve to loopback only: {addresses}")
    return name


async def test_webhooks_to_loopback_metadata_or_private_addresses_are_refused(stack):
    fault = stack.start("fault", **NO_ALLOW_LIST)
    receiver = WebhookReceiver(free_port())
    await receiver.start()
    try:
        async with fault.client(stack.tokens.admin) as http:
            for url in [
                receiver.url,  # a service on the fault service's own host
                "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
                f"http://localhost:{receiver.port}/hook",
                "http://[::1]:8101/v1/hosts",
                "http://[::ffff:127.0.0.1]:8101/v1/hosts",
                "http://2130706433:8101/",  # 127.0.0.1 as one number
                "http://10.0.0.1/hook",
                "http://192.168.1.1/hook",
                "http://0.0.0.0:8102/v1/alarms",
            ]:
                r = await http.post("/v1/subscriptions", json={"url": url})
                assert r.status_code == 422, (url, r.status_code, r.text)
                assert r.headers["content-type"].startswith("application/problem+json")
                assert [e["field"] for e in r.json()["errors"]] == ["url"], r.text
            listed = (await http.get("/v1/subscriptions")).json()["subscriptions"]
            assert listed == []
            metrics = (await http.get("/metrics")).text
            assert 'webhook_refused_total{reason="loopback",stage="create"}' in metrics
        assert receiver.posts == 0
    finally:
        await receiver.stop()


async def test_a_name_that_resolves_to_loopback_is_refused_at_delivery(stack):
    name = _loopback_name()
    fault = stack.start("fault", **NO_ALLOW_LIST)
    bus = await stack.bus()
    receiver = WebhookReceiver(free_port())
    await receiver.start()
    try:
        async with fault.client(stack.tokens.admin) as http:
            r = await http.post(
                "/v1/subscriptions", json={"url": f"http://{name}:{receiver.port}/hook"}
            )
            assert r.status_code == 201, r.text  # a name is only known at delivery
            sub = r.json()["uuid"]
            await bus.publish([alarm("host=ssrf-1", severity="critical")])

            async def refused():
                view = (await http.get(f"/v1/subscriptions/{sub}")).json()
                return view if view["state"] == "refused" and view["attempts"] >= 2 else None

            view = await eventually(refused, timeout=20, what="delivery refused twice")
            assert "loopback" in view["last_error"], view
            assert view["delivered"] == 0 and view["pending"] == 1
            metrics = (await http.get("/metrics")).text
            assert 'webhook_refused_total{reason="loopback",stage="deliver"}' in metrics
        assert receiver.posts == 0, receiver.received
    finally:
        await receiver.stop()


async def test_a_readers_view_hides_the_receivers_password(stack):
    # Allow-listed here, so the receiver on 127.0.0.1 is reached and shows what it was sent.
    fault = stack.start("fault", ROOST_WEBHOOK_ALLOW_NETS='["127.0.0.0/8"]')
    bus = await stack.bus()
    receiver = WebhookReceiver(free_port())
    await receiver.start()
    url = f"http://hook-user:S3cret-Hook-Pw@127.0.0.1:{receiver.port}/hook"
    try:
        async with fault.client(stack.tokens.admin) as admin:
            r = await admin.post("/v1/subscriptions", json={"url": url})
            assert r.status_code == 201, r.text
            sub = r.json()["uuid"]
            assert r.json()["url"] == url  # the admin who set it sees it
            await bus.publish([alarm("host=ssrf-2")])
            await eventually(lambda: receiver.received, what="the notification")
        expected = "Basic " + base64.b64encode(b"hook-user:S3cret-Hook-Pw").decode()
        assert receiver.authorizations[0] == expected  # the credentials still work

        async with fault.client(stack.tokens.reader) as reader:
            one = await reader.get(f"/v1/subscriptions/{sub}")
            listed = await reader.get("/v1/subscriptions")
            events = await reader.get("/v1/event_log", params={"expand": True})
        for response in (one, listed, events):
            assert response.status_code == 200, response.text
            assert "S3cret-Hook-Pw" not in response.text
            assert "hook-user" not in response.text
        assert one.json()["url"] == f"http://***@127.0.0.1:{receiver.port}/hook"
        assert listed.json()["subscriptions"][0]["url"] == one.json()["url"]
        assert "S3cret-Hook-Pw" not in fault.log_path.read_text()
    finally:
        await receiver.stop()
