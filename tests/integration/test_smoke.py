from roost_shared.catalog import AlarmSet, Severity
from roost_shared.events import Envelope
from tests.support.waiting import eventually


async def test_alarm_published_on_bus_is_listed(stack):
    fault = stack.start("fault")
    bus = await stack.bus()
    await bus.publish(
        [
            Envelope.of(
                AlarmSet(
                    alarm_id="100.101",
                    entity_instance_id="host=w1",
                    severity=Severity.major,
                    reason_text="hot",
                ),
                source="test",
            )
        ]
    )
    async with fault.client(stack.tokens.reader) as http:

        async def listed():
            return (await http.get("/v1/alarms")).json()["alarms"]

        alarms = await eventually(listed, what="alarm listed")
    assert alarms[0]["alarm_id"] == "100.101"
