"""Config use cases. Each runs inside the caller's transaction and writes, with the same session,
the state change, the ``config.host.*`` events, the ``config.apply`` commands to agents and the
``fault.*`` alarms and logs it causes (all through the outbox): a crash loses or doubles none.

The API and the bus consumer both come through here, so a host behaves the same whichever way
it changed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from pymongo.errors import DuplicateKeyError

from roost_config import logic
from roost_config.logic import BmcType, InstallState
from roost_config.models import HostCreate, HostPatch, SystemPatch
from roost_config.settings import ConfigSettings
from roost_config.store import ConfigStore
from roost_shared.bus import COMMANDS_EXCHANGE, EVENTS_EXCHANGE, Destined
from roost_shared.catalog import (
    AlarmClear,
    CommandRefused,
    ConfigApplied,
    ConfigApply,
    HostAnnounced,
    InventoryReported,
    Personality,
)
from roost_shared.commands import agent_key, command
from roost_shared.db import Session
from roost_shared.events import Envelope, utcnow
from roost_shared.metrics import Metrics
from roost_shared.outbox import Outbox
from roost_shared.problems import Conflict, Invalid
from roost_shared.vault import Vault

log = logging.getLogger(__name__)

SOURCE = "roost/config"

_UNIQUE_FIELDS = {"hostname": "hostname", "mgmt_mac": "mgmt_mac"}


def _duplicate(field: str, value: str, owner: dict[str, Any] | None = None) -> Conflict:
    who = f" by host {owner['uuid']}" if owner else ""
    return Conflict(f"{field} {value!r} is already used{who}", field=f"body.{field}")


def _from_duplicate_key(exc: DuplicateKeyError, values: dict[str, Any]) -> Conflict:
    """Name the field whose unique index a concurrent write hit."""
    pattern = (exc.details or {}).get("keyPattern") or {}
    for key in pattern:
        if key in _UNIQUE_FIELDS:
            return _duplicate(key, str(values.get(key)))
    return Conflict("the host conflicts with another one", field="body")


class ConfigOperations:
    """The one place that changes the system and hosts."""

    def __init__(
        self,
        store: ConfigStore,
        outbox: Outbox,
        vault: Vault,
        settings: ConfigSettings,
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.vault = vault
        self.settings = settings
        self._commands = metrics.counter(
            "config_commands", "config.apply commands queued, by reason.", ["reason"]
        )
        self._reports = metrics.counter(
            "config_agent_reports",
            "Agent reports handled, by kind and outcome.",
            ["kind", "outcome"],
        )

    # Outbox helpers -------------------------------------------------------------------------

    def _host_event(self, verb: str, host: dict[str, Any]) -> Destined:
        """``config.host.<verb>`` (the model is shared by three types, so the type is explicit)."""
        envelope = Envelope.of(
            logic.host_record(host),
            type=f"config.host.{verb}",
            source=SOURCE,
            subject=logic.entity(host),
        )
        return (envelope, EVENTS_EXCHANGE, None)

    async def _emit(self, session: Session, verb: str, host: dict[str, Any]) -> None:
        await self.outbox.add_to(session, [self._host_event(verb, host)])

    async def _fault(self, session: Session, items: Sequence[BaseModel]) -> None:
        """``fault.alarm.set|clear`` and ``fault.log.write`` for the fault service."""
        envelopes = [
            Envelope.of(i, source=SOURCE, subject=getattr(i, "entity_instance_id", None))
            for i in items
        ]
        await self.outbox.add(session, envelopes)

    def _config_command(self, host: dict[str, Any], reason: str) -> Destined:
        """``config.apply`` for the host's target version, with a fresh deadline."""
        payload = ConfigApply(
            version=int(host["config_target"]),
            hostname=host["hostname"],
            personality=Personality(host["personality"]),
            config=host["config"],
        )
        envelope = command(
            payload,
            source=SOURCE,
            subject=logic.entity(host),
            deadline_s=self.settings.command_deadline_s,
        )
        self._commands.labels(reason).inc()
        return (envelope, COMMANDS_EXCHANGE, agent_key(host["mgmt_mac"]))

    async def _send_config(self, session: Session, host: dict[str, Any], reason: str) -> None:
        """Queue ``config.apply`` for the host's target version."""
        await self.outbox.add_to(session, [self._config_command(host, reason)])
        log.info(
            "config.apply version %d queued for %s (%s)",
            host["config_target"],
            host["hostname"],
            reason,
        )

    async def _reconfigure(
        self, session: Session, system: dict[str, Any], host: dict[str, Any], now: datetime
    ) -> dict[str, Any]:
        """Bump the host's version and send it if its desired configuration changed."""
        update = logic.new_version(system, host, now)
        if update is None:
            return host
        host = await self.store.update_host(session, host["uuid"], {**update, "updated_at": now})
        await self._send_config(session, host, "changed")
        return host

    # Hosts (API) ----------------------------------------------------------------------------

    async def _check_unique(
        self, session: Session, *, hostname: str | None = None, mac: str | None = None
    ) -> None:
        if hostname is not None:
            owner = await self.store.host_by_hostname(hostname, session)
            if owner is not None:
                raise _duplicate("hostname", hostname, owner)
        if mac is not None:
            owner = await self.store.host_by_mac(mac, session)
            if owner is not None:
                raise _duplicate("mgmt_mac", mac, owner)

    async def add_host(self, session: Session, body: HostCreate) -> dict[str, Any]:
        """``POST /v1/hosts``: a host with hostname and personality is configured at once."""
        problem = logic.bmc_problem(
            body.bmc_type,
            body.bmc_address,
            body.bmc_username,
            body.bmc_password is not None,
            port=body.bmc_port,
        )
        if problem:
            raise Invalid(problem[1], field=f"body.{problem[0]}")
        await self._check_unique(session, hostname=body.hostname, mac=body.mgmt_mac)
        now = utcnow()
        doc: dict[str, Any] = {
            "uuid": str(uuid.uuid4()),
            "hostname": body.hostname,
            "reported_hostname": None,
            "personality": body.personality.value,
            "subfunctions": body.subfunctions or [body.personality.value],
            "mgmt_mac": body.mgmt_mac,
            "mgmt_ip": body.mgmt_ip,
            "bmc_type": body.bmc_type.value,
            "bmc_address": body.bmc_address,
            "bmc_port": body.bmc_port,
            "bmc_username": body.bmc_username,
            "bmc_password_enc": (
                self.vault.encrypt(body.bmc_password.get_secret_value())
                if body.bmc_password
                else None
            ),
            "location": body.location,
            "labels": body.labels,
            "parameters": body.parameters,
            "install_state": InstallState.discovered.value,
            "config_target": 0,
            "config_applied": 0,
            "created_at": now,
            "updated_at": now,
        }
        try:
            await self.store.insert_host(session, doc)
        except DuplicateKeyError as exc:
            raise _from_duplicate_key(exc, doc) from None
        host = await self._reconfigure(session, await self.store.get_system(session), doc, now)
        await self._emit(session, "added", host)
        log.info("host %s added (%s, %s)", host["hostname"], host["personality"], host["uuid"])
        return host

    async def update_host(self, session: Session, ref: str, patch: HostPatch) -> dict[str, Any]:
        """``PATCH /v1/hosts/{id}``: only the fields sent change."""
        host = await self.store.host(ref, session)
        given = patch.model_fields_set
        changes: dict[str, Any] = {}
        if "hostname" in given:
            if patch.hostname is None:
                raise Invalid("a hostname cannot be removed once assigned", field="body.hostname")
            if patch.hostname != host.get("hostname"):
                await self._check_unique(session, hostname=patch.hostname)
                changes["hostname"] = patch.hostname
        if "personality" in given:
            if patch.personality is None:
                raise Invalid("a personality cannot be removed", field="body.personality")
            if host.get("personality") and patch.personality.value != host["personality"]:
                raise Conflict(
                    f"the personality of a host cannot change ({host['personality']}); delete "
                    "and re-add it",
                    field="body.personality",
                )
            changes["personality"] = patch.personality.value
            if not host.get("subfunctions") and "subfunctions" not in given:
                changes["subfunctions"] = [patch.personality.value]
        if "mgmt_mac" in given and patch.mgmt_mac and patch.mgmt_mac != host["mgmt_mac"]:
            await self._check_unique(session, mac=patch.mgmt_mac)
            changes["mgmt_mac"] = patch.mgmt_mac
        if "mgmt_ip" in given:
            changes["mgmt_ip"] = patch.mgmt_ip
        if "subfunctions" in given:
            changes["subfunctions"] = patch.subfunctions or []
        if "labels" in given:
            changes["labels"] = patch.labels or {}
        if "location" in given:
            changes["location"] = patch.location or ""
        changes.update(self._bmc_changes(host, patch, given))
        # A new password always counts (its ciphertext differs even when the text does not).
        changes = {
            k: v
            for k, v in changes.items()
            if host.get(k) != v or (k == "bmc_password_enc" and v is not None)
        }
        if not changes:
            return host
        return await self._apply_host_changes(session, host, changes)

    def _bmc_changes(
        self, host: dict[str, Any], patch: HostPatch, given: set[str]
    ) -> dict[str, Any]:
        bmc_fields = {"bmc_type", "bmc_address", "bmc_port", "bmc_username", "bmc_password"}
        if not given & bmc_fields:
            return {}
        removing = "bmc_type" in given and patch.bmc_type == BmcType.none

        def pick(name: str) -> Any:
            if name in given:
                return getattr(patch, name)
            return None if removing else host.get(name)

        kind = patch.bmc_type if "bmc_type" in given else host.get("bmc_type")
        address, username, port = pick("bmc_address"), pick("bmc_username"), pick("bmc_port")
        password = patch.bmc_password if "bmc_password" in given else None
        has_password = password is not None or (
            not removing and "bmc_password" not in given and bool(host.get("bmc_password_enc"))
        )
        problem = logic.bmc_problem(kind, address, username, has_password, port=port)
        if problem:
            raise Invalid(problem[1], field=f"body.{problem[0]}")
        changes: dict[str, Any] = {
            "bmc_type": BmcType(kind or BmcType.none).value,
            "bmc_address": address,
            "bmc_port": port,
            "bmc_username": username,
        }
        if password is not None:
            changes["bmc_password_enc"] = self.vault.encrypt(password.get_secret_value())
        elif removing:
            changes["bmc_password_enc"] = None
        return changes

    async def _apply_host_changes(
        self, session: Session, host: dict[str, Any], changes: dict[str, Any]
    ) -> dict[str, Any]:
        now = utcnow()
        old_entity = logic.entity(host)
        alarms: list[BaseModel] = []
        renamed = "hostname" in changes
        if renamed:
            # Alarms are raised on host=<hostname>: clear the old name's; the drift loop raises
            # again under the new name if the host still lags.
            changes.update({"drift_alarmed": False, "failure_alarmed": False})
            if host.get("conflict_with"):
                alarms.append(self._conflict_clear(host))
                changes.update({"conflict": None, "conflict_with": None})
        try:
            updated = await self.store.update_host(
                session, host["uuid"], {**changes, "updated_at": now}
            )
        except DuplicateKeyError as exc:
            raise _from_duplicate_key(exc, changes) from None
        if renamed and old_entity != logic.entity(updated):
            alarms.append(AlarmClear(entity_instance_id=old_entity))
        updated = await self._reconfigure(
            session, await self.store.get_system(session), updated, now
        )
        await self._fault(session, alarms)
        await self._emit(session, "updated", updated)
        log.info("host %s updated: %s", logic.entity(updated), ", ".join(sorted(changes)))
        return updated

    async def set_labels(
        self, session: Session, ref: str, labels: dict[str, str]
    ) -> dict[str, Any]:
        host = await self.store.host(ref, session)
        if (host.get("labels") or {}) == labels:
            return host
        return await self._apply_host_changes(session, host, {"labels": labels})

    async def set_parameters(
        self, session: Session, ref: str, params: dict[str, Any], *, merge: bool
    ) -> dict[str, Any]:
        """Replace (PUT) or merge (PATCH, ``null`` removes a key) the user parameters."""
        host = await self.store.host(ref, session)
        current = dict(host.get("parameters") or {})
        if merge:
            for key, value in params.items():
                if value is None:
                    current.pop(key, None)
                else:
                    current[key] = value
            try:
                logic.check_parameters(current)
            except ValueError as exc:
                raise Invalid(str(exc), field="body.parameters") from None
        else:
            current = params
        if current == (host.get("parameters") or {}):
            return host
        return await self._apply_host_changes(session, host, {"parameters": current})

    async def delete_host(self, session: Session, host: dict[str, Any]) -> None:
        """Forget a host, its inventory and its alarms; tell everyone."""
        await self.store.delete_host(session, host["uuid"])
        await self.store.delete_inventory(session, host["mgmt_mac"])
        alarms: list[BaseModel] = [AlarmClear(entity_instance_id=logic.entity(host))]
        if host.get("conflict_with"):
            alarms.append(self._conflict_clear(host))
        if host.get("hostname"):
            # Nodes that were refused this hostname no longer conflict with anything.
            for other in await self.store.hosts_in_conflict_with(session, host["hostname"]):
                alarms.append(self._conflict_clear(other))
                await self.store.update_host(
                    session, other["uuid"], {"conflict": None, "conflict_with": None}
                )
        await self._fault(session, alarms)
        await self._emit(session, "deleted", host)
        log.info("host %s deleted (%s)", logic.entity(host), host["uuid"])

    @staticmethod
    def _conflict_clear(host: dict[str, Any]) -> AlarmClear:
        return AlarmClear(
            alarm_id=logic.ALARM_HOST_CONFLICT,
            entity_instance_id=logic.conflict_entity(host["conflict_with"], host["mgmt_mac"]),
        )

    # System (API) ---------------------------------------------------------------------------

    async def update_system(self, session: Session, patch: SystemPatch) -> dict[str, Any]:
        """Change the system and give every configured host whose configuration changes a new
        version (in the same transaction)."""
        changes = patch.model_dump(mode="json", exclude_unset=True, exclude_none=True)
        now = utcnow()
        system = await self.store.update_system(session, changes, now)
        # A site-wide change touches every host: one bulk update and one outbox write for all
        # (per-host round trips made a change on 500 hosts take seconds before any was sent).
        host_changes: list[tuple[str, dict[str, Any]]] = []
        messages: list[Destined] = []
        for host in await self.store.configurable_hosts(session):
            update = logic.new_version(system, host, now)
            if update is None:
                continue
            update["updated_at"] = now
            updated = {**host, **update}
            host_changes.append((host["uuid"], update))
            messages.append(self._config_command(updated, "changed"))
            messages.append(self._host_event("updated", updated))
        await self.store.update_hosts(session, host_changes)
        await self.outbox.add_to(session, messages)
        bumped = len(host_changes)
        log.info(
            "system updated (%s); %d hosts get a new configuration", ", ".join(changes), bumped
        )
        return system

    # Agent reports (bus) --------------------------------------------------------------------

    async def announced(self, session: Session, msg: HostAnnounced) -> None:
        """``agent.host.announced``: discovery, re-sending what a returning agent missed, and
        refusing a node that claims another host's name."""
        now = utcnow()
        host = await self.store.host_by_mac(msg.mgmt_mac, session)
        owner = await self.store.host_by_hostname(msg.hostname, session)
        verdict = logic.classify_announcement(host, msg.hostname, owner)
        seen = {
            "reported_hostname": msg.hostname,
            "agent_version": msg.agent_version,
            "boot_id": msg.boot_id,
            "announced_at": now,
        }
        if host is None:
            await self._discovered(session, msg, verdict, seen, now)
            return
        changes: dict[str, Any] = dict(seen)
        alarms: list[BaseModel] = []
        if msg.mgmt_ip and not host.get("mgmt_ip"):
            changes["mgmt_ip"] = msg.mgmt_ip
        if verdict.kind == "conflict":
            if host.get("conflict_with") != verdict.conflict_with:
                if host.get("conflict_with"):
                    alarms.append(self._conflict_clear(host))
                changes["conflict_with"] = verdict.conflict_with
                changes["conflict"] = self._conflict_text(msg, verdict)
                alarms.append(
                    logic.conflict_alarm(verdict.conflict_with, msg.mgmt_mac, msg.hostname)
                )
                log.warning("refused to merge node %s: %s", msg.mgmt_mac, changes["conflict"])
        elif host.get("conflict_with"):
            alarms.append(self._conflict_clear(host))
            changes.update({"conflict": None, "conflict_with": None})
        target = int(host.get("config_target") or 0)
        if int(host.get("config_applied") or 0) < msg.config_applied:
            # The agent applied a version whose report we never got: catch up (never backwards);
            # or one that was never sent: alarmed.
            fx = logic.on_applied(host, msg.config_applied, True, None, now)
            changes.update(fx.set)
            alarms.extend(fx.alarms)
        updated = await self.store.update_host(session, host["uuid"], changes)
        if logic.configurable(updated) and msg.config_applied < target:
            await self._send_config(session, updated, "agent behind")
            self._reports.labels("announced", "resent").inc()
        else:
            self._reports.labels("announced", "known").inc()
        await self._fault(session, alarms)
        if logic.host_record(host) != logic.host_record(updated):
            updated = await self.store.update_host(session, host["uuid"], {"updated_at": now})
            await self._emit(session, "updated", updated)

    @staticmethod
    def _conflict_text(msg: HostAnnounced, verdict: logic.Announcement) -> str:
        return (
            f"node {msg.mgmt_mac} calls itself {msg.hostname}, which is the hostname of another "
            f"host ({verdict.conflict_with}); not merged"
        )

    async def _discovered(
        self,
        session: Session,
        msg: HostAnnounced,
        verdict: logic.Announcement,
        seen: dict[str, Any],
        now: datetime,
    ) -> None:
        doc: dict[str, Any] = {
            "uuid": str(uuid.uuid4()),
            "hostname": None,
            "personality": None,
            "subfunctions": [],
            "mgmt_mac": msg.mgmt_mac,
            "mgmt_ip": msg.mgmt_ip,
            "bmc_type": BmcType.none.value,
            "bmc_address": None,
            "bmc_port": None,
            "bmc_username": None,
            "bmc_password_enc": None,
            "location": "",
            "labels": {},
            "parameters": {},
            "install_state": InstallState.discovered.value,
            "config_target": 0,
            "config_applied": 0,
            "created_at": now,
            "updated_at": now,
            **seen,
        }
        items: list[BaseModel] = [logic.discovered_log(msg.mgmt_mac, msg.hostname, msg.mgmt_ip)]
        if verdict.kind == "conflict":
            assert verdict.conflict_with is not None
            doc["conflict_with"] = verdict.conflict_with
            doc["conflict"] = self._conflict_text(msg, verdict)
            items.append(logic.conflict_alarm(verdict.conflict_with, msg.mgmt_mac, msg.hostname))
            log.warning("refused to merge node %s: %s", msg.mgmt_mac, doc["conflict"])
        await self.store.insert_host(session, doc)
        await self._fault(session, items)
        await self._emit(session, "added", doc)
        self._reports.labels("announced", "discovered").inc()
        log.info("discovered node %s (calls itself %s)", msg.mgmt_mac, msg.hostname)

    async def inventory_reported(self, session: Session, msg: InventoryReported) -> None:
        """``agent.inventory.reported``: keep the latest hardware per MAC (a host may be
        announced after its inventory arrives; the report waits for it)."""
        now = utcnow()
        body = msg.model_dump(mode="json")
        digest = logic.inventory_digest(body)
        current = await self.store.inventory_of(msg.mgmt_mac, session)
        changed = current is None or current.get("digest") != digest
        await self.store.put_inventory(
            session,
            msg.mgmt_mac,
            {
                **body,
                "digest": digest,
                "reported_at": now,
                "changed_at": now if changed else current["changed_at"],
            },
        )
        self._reports.labels("inventory", "changed" if changed else "same").inc()
        if changed:
            log.info("inventory of %s %s", msg.mgmt_mac, "stored" if current is None else "changed")

    async def config_applied(self, session: Session, msgs: Sequence[ConfigApplied]) -> None:
        """``agent.config.applied`` (a batch, in arrival order): move ``config_applied`` forward,
        or raise 200.011. One read, one bulk update and one outbox write for the whole batch: a
        site-wide change brings hundreds of these at once."""
        hosts = await self.store.hosts_by_macs(session, {m.mgmt_mac for m in msgs})
        before = {mac: dict(h) for mac, h in hosts.items()}
        sets: dict[str, dict[str, Any]] = {}
        alarms: list[BaseModel] = []
        for msg in msgs:
            host = hosts.get(msg.mgmt_mac)
            if host is None:
                log.warning("config.applied from unknown node %s ignored", msg.mgmt_mac)
                self._reports.labels("applied", "unknown").inc()
                continue
            now = utcnow()
            fx = logic.on_applied(host, msg.version, msg.ok, msg.error, now)
            if fx.note:
                log.info("config.applied from %s: %s", logic.entity(host), fx.note)
            if not fx.changed and not fx.alarms:
                self._reports.labels("applied", "ignored").inc()
                continue
            change = {**fx.set, "updated_at": now}
            host.update(change)
            sets.setdefault(msg.mgmt_mac, {}).update(change)
            alarms.extend(fx.alarms)
            self._reports.labels("applied", "ok" if msg.ok else "failed").inc()
            if not msg.ok:
                log.warning("%s failed to apply version %d", logic.entity(host), msg.version)
        await self.store.update_hosts(
            session, [(hosts[mac]["uuid"], change) for mac, change in sets.items()]
        )
        messages = [
            self._host_event("updated", hosts[mac])
            for mac in sets
            if logic.host_record(before[mac]) != logic.host_record(hosts[mac])
        ]
        await self._fault(session, alarms)
        await self.outbox.add_to(session, messages)

    async def command_refused(self, session: Session, msg: CommandRefused) -> None:
        """``agent.command.refused``: count forgeries per host; repeated ones raise 250.011."""
        self._reports.labels("refused", msg.reason).inc()
        if not msg.forgery:
            log.info("agent %s refused %s: %s", msg.mgmt_mac, msg.command_type, msg.reason)
            return
        log.error(
            "agent %s refused a forged %s (%s): %s",
            msg.mgmt_mac,
            msg.command_type,
            msg.reason,
            msg.detail,
        )
        hosts = await self.store.hosts_by_macs(session, {msg.mgmt_mac})
        host = hosts.get(msg.mgmt_mac)
        if host is None:
            return
        fx = logic.on_refused(
            host,
            msg.reason,
            msg.command_type,
            utcnow(),
            threshold=self.settings.forgery_alarm_threshold,
            window_s=self.settings.forgery_alarm_window_s,
        )
        await self.store.update_hosts(session, [(host["uuid"], fx.set)])
        await self._fault(session, fx.alarms)

    # Drift ----------------------------------------------------------------------------------

    async def check_drift(self) -> int:
        """Raise or clear 250.001 where due, for all hosts in one transaction; returns how many
        hosts changed. (One transaction per host did not get through while a site-wide rollout
        kept the database busy.)"""

        async def act(session: Session) -> int:
            now = utcnow()
            changes: list[tuple[str, dict[str, Any]]] = []
            alarms: list[BaseModel] = []
            for host in await self.store.drift_candidates(session):
                fx = logic.drift_action(host, now, self.settings.config_grace_s)
                if fx.alarms:
                    changes.append((host["uuid"], fx.set))
                    alarms.extend(fx.alarms)
            await self.store.update_hosts(session, changes)
            await self._fault(session, alarms)
            return len(changes)

        # Most checks find nothing to do: look first, outside any transaction.
        now = utcnow()
        if not any(
            logic.drift_action(h, now, self.settings.config_grace_s).alarms
            for h in await self.store.drift_candidates()
        ):
            return 0
        return await self.store.db.in_transaction(act)

    async def drift_loop(self) -> None:
        """Every ``drift_check_period_s``: raise 250.001 for hosts lagging past the grace."""
        while True:
            try:
                if await self.check_drift():
                    self.outbox.wake()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("drift check failed; trying again")
            await asyncio.sleep(self.settings.drift_check_period_s)
