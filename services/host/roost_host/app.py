"""Composition of the host service: settings, platform, store, consumer, step runner, routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from roost_host import bmcapi, events
from roost_host.api import HostContext, install_handlers, router
from roost_host.bmc import BmcAccess
from roost_host.guard import HeartbeatGuard
from roost_host.heartbeat import HeartbeatLink
from roost_host.kube import KubeDrainer
from roost_host.kubework import KubeRunner
from roost_host.monitor import HeartbeatMonitor
from roost_host.operations import HostOperations
from roost_host.power import BmcPower
from roost_host.recovery import RecoveryRunner
from roost_host.sensors import INDEXES as SENSOR_INDEXES
from roost_host.sensors import SensorMonitor
from roost_host.settings import HostSettings
from roost_host.steps import StepRunner
from roost_host.store import INDEXES, HostStore
from roost_shared.api import Platform, create_app, serve
from roost_shared.hostkeys import KeyFileError, site_secret
from roost_shared.leader import FencedDatabase, running

log = logging.getLogger(__name__)

DESCRIPTION = """Host lifecycle and state (StarlingX mtce): administrative, operational and
availability states, operator actions (lock, force-lock, unlock with in-test, reboot, reset,
power-on, power-off, reinstall) with StarlingX's rules, and each host's timeline.

Learns hosts from the config service's `config.host.added|updated|deleted` events; emits
`host.state.changed` for every transition and raises/clears alarm 200.001 (host locked).

With a Kubernetes cluster configured (`ROOST_KUBE_*`), a lock drains the host's node in the
background and a passed in-test uncordons it; outcomes go to the host's timeline."""


def build_app(settings: HostSettings | None = None) -> FastAPI:
    settings = settings or HostSettings()
    secret = site_secret(settings)  # none configured nor waived: refuse to start
    if secret is None:
        log.warning(
            "heartbeats are accepted unsigned (ROOST_HEARTBEAT_INSECURE): never do this "
            "on a network others can send to"
        )

    @asynccontextmanager
    async def start(platform: Platform, app: FastAPI) -> AsyncIterator[None]:
        store = HostStore(platform.db)
        drainer = KubeDrainer.from_settings(settings)  # disabled without a configured cluster
        ops = HostOperations(
            store, platform.outbox, settings, drainer.node_for if drainer.enabled else None
        )
        kube = KubeRunner(
            platform.db,
            store,
            ops,
            drainer,
            drain_timeout_s=settings.kube_drain_timeout_s,
            grace_s=settings.kube_grace_s,
            poll_s=settings.step_poll_s,
        )
        bmc = BmcAccess.from_settings(settings, platform.metrics)
        power = BmcPower(bmc, store, confirm_timeout_s=settings.bmc_confirm_timeout_s)
        steps = StepRunner(
            platform.db,
            store,
            ops,
            platform.outbox,
            settings.step_poll_s,
            on_done=kube.wake,
            power=power,
        )
        app.state.host = HostContext(platform, store, ops, steps, kube)
        # IPMI to the BMCs (app.state.bmc: pool + vault) and the sensor/BMC-status poller.
        sensors = SensorMonitor(platform.db, platform.outbox, bmc, settings.sensor_poll_s)
        app.state.bmc, app.state.sensors = bmc, sensors
        platform.consume(events.QUEUE, events.BINDINGS, events.inventory_handler(ops))

        async def run_steps() -> None:
            await steps.restart_interrupted()  # what the previous leader left pending
            await steps.run()

        # The loops below run on the replica holding the leader lease only (a standby serves
        # the API and consumes; its API writes wake nothing here, the leader's loops poll).
        platform.spawn_singleton(sensors.run, "sensors")
        platform.spawn_singleton(run_steps, "steps")
        platform.spawn_singleton(kube.run, "kube")  # resumes drains/uncordons left interrupted
        # Heartbeats, failure detection and auto-recovery.
        guard = HeartbeatGuard(
            secret,
            platform.metrics,
            check_source=settings.heartbeat_check_source,
            boot_window_s=settings.heartbeat_boot_window_s,
        )
        monitor = HeartbeatMonitor(
            settings,
            platform.db,
            store,
            ops,
            platform.outbox,
            platform.metrics,
            power_state=power.confirm,
            guard=guard,
        )
        recovery = RecoveryRunner(
            settings,
            # Recovery transitions (fence, power-on, give up) are fenced by the leader lease.
            FencedDatabase(platform.db, platform.fence),  # type: ignore[arg-type]
            ops,
            monitor,
            power,
            on_intest=steps.wake,
            on_change=kube.wake,
        )
        monitor.on_failed = lambda: (recovery.wake(), kube.wake())
        link = HeartbeatLink(
            bind_host=settings.bind_host,
            port=settings.heartbeat_port,
            guard=guard,
            bus=platform.bus,
            metrics=platform.metrics,
            on_heartbeat=monitor.heard,
        )
        monitor.probe = link.probe
        app.state.heartbeats = link

        async def heartbeats() -> None:
            """Heartbeat reception (UDP socket + bus queue), failure evaluation and recovery:
            the leader's only; a standby binds no UDP port and hears no heartbeat. Agents'
            heartbeats reach the leader by the port (one address per site: a Kubernetes
            Service or the same port on every replica's host)."""
            await monitor.reset()
            await monitor.refresh()
            try:
                async with running(link):
                    await asyncio.gather(monitor.run(), recovery.run())
            finally:
                await recovery.aclose()
                await monitor.aclose()

        platform.spawn_singleton(heartbeats, "heartbeat-monitor")
        try:
            yield
        finally:
            await drainer.aclose()
            await bmc.aclose()

    app = create_app(
        settings,
        title="Roost host",
        description=DESCRIPTION,
        routers=[router, bmcapi.router],
        indexes={**INDEXES, **SENSOR_INDEXES},
        start=start,
    )
    install_handlers(app)
    return app


def main() -> None:
    """``roost-host``: run the host service."""
    settings = HostSettings()
    try:
        app = build_app(settings)
    except KeyFileError as exc:
        raise SystemExit(f"roost-host: {exc}") from None
    serve(app, settings)


if __name__ == "__main__":
    main()
