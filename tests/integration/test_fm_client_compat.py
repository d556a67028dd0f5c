"""StarlingX's own ``fm`` client (python-fmclient) against Roost: the exact requests it sends.

python-fmclient is not on PyPI, so this replays its requests byte for byte as its source builds
them (``fmclient/common/options.py build_url``, ``v1/alarm.py``, ``v1/event_log.py``,
``v1/event_suppression_shell.py``): ``X-Auth-Token``, ``Content-Type: application/json`` on every
request, ``q.*`` parameters sorted by name, and the keys it reads back.
"""

from __future__ import annotations

import urllib.parse

import httpx

from tests.support.fault import alarm
from tests.support.waiting import eventually


def build_url(path: str, q: list[dict] | None, params: list[str]) -> str:
    """python-fmclient's ``options.build_url``."""
    if q:
        query_params: dict[str, list[str]] = {
            "q.field": [],
            "q.value": [],
            "q.op": [],
            "q.type": [],
        }
        for query in q:
            for name in ["field", "op", "value", "type"]:
                query_params[f"q.{name}"].append(query.get(name, ""))
        path += "?" + urllib.parse.urlencode(sorted(query_params.items()), doseq=True)
        for p in params:
            path += f"&{p}"
    elif params:
        path += f"?{params[0]}" + "".join(f"&{p}" for p in params[1:])
    return path


async def test_fm_cli_requests_work_unchanged(stack):
    fault = stack.start("fault")
    bus = await stack.bus()
    await bus.publish(
        [
            alarm("host=controller-0", "100.101", "major"),
            alarm("host=controller-0", "200.005", "critical"),
        ]
    )
    headers = {
        "X-Auth-Token": stack.tokens.admin,
        "User-Agent": "python-fmclient",
        "Content-Type": "application/json",
    }
    async with httpx.AsyncClient(base_url=fault.url, headers=headers) as fm:
        # fm alarm-list
        async def two():
            body = (await fm.get(build_url("/v1/alarms", None, []))).json()
            return body["alarms"] if len(body["alarms"]) == 2 else None

        listed = await eventually(two, what="alarms listed")
        for a in listed:
            assert set(a) >= {
                "uuid",
                "alarm_id",
                "entity_instance_id",
                "severity",
                "timestamp",
                "reason_text",
                "mgmt_affecting",
                "degrade_affecting",
                "suppression_status",
            }
            assert a["mgmt_affecting"] in ("True", "False")
            assert "+" not in a["timestamp"] and len(a["timestamp"].split(".")[1]) == 6

        # fm alarm-list -q 'alarm_id=100.101' --include_suppress
        url = build_url(
            "/v1/alarms",
            [{"field": "alarm_id", "op": "eq", "value": "100.101", "type": ""}],
            ["include_suppress=True"],
        )
        assert [a["alarm_id"] for a in (await fm.get(url)).json()["alarms"]] == ["100.101"]

        # fm alarm-show / alarm-summary
        shown = (await fm.get(f"/v1/alarms/{listed[0]['uuid']}")).json()
        assert shown["alarm_type"] and shown["probable_cause"]
        summary = (await fm.get(build_url("/v1/alarms/summary", None, []))).json()
        assert {k: summary[k] for k in ("critical", "major", "minor", "warnings")} == {
            "critical": 1,
            "major": 1,
            "minor": 0,
            "warnings": 0,
        }
        assert summary["status"] == "critical" and summary["system_uuid"]

        # fm event-list --alarms -l 5
        events = await fm.get(build_url("/v1/event_log", None, ["limit=5", "alarms=True"]))
        assert [e["state"] for e in events.json()["event_log"]] == ["set", "set"]

        # fm event-suppress --alarm_id 100.101,200.005: GET all, PATCH each with the shared,
        # growing patch list, then list the suppressed ones.
        entries = (await fm.get("/v1/event_suppression")).json()["event_suppression"]
        patch: list[dict] = []
        for entry in entries:
            if entry["alarm_id"] in ("100.101", "200.005"):
                patch.append(
                    {"path": "/suppression_status", "value": "suppressed", "op": "replace"}
                )
                r = await fm.patch(f"/v1/event_suppression/{entry['uuid']}", json=patch)
                assert r.status_code == 200 and r.json()["suppression_status"] == "suppressed"
        url = build_url(
            "/v1/event_suppression",
            [{"field": "suppression_status", "op": "eq", "type": "string", "value": "suppressed"}],
            [],
        )
        suppressed = (await fm.get(url)).json()["event_suppression"]
        assert sorted(e["alarm_id"] for e in suppressed) == ["100.101", "200.005"]
        assert (await fm.get("/v1/alarms")).json()["alarms"] == []

        # fm alarm-delete <uuid>; an unknown uuid is a 404 whose body fmclient can read.
        assert (await fm.delete(f"/v1/alarms/{listed[0]['uuid']}")).status_code == 204
        missing = await fm.delete(f"/v1/alarms/{listed[0]['uuid']}")
        assert missing.status_code == 404
        first_key = next(iter(missing.json()))
        assert first_key == "error_message"
        assert "could not be found" in missing.json()[first_key]["faultstring"]
