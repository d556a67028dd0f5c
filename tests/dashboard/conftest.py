"""The dashboard against real services, driven by Debian's Chromium through Playwright.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium`` (``make test``
installs Debian's ``chromium`` with the other test tools)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from roost_shared.catalog import HostRecord, Personality
from roost_sim.ports import free_port
from tests.config.helpers import new_mac
from tests.support.hosts import act, host_where, publish

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
CHROMIUM = "/usr/bin/chromium"
HAVE_CHROMIUM = os.path.exists(CHROMIUM)
HOST_FAST = {"ROOST_INTEST_S": "0.5", "ROOST_STEP_S": "0.3"}


@dataclass
class Console:
    """A running site and the dashboard over it."""

    stack: Any
    fault: Any
    host: Any
    dashboard: Any
    config: Any = None
    service: Any = None
    software: Any = None
    shots: Path | None = None

    @property
    def url(self) -> str:
        return self.dashboard.url


def start_console(
    stack: Any, tmp_path: Path, *, full: bool, software: bool = False, **dashboard_env: str
) -> Console:
    """fault + host (+ config and service with ``full``; + software with ``full`` or
    ``software``), then the dashboard pointed at them. Without software the dashboard is not
    told where it is (ROOST_SOFTWARE_URL unset: "not configured")."""
    key = Fernet.generate_key().decode()
    fault = stack.start("fault")
    host = stack.start("host", ROOST_SECRET_KEY=key, ROOST_FAULT_URL=fault.url, **HOST_FAST)
    urls = {"ROOST_FAULT_URL": fault.url, "ROOST_HOST_URL": host.url}
    config = service = sw = None
    # Not started: a port nothing listens on (never a `make run` on this machine).
    nowhere = f"http://127.0.0.1:{free_port()}"
    urls |= {"ROOST_CONFIG_URL": nowhere, "ROOST_SERVICE_URL": nowhere}
    if full:
        config = stack.start("config", ROOST_SECRET_KEY=key, ROOST_HOST_SERVICE_URL=host.url)
        service = stack.start("service")  # members accepted as given (hosts known to host only)
        urls |= {"ROOST_CONFIG_URL": config.url, "ROOST_SERVICE_URL": service.url}
    if full or software:
        peers = {"ROOST_HOST_URL": host.url, "ROOST_FAULT_URL": fault.url}
        if full:
            peers |= {"ROOST_SERVICE_URL": service.url, "ROOST_CONFIG_URL": config.url}
        sw = stack.start(
            "software",
            ROOST_ALLOW_UNSIGNED_RELEASES="true",
            ROOST_PEER_TOKEN=stack.tokens.peers["software"],
            **peers,
        )
        urls["ROOST_SOFTWARE_URL"] = sw.url
    dashboard = stack.start("dashboard", **urls, **dashboard_env)
    shots = tmp_path / "screenshots"
    shots.mkdir(exist_ok=True)
    return Console(stack, fault, host, dashboard, config, service, sw, shots)


async def add_available_host(console: Console, hostname: str) -> dict[str, Any]:
    """A host as config announces it on the bus, unlocked through the host API until available
    (no agent needed: the host service's in-test passes on its own). Only the host service
    knows it: a host added through config stays offline until an agent announces it."""
    bus = await console.stack.bus()
    rec = HostRecord(
        uuid=str(uuid.uuid4()),
        hostname=hostname,
        personality=Personality.worker,
        mgmt_mac=new_mac(),
        install_state="provisioned",
    )
    await publish(bus, "added", rec)
    async with console.host.client(console.stack.tokens.admin) as http:
        await host_where(http, hostname, lambda h: True, f"{hostname} learned")
        r = await act(http, hostname, "unlock")
        assert r.status_code == 200, r.text
        return await host_where(
            http, hostname, lambda h: h["availability"] == "available", f"{hostname} available"
        )


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not HAVE_CHROMIUM:
        pytest.skip(f"{CHROMIUM} missing: make test-tools installs Debian's chromium")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        yield b
        await b.close()


async def logged_in(browser: Any, console: Console, token: str) -> Any:
    """A new browser context (1280x800) logged in through the login page; its page."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    await page.goto(f"{console.url}/login")
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url(f"{console.url}/")
    return page
