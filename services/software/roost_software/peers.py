"""The other services' APIs as the software service uses them.

The software service owns releases and strategies only: host states and actions belong to the
host service, service groups to the service service, alarms to fault, personalities to config.
It asks them over HTTP (:class:`roost_shared.peers.Peer`) and acts through their APIs, so a
strategy's locks and swacts are audited and refused exactly like an operator's.
"""

from __future__ import annotations

from typing import Any

from roost_shared.auth import own_peer_token
from roost_shared.peers import Peer, PeerUnavailable, detail
from roost_software.settings import SoftwareSettings

#: Software alarms a strategy never waits for (its own in-progress and failure alarms).
OWN_ALARMS = ("900.",)


class Refused(Exception):
    """A peer refused an action (4xx); ``reason`` is its own words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Peers:
    """One client per peer service, for the app's lifetime."""

    def __init__(self, settings: SoftwareSettings) -> None:
        token, timeout = own_peer_token(settings, settings.peer_token), settings.peer_timeout_s
        self.host_api = Peer("host", settings.host_url, token, timeout)
        self.service_api = Peer("service", settings.service_url, token, timeout)
        self.fault_api = Peer("fault", settings.fault_url, token, timeout)
        self.config_api = Peer("config", settings.config_url, token, timeout)

    async def close(self) -> None:
        for peer in (self.host_api, self.service_api, self.fault_api, self.config_api):
            await peer.close()

    # Hosts (host service: states and actions; config: personalities) -------------------------

    async def host(self, hostname: str) -> dict[str, Any] | None:
        """The host service's view of a host (administrative/operational/availability, task,
        kube, personality, mgmt_mac); ``None`` if it does not know it."""
        return await self.host_api.get(f"/v1/hosts/{hostname}", what=f"read host {hostname}")

    async def hosts(self) -> list[dict[str, Any]]:
        """Every host the host service knows."""
        return await self.host_api.get_all("/v1/hosts", "hosts", what="list hosts")

    async def host_action(self, hostname: str, action: str, reason: str) -> dict[str, Any]:
        """Run a host action (lock, unlock, ...); :class:`Refused` with the host service's
        reason when it refuses (e.g. the last unlocked controller)."""
        response = await self.host_api.request(
            "POST",
            f"/v1/hosts/{hostname}/actions",
            json={"action": action, "reason": reason},
            what=f"{action} {hostname}",
        )
        if response.status_code >= 400:
            raise Refused(detail(response))
        return response.json()

    # Service groups (service service) ---------------------------------------------------------

    async def groups(self) -> list[dict[str, Any]]:
        """Every service group; ``[]`` when no service service is configured."""
        if not self.service_api.configured:
            return []
        return await self.service_api.get_all(
            "/v1/service-groups", "service_groups", what="list service groups"
        )

    async def group_members(self) -> dict[str, list[str]]:
        """Every service group's member hosts: declared ones and those its instances are
        placed on (members chosen by a label selector show only as placed instances)."""
        out: dict[str, list[str]] = {}
        for group in await self.groups():
            declared = set((group.get("members") or {}).get("hosts") or [])
            placed = await self.instances(group["name"]) or {}
            out[group["name"]] = sorted(declared | {i["host"] for i in placed.get("instances", [])})
        return out

    async def instances(self, group: str) -> dict[str, Any] | None:
        return await self.service_api.get(
            f"/v1/service-groups/{group}/instances", what=f"read group {group}'s instances"
        )

    async def swact(self, group: str) -> str | None:
        """A planned switch of the group's activity to its standby; ``None`` when it switched,
        else the service service's reason (409: no healthy standby)."""
        response = await self.service_api.request(
            "POST", f"/v1/service-groups/{group}/swact", what=f"swact service group {group}"
        )
        if response.status_code == 409:
            return detail(response)
        if response.status_code >= 400:
            raise Refused(detail(response))
        return None

    async def member(self, group: str, hostname: str, verb: str) -> None:
        """Lock (move the group's activity away and keep it away) or unlock a member."""
        response = await self.service_api.request(
            "POST",
            f"/v1/service-groups/{group}/members/{hostname}/{verb}",
            what=f"{verb} {hostname} in service group {group}",
        )
        if response.status_code >= 400 and response.status_code != 409:
            raise Refused(detail(response))

    # Alarms (fault) ---------------------------------------------------------------------------

    async def alarms(self) -> list[dict[str, Any]]:
        """Every active alarm (StarlingX FM shape); ``[]`` when no fault service is configured."""
        if not self.fault_api.configured:
            return []
        return await self.fault_api.get_all(
            "/v1/alarms", "alarms", what="list alarms", params={"limit": 2000}
        )

    async def blocking_alarms(self, strict: bool, hostnames: set[str] | None = None) -> list[str]:
        """Alarms that stop an update, as ``"<id> <entity>"``: with ``strict`` every alarm but
        the software service's own, else only management-affecting ones. ``hostnames`` limits
        the check to those hosts' alarms plus site-wide ones."""
        found = []
        for alarm in await self.alarms():
            alarm_id = str(alarm.get("alarm_id", ""))
            if alarm_id.startswith(OWN_ALARMS) or alarm.get("suppression_status") == "suppressed":
                continue
            if not strict and str(alarm.get("mgmt_affecting")) != "True":
                continue
            entity = str(alarm.get("entity_instance_id", ""))
            if hostnames is not None and _host_of(entity) not in (None, *hostnames):
                continue
            found.append(f"{alarm_id} {entity}")
        return found

    # Inventory (config) -----------------------------------------------------------------------

    async def personalities(self) -> dict[str, str]:
        """hostname → personality, from config (the owner of the inventory), else from the host
        service (which learnt them from config's events)."""
        if self.config_api.configured:
            what = "list hosts from config"
            hosts = await self.config_api.get_all("/v1/hosts", "hosts", what=what)
        else:
            hosts = await self.hosts()
        return {h["hostname"]: h["personality"] for h in hosts if h.get("hostname")}


def _host_of(entity: str) -> str | None:
    """The hostname in an entity instance id (``host=worker-1.sensor=x`` → ``worker-1``)."""
    for part in entity.split("."):
        if part.startswith("host="):
            return part.removeprefix("host=")
    return None


__all__ = ["PeerUnavailable", "Peers", "Refused"]
