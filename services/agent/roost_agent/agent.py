"""The agent: says who it is, reports its hardware, applies configuration commands.

* On start and after every broker reconnect it publishes ``agent.host.announced`` (with the
  boot id and the persisted applied configuration version) and ``agent.inventory.reported``;
  the config service answers an announce by re-sending what the host has not applied.
* Every ``inventory_poll_s`` it re-reads its inventory and publishes it again if it changed.
* It heartbeats (:mod:`roost_agent.heartbeat`): UDP from construction on (before the broker is
  reachable, and while it is away), the bus path once connected.
* It consumes ``agent.<mac hex>`` (classic durable queue on ``roost.commands``) and runs only
  commands signed by their issuing service for this host, within their deadline and newer than
  the last one from that issuer (:mod:`roost_shared.commands`); any other is refused: logged,
  counted and reported as ``agent.command.refused`` (the config service alarms on forgeries).
  It handles ``config.apply``: versions
  at or below the applied one are re-acknowledged without being re-applied, newer ones are
  written, hooked and acknowledged with ``agent.config.applied``.
* It runs the service instances the service service assigns to it
  (``service.instance.assign`` / ``service.instance.remove``, :mod:`roost_agent.instances`) and
  publishes every process transition as ``agent.instance.changed`` through a small queue
  (:mod:`roost_agent.reports`) that keeps them while the broker is away.
* It installs and rolls back software releases (``software.install`` / ``software.rollback``,
  :mod:`roost_agent.software`) in a task of their own, reporting every step (and its state at
  every announce) as ``agent.software.reported`` through a queue of the same kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import socket
import uuid
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from roost_agent import __version__
from roost_agent.apply import Applier
from roost_agent.download import Sources
from roost_agent.heartbeat import HeartbeatBus, HeartbeatSender, default_bind_ip
from roost_agent.instances import Instances
from roost_agent.inventory import digest, read_inventory
from roost_agent.link import LinkClient
from roost_agent.reports import Reporter
from roost_agent.settings import AgentSettings
from roost_agent.software import REBOOT_EXIT_CODE, Ctx, RebootFailed, SoftwareManager, Trust
from roost_agent.state import AgentState, write_atomic
from roost_agent.tally import Tally
from roost_shared.agentbus import AgentBusNames
from roost_shared.bus import COMMANDS_EXCHANGE, Bus, Consumer, Delivery
from roost_shared.catalog import (
    CommandRefused,
    ConfigApplied,
    ConfigApply,
    HostAnnounced,
    InstanceAssign,
    InstanceChanged,
    InstanceRemove,
    InstanceRestart,
    InventoryReported,
    SoftwareInstall,
    SoftwareReported,
    SoftwareRollback,
)
from roost_shared.commands import CommandVerifier, Refusal, TrustedIssuers, agent_key
from roost_shared.events import Envelope
from roost_shared.hostkeys import link_key

log = logging.getLogger(__name__)

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id(settings: AgentSettings) -> str:
    """The kernel's boot id; a simulated host (one with a profile) gets one per process."""
    if settings.boot_id:
        return settings.boot_id
    if settings.profile is None:
        with contextlib.suppress(OSError):
            return BOOT_ID.read_text().strip()
    return str(uuid.uuid4())


def source_address(amqp_url: str) -> str | None:
    """The local address this node uses to reach the broker (no packet is sent)."""
    parsed = urlparse(amqp_url)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((parsed.hostname or "127.0.0.1", parsed.port or 5672))
            return s.getsockname()[0]
    except OSError:
        return None


class Agent:
    """One node's agent. ``bus`` may be shared by many simulated agents in one process."""

    def __init__(self, settings: AgentSettings, bus: Bus, tally: Tally) -> None:
        self.settings = settings
        self.bus = bus
        self.tally = tally
        self.source = f"agent/{settings.hostname}"
        self.boot_id = boot_id(settings)
        self.mgmt_ip = settings.mgmt_ip
        self.state = AgentState(settings.state_dir)
        self.applier = Applier(self.state, settings.apply_hooks, settings.hook_timeout_s)
        self.queue = agent_key(settings.mgmt_mac)
        trusted = None
        if settings.command_keys_file is not None:
            trusted = TrustedIssuers.read(settings.command_keys_file)
        elif settings.command_keys:
            trusted = TrustedIssuers.of(settings.command_keys)
        else:
            log.error("no command keys (ROOST_COMMAND_KEYS_FILE): every command is refused")
        self.verifier = CommandVerifier(
            trusted, self.queue.removeprefix("agent."), settings.state_dir / "command-seq.json"
        )
        # Per-host credentials: its own exchanges and queues, declared by the control plane.
        self.names = AgentBusNames.of(settings.mgmt_mac) if settings.bus_secured else None
        self.consumer = Consumer(
            provisioned=self.names is not None,
            bus=bus,
            db=None,
            queue=self.queue,
            bindings=[self.queue],
            handler=self._handle,
            exchange=COMMANDS_EXCHANGE,
            queue_type="classic",
        )
        key = settings.host_key()  # raises when missing (unless explicitly insecure)
        if key is None:
            log.warning("no host key (ROOST_HEARTBEAT_INSECURE): heartbeats and hellos go unsigned")
        self.heartbeats = HeartbeatSender(
            settings.mgmt_mac,
            self.boot_id,
            addr=settings.heartbeat_addr,
            period_ms=settings.heartbeat_period_ms,
            bus_period_ms=settings.bus_heartbeat_period_ms,
            bind_ip=default_bind_ip(settings.heartbeat_bind_ip, settings.mgmt_ip),
            key=key,
        )
        # Instance reports go through their own queue: published without blocking the process
        # monitor, kept while the broker is away.
        self.reports = Reporter(self._publish_once)
        self.instances = Instances(
            mgmt_mac=settings.mgmt_mac,
            hostname=settings.hostname,
            state_dir=settings.state_dir,
            report=self._report_instance,
            margin_s=settings.lease_margin_s,
            max_lease_s=settings.lease_max_s,
        )
        # Software reports have a queue of their own (the same kind): an install waits for it
        # to drain before rebooting, whatever the instances are reporting meanwhile.
        self.software_reports = Reporter(self._publish_once, limit=100)
        self.software = SoftwareManager(
            mgmt_mac=settings.mgmt_mac,
            hostname=settings.hostname,
            state_dir=settings.state_dir,
            boot_id=self.boot_id,
            base_version=settings.base_version,
            hook_timeout_s=settings.hook_timeout_s,
            emit=self._report_software,
            reboot=self._reboot,
            trust=Trust(
                sources=Sources.of(settings.software_url),
                keys_file=settings.release_keys_file,
                public_keys=tuple(settings.release_public_keys),
                max_archive_bytes=settings.max_release_bytes,
            ),
            count_refusal=self._count_software_refusal,
        )
        self._software_refusals = tally.counter(
            "agent_software_refusals",
            "software.install commands refused before a hook ran (no site keys, a URL not the "
            "software service's, a bad download, digest or signature), by reason.",
            ["reason"],
        )
        #: Set when the agent asked to be started again (a simulated reboot): the process
        #: exits with it after a clean stop.
        self.exit_code: int | None = None
        self.link = LinkClient(
            self.instances,
            mac=settings.mgmt_mac,
            hostname=settings.hostname,
            addr=settings.sm_link_addr,
            period_ms=settings.sm_link_period_ms,
            bus_period_ms=settings.sm_link_bus_period_ms,
            bind_ip=default_bind_ip(settings.heartbeat_bind_ip, settings.mgmt_ip),
            names=self.names,
            key=link_key(key) if key is not None else None,
            boot_id=self.boot_id,
        )
        self._link_started = False
        self._inventory_digest: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._commands = tally.counter(
            "agent_commands", "Commands received, by type and outcome.", ["type", "outcome"]
        )
        self._announces = tally.counter("agent_announces", "Announcements published.")
        self._inventory_reports = tally.counter(
            "agent_inventory_reports", "Inventory reports published."
        )

    # Lifecycle -------------------------------------------------------------------------------

    def start_heartbeats(self) -> None:
        """Start UDP heartbeats; needs no broker, so the app calls it before connecting (a node
        that boots before the broker is still seen alive). Idempotent."""
        self.heartbeats.start()

    def start_instances(self) -> None:
        """Start the assigned service instances persisted by a previous run (after reaping what
        it left); needs no broker, so the app calls it before connecting: services come back
        with the host, not with the bus. Idempotent. Also resumes a software action a previous
        run left in its journal (finishing it after its reboot, or rolling it back)."""
        self.reports.start()
        self.instances.start()
        self.software_reports.start()
        self.software.start()

    async def start_link(self) -> None:
        """Open the service link's UDP path (no broker needed). Idempotent."""
        if not self._link_started:
            self._link_started = True
            await self.link.start(None)

    async def start(self) -> None:
        """Heartbeat, consume commands first (so nothing sent in reply to the announce is lost),
        then announce and start watching the inventory."""
        assert self.bus.connection is not None
        self.start_heartbeats()
        self.start_instances()
        if self.mgmt_ip is None:
            self.mgmt_ip = await asyncio.to_thread(source_address, self.settings.amqp_url)
        await self.heartbeats.attach(await HeartbeatBus.shared(self.bus.connection, self.names))
        await self.start_link()
        await self.link.attach(self.bus.connection)
        await self.consumer.start()
        self.bus.connection.reconnect_callbacks.add(self._on_reconnect)
        await self.announce()
        self.reports.kick()  # what was queued before the broker answered
        self.software_reports.kick()
        self._spawn(self._watch_inventory(), "inventory")
        log.info(
            "agent %s (%s) ready: queue %s, applied version %d",
            self.settings.hostname,
            self.settings.mgmt_mac,
            self.queue,
            self.state.applied,
        )

    async def stop(self) -> None:
        if self.bus.connection is not None:
            self.bus.connection.reconnect_callbacks.discard(self._on_reconnect)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # A clean stop (SIGTERM: a shutdown or reboot) is announced; a crash or power cut is not.
        await self.heartbeats.stop(announce=True)
        await self.consumer.stop()
        await self.link.stop()
        # A clean stop ends the services too (SIGTERM, then SIGKILL): they would die with the
        # agent anyway (PR_SET_PDEATHSIG). Their assignments stay on disk for the next start.
        await self.software.stop()  # an action in progress stays in its journal
        await self.instances.stop()
        await self.reports.close(flush_s=1.0)
        await self.software_reports.close(flush_s=1.0)
        self._write_metrics()
        if self.exit_code is not None:
            # A simulated reboot: the process ends here with REBOOT_EXIT_CODE (its supervisor
            # starts it again, with a new boot id). The app would close the bus after this.
            await self.bus.close()
            log.warning("exiting with %d to be started again (reboot)", self.exit_code)
            raise SystemExit(self.exit_code)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=f"{self.queue}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_reconnect(self, *_: object) -> None:
        # Called by aio-pika once channels, queues and consumers are restored; publish from a
        # task of our own rather than inside the connection's recovery.
        log.warning("reconnected to the broker; announcing again")
        self.reports.kick()
        self.software_reports.kick()
        self._spawn(self._announce_logged(), "re-announce")

    async def _announce_logged(self) -> None:
        try:
            await self.announce()
        except Exception:
            log.exception("re-announce failed")

    # Announce and inventory ------------------------------------------------------------------

    def announcement(self) -> HostAnnounced:
        return HostAnnounced(
            mgmt_mac=self.settings.mgmt_mac,
            hostname=self.settings.hostname,
            mgmt_ip=self.mgmt_ip,
            agent_version=__version__,
            boot_id=self.boot_id,
            config_applied=self.state.applied,
        )

    async def read_inventory(self) -> InventoryReported:
        return await asyncio.to_thread(
            read_inventory, self.settings.mgmt_mac, self.settings.profile
        )

    async def announce(self) -> None:
        """``agent.host.announced`` then ``agent.inventory.reported``, confirmed by the broker."""
        inventory = await self.read_inventory()
        await self._publish(self.announcement(), self._envelope_of(inventory))
        self._inventory_digest = digest(inventory)
        self._announces.inc()
        self._inventory_reports.inc()
        self.software.report_current()  # the software service learns what every host runs

    async def _watch_inventory(self) -> None:
        while True:
            await asyncio.sleep(self.settings.inventory_poll_s)
            try:
                inventory = await self.read_inventory()
                fingerprint = digest(inventory)
                if fingerprint != self._inventory_digest:
                    log.info("inventory changed; reporting it")
                    await self._publish(inventory)
                    self._inventory_digest = fingerprint
                    self._inventory_reports.inc()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("inventory check failed; trying again next period")

    # Commands --------------------------------------------------------------------------------

    async def _handle(self, _session: object, deliveries: list[Delivery]) -> None:
        """Commands one at a time, in order. An exception parks the command (roost.dead)."""
        for delivery in deliveries:
            envelope = delivery.envelope
            try:
                self.verifier.check(envelope)
            except Refusal as refused:
                await self._refused(envelope, refused)
                continue
            await self._run(delivery)
            self.verifier.ran(envelope)
        await asyncio.to_thread(self._write_metrics)

    async def _refused(self, envelope: Envelope, refused: Refusal) -> None:
        """Log, count and report a command that will not run (never raises: a refusal is final,
        and parking it would only keep the attacker's message around)."""
        logger = log.error if refused.forgery else log.warning
        logger("refused command %s %s: %s", envelope.type, envelope.id, refused)
        self._commands.labels(envelope.type[:60], f"refused-{refused.reason}").inc()
        report = CommandRefused(
            mgmt_mac=self.settings.mgmt_mac,
            command_type=envelope.type,
            command_id=envelope.id[:200],
            reason=refused.reason,
            detail=refused.detail[:500],
            forgery=refused.forgery,
        )
        try:
            await self._publish(report)
        except Exception as exc:
            log.warning("could not report the refused command: %s", exc)

    async def _run(self, delivery: Delivery) -> None:
        """Run one verified command."""
        envelope = delivery.envelope
        if isinstance(delivery.payload, ConfigApply):
            await self._config_apply(envelope, delivery.payload)
        elif isinstance(delivery.payload, InstanceAssign | InstanceRemove | InstanceRestart):
            await self._instance_command(envelope, delivery.payload)
        elif isinstance(delivery.payload, SoftwareInstall | SoftwareRollback):
            # Runs in a task of its own: a long install does not hold up instance commands.
            ctx = Ctx(envelope.id, envelope.correlationid or envelope.id)
            outcome = self.software.handle(ctx, delivery.payload)
            log.info("%s %s: %s", envelope.type, delivery.payload.release_id, outcome)
            self._commands.labels(envelope.type, outcome).inc()
        else:
            log.warning("ignored command %s %s: not for agents", envelope.type, envelope.id)
            self._commands.labels(envelope.type, "ignored").inc()

    async def _config_apply(self, envelope: Envelope, command: ConfigApply) -> None:
        outcome = await self.applier.apply(command)
        if not outcome.changed:
            verdict = "already-applied"
        else:
            verdict = "applied" if outcome.ok else "failed"
        log.info(
            "config.apply %d: %s (applied version %d)", command.version, verdict, outcome.version
        )
        self._commands.labels(envelope.type, verdict).inc()
        await self._publish(
            ConfigApplied(
                mgmt_mac=self.settings.mgmt_mac,
                version=outcome.version,
                ok=outcome.ok,
                error=outcome.error,
            ),
            correlationid=envelope.correlationid or envelope.id,
        )

    async def _instance_command(
        self, envelope: Envelope, command: InstanceAssign | InstanceRemove | InstanceRestart
    ) -> None:
        correlationid = envelope.correlationid or envelope.id
        if isinstance(command, InstanceAssign):
            outcome = await self.instances.assign(command, correlationid, envelope.id)
            log.info(
                "assign %s as %s (token %s): %s",
                command.instance_id,
                command.role,
                command.fencing_token,
                outcome,
            )
        elif isinstance(command, InstanceRestart):
            outcome = await self.instances.restart(command, correlationid, envelope.id)
            log.info("restart %s: %s", command.instance_id, outcome)
        else:
            outcome = await self.instances.remove(command, correlationid, envelope.id)
            log.info("remove %s: %s", command.instance_id, outcome)
        self._commands.labels(envelope.type, outcome).inc()

    def _report_instance(self, changed: InstanceChanged, correlationid: str | None) -> None:
        # Called from process monitor callbacks: queue only, never wait for the broker.
        self.reports.put(changed.instance_id, self._envelope_of(changed, correlationid))

    # Software --------------------------------------------------------------------------------

    def _report_software(self, report: SoftwareReported, correlationid: str | None) -> None:
        # Queued (never waits for the broker), kept and retried while the broker is away.
        self.software_reports.put("software", self._envelope_of(report, correlationid))

    def _count_software_refusal(self, reason: str) -> None:
        self._software_refusals.labels(reason).inc()
        self._spawn(asyncio.to_thread(self._write_metrics), "metrics")

    async def _software_reports_flushed(self, timeout_s: float) -> bool:
        """Wait until every queued software report is confirmed by the broker."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                # Reporter's idle event: set once nothing is pending or being published.
                await self.software_reports._idle.wait()
                return True
        return False

    async def _reboot(self) -> None:
        """Reboot the node once the ``rebooting`` report is on the broker: with
        ``reboot_command``, or (unset: simulation, containers) by stopping as on SIGTERM and
        exiting with REBOOT_EXIT_CODE. Raises :class:`RebootFailed`."""
        if not await self._software_reports_flushed(self.settings.publish_retry_s):
            log.warning("rebooting without the broker's confirm of the rebooting report")
        command = self.settings.reboot_command
        if not command:
            log.warning(
                "reboot required: stopping, to be started again (exit %d)", REBOOT_EXIT_CODE
            )
            self.exit_code = REBOOT_EXIT_CODE
            os.kill(os.getpid(), signal.SIGTERM)  # the app stops the agent as on SIGTERM
            return
        log.warning("reboot required: running %s", command)
        try:
            proc = await asyncio.create_subprocess_exec(
                *shlex.split(command),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, stderr = await asyncio.wait_for(proc.communicate(), self.settings.hook_timeout_s)
        except (OSError, ValueError, TimeoutError) as exc:
            raise RebootFailed(f"{command}: {exc or type(exc).__name__}") from None
        if proc.returncode != 0:
            tail = stderr.decode(errors="replace").strip()[-500:]
            raise RebootFailed(f"{command} exited with {proc.returncode}: {tail}")

    # Publishing ------------------------------------------------------------------------------

    def _envelope_of(self, payload: Any, correlationid: str | None = None) -> Envelope:
        return Envelope.of(
            payload, source=self.source, subject=self.settings.mgmt_mac, correlationid=correlationid
        )

    async def _publish(self, *items: Any, correlationid: str | None = None) -> None:
        envelopes = [
            i if isinstance(i, Envelope) else self._envelope_of(i, correlationid) for i in items
        ]
        await self.bus.publish(envelopes, retry_for_s=self.settings.publish_retry_s)

    async def _publish_once(self, envelopes: Sequence[Envelope]) -> None:
        # No retry here: the report queue retries, keeping only what is newest meanwhile.
        await self.bus.publish(envelopes)

    def _write_metrics(self) -> None:
        hb, rp = self.heartbeats, self.reports
        for name, doc, value in (
            ("agent_heartbeats_sent", "UDP heartbeat datagrams sent.", hb.sent),
            ("agent_heartbeat_send_errors", "UDP sends failed.", hb.udp_errors.count),
            ("agent_heartbeat_slots_skipped", "UDP slots skipped (the loop was late).", hb.skipped),
            ("agent_probes_answered", "Bus probes answered.", hb.probes),
            ("agent_instance_reports_published", "Instance reports published.", rp.published),
            ("agent_instance_reports_pending", "Instance reports not yet published.", rp.pending),
            ("agent_instance_reports_dropped", "Reports superseded while queued.", rp.dropped),
        ):
            self.tally.gauge(name, doc).labels().set(value)
        with contextlib.suppress(OSError):
            write_atomic(self.settings.state_dir / "metrics.prom", self.tally.exposition())
