"""Forged events, as an attacker who holds some broker credentials would send them: the shared
admin user, another service's user, or the agents' user. Real broker, real services.

A consumer believes an event only from its owner's broker user (``user_id``, which the broker
itself checks): a forged ``config.host.updated`` changes no BMC address (the host service would
fence the attacker's machine with it), a forged ``fault.alarm.clear`` clears nothing, and a
forged event parked and then replayed is still not believed."""

from __future__ import annotations

import uuid

import aio_pika
import aiormq
import pytest
from aio_pika import Message

from roost_shared.bus import EVENTS_EXCHANGE, Bus, to_message
from roost_shared.catalog import AlarmClear, AlarmSet, HostRecord, Personality, Severity
from roost_shared.events import Envelope
from roost_shared.metrics import Metrics
from roost_shared.settings import RoostSettings
from tests.config.helpers import new_mac
from tests.support.hosts import host_where, publish
from tests.support.waiting import eventually

GENUINE_BMC = "10.0.0.9"
ATTACKER_BMC = "10.6.6.6"


async def as_user(stack, service: str) -> Bus:
    """A bus connected as ``service``'s broker user (``attacker``: the URL's shared admin)."""
    bus = Bus(RoostSettings(service=service, amqp_url=stack.amqp_url), Metrics(f"as-{service}"))
    await bus.connect(deadline_s=10)
    stack.buses.append(bus)
    return bus


def host(uuid_: str, mac: str, bmc: str, hostname: str = "worker-0") -> HostRecord:
    return HostRecord(
        uuid=uuid_,
        hostname=hostname,
        personality=Personality.worker,
        mgmt_mac=mac,
        install_state="provisioned",
        bmc_type="ipmi",
        bmc_address=bmc,
    )


async def forged_letters(http, count: int) -> list[dict]:
    async def parked():
        letters = (await http.get("/v1/dead-letters")).json()["dead_letters"]
        forged = [d for d in letters if d["reason"].startswith("forged")]
        return forged if len(forged) >= count else None

    return await eventually(parked, what=f"{count} forged events parked")


async def test_forged_host_updates_change_no_bmc_address(stack):
    host_service = stack.start("host")
    config = await stack.bus()  # publishes config's events as config's user
    record = host(str(uuid.uuid4()), new_mac(), GENUINE_BMC)
    await publish(config, "added", record)
    forged = Envelope.of(
        host(record.uuid, record.mgmt_mac, ATTACKER_BMC),
        type="config.host.updated",
        source="roost/config",
    )
    for who in ("attacker", "software", "agent"):
        sender = await as_user(stack, who)
        if who != "attacker":
            # A service's or the agents' user may not even write config's event types (topic
            # permission).
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
                await sender.publish([forged.model_copy(update={"id": str(uuid.uuid4())})])
            # ... so it tries through the default exchange, straight into the host's queue
            # (on a new connection: the broker closed the channel of the refused publish).
            sender = await as_user(stack, who)
            await sender.publish_raw(
                to_message(forged.model_copy(update={"id": str(uuid.uuid4())})),
                exchange="",
                routing_key="host.inventory",
            )
            continue
        await sender.publish([forged.model_copy(update={"id": str(uuid.uuid4())})])

    async with host_service.client(stack.tokens.admin) as http:
        letters = await forged_letters(http, 3)
        senders = {d["sender"].split(".", 1)[0] for d in letters}  # less the site's suffix
        assert senders == {"guest", "roost-software", "roost-agent"}
        h = await host_where(http, "worker-0", lambda h: True, "worker-0 learned")
        assert h["bmc_address"] == GENUINE_BMC

        # Replayed by the operator, a forged event is still the attacker's: parked again.
        first = letters[0]
        assert (await http.post(f"/v1/dead-letters/{first['id']}/replay")).status_code == 200

        async def parked_again():
            letters = (await http.get("/v1/dead-letters")).json()["dead_letters"]
            again = [d for d in letters if d["message_id"] == first["message_id"]]
            return again[0] if again and again[0]["id"] != first["id"] else None

        again = await eventually(parked_again, what="the replayed forgery parked again")
        assert again["sender"] == first["sender"] and again["reason"].startswith("forged")
        # The genuine update still applies.
        await publish(config, "updated", host(record.uuid, record.mgmt_mac, "10.0.0.10"))
        await host_where(
            http, "worker-0", lambda h: h["bmc_address"] == "10.0.0.10", "genuine update"
        )


async def test_no_publisher_can_borrow_another_users_id(stack):
    """The broker refuses a message whose ``user_id`` is not the connection's own user."""
    connection = await aio_pika.connect(stack.amqp_url)  # the shared admin user
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        message = Message(b"{}", user_id="roost-config")
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
            await exchange.publish(message, routing_key="config.host.updated")


async def test_only_the_raiser_clears_its_alarm(stack):
    fault = stack.start("fault")
    entity = f"host=worker-{uuid.uuid4().hex[:6]}"
    raised = AlarmSet(
        alarm_id="200.004",
        entity_instance_id=entity,
        severity=Severity.critical,
        reason_text="worker has failed",
        entity_type_id="host",
    )
    producer = await stack.bus()
    await producer.publish([Envelope.of(raised, source="roost/host")])  # as the host service

    async with fault.client(stack.tokens.reader) as http:

        async def active() -> list[dict]:
            body = (
                await http.get(
                    "/v1/alarms", params={"q.field": "entity_instance_id", "q.value": entity}
                )
            ).json()
            return body["alarms"]

        await eventually(active, what="the host service's alarm raised")
        clear_one = AlarmClear(alarm_id="200.004", entity_instance_id=entity)
        clear_all = AlarmClear(entity_instance_id=entity)
        config = await as_user(stack, "config")
        await config.publish(
            [
                Envelope.of(clear_one, source="roost/host"),
                Envelope.of(clear_all, source="roost/host"),
            ]
        )
        shared = await as_user(stack, "attacker")
        await shared.publish([Envelope.of(clear_one, source="roost/host")])

        async def refused() -> bool:
            metrics = (await http.get("/metrics")).text
            return 'fault_changes_refused_total{sender="config"} 1.0' in metrics and (
                'bus_dead_lettered_total{queue="fault.commands",reason="forged"} 1.0' in metrics
            )

        await eventually(refused, what="both forged clears refused")
        assert [a["alarm_id"] for a in await active()] == ["200.004"]

        await producer.publish([Envelope.of(clear_one, source="roost/host")])
        await eventually(lambda: _none(active), what="the raiser's own clear")


async def _none(probe) -> bool:
    return not await probe()
