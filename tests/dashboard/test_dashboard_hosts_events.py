"""Issue 8's second cut in a real browser (headless Debian Chromium) against real services: every
host action behind its confirmation (admins only; forced and host-cutting ones say so; a refused
one reads as the host service's reason), the uptime column, the live timeline, the event log's
search by event id and reason text, and a revoked token's event stream closed."""

from __future__ import annotations

import re
import time

import pytest
from playwright.async_api import expect

from roost_shared.auth import Role, write_tokens_file
from tests.dashboard.conftest import add_available_host, logged_in, start_console
from tests.support.fault import log
from tests.support.hosts import act, host_where
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


async def live(page) -> None:
    await expect(page.locator("body[data-live='1']")).to_have_count(1, timeout=10_000)


async def test_host_actions_uptime_live_timeline_search_and_revoked_stream(
    stack, tmp_path, browser
):
    # The dashboard reads its own copy of the tokens file (the services the session's): the
    # reader is revoked there at the end, and checked again every second on open streams.
    tokens = tmp_path / "dashboard-tokens.json"
    both = {"admin": (Role.admin, stack.tokens.admin), "reader": (Role.reader, stack.tokens.reader)}
    write_tokens_file(tokens, both)
    console = start_console(
        stack,
        tmp_path,
        full=False,
        ROOST_AUTH_TOKENS_FILE=str(tokens),
        ROOST_STREAM_TOKEN_CHECK_S="1",
    )
    await add_available_host(console, "worker-0")

    # A reader: no action at all on the host page, and a confirmation reached by URL says no.
    reader = await logged_in(browser, console, stack.tokens.reader)
    await reader.goto(f"{console.url}/hosts/worker-0")
    await expect(reader.locator('[data-field="availability"]')).to_have_text("available")
    assert await reader.locator(".actions form").count() == 0
    for name in ("Lock", "Force lock", "Reinstall", "Power off"):
        assert await reader.get_by_role("button", name=name, exact=True).count() == 0, name
    await reader.goto(f"{console.url}/hosts/worker-0/confirm?action=force-lock")
    refused = reader.locator(".problem", has_text="Only an admin")  # (config is not running)
    await expect(refused).to_have_text("Only an admin can act on hosts.")

    # Uptime on the hosts list: since worker-0 became enabled-available (seconds ago).
    admin = await logged_in(browser, console, stack.tokens.admin)
    await admin.goto(f"{console.url}/hosts")
    uptime = admin.locator('[data-host="worker-0"] [data-field="uptime"]')
    await expect(uptime).to_have_text(re.compile(r"^(\d+s|\d+m \d+s)$"))

    # An admin: force-lock is offered on the unlocked host; its confirmation says it is forced.
    await admin.goto(f"{console.url}/hosts/worker-0")
    await expect(admin.locator('[data-field="uptime"]')).to_have_text(re.compile(r"\d+s$"))
    await admin.get_by_role("button", name="Force lock", exact=True).click()
    await expect(admin.locator("h1")).to_have_text("Force lock worker-0?")
    await expect(admin.locator("#confirm-explain")).to_contain_text("FORCED lock")
    await expect(admin.get_by_role("button", name="Yes, force lock worker-0")).to_be_visible()
    await admin.get_by_role("link", name="Cancel").click()

    # A refused action: reinstall of an unlocked host comes back with the host service's 409
    # reason in words.
    await admin.goto(f"{console.url}/hosts/worker-0/confirm?action=reinstall")
    await expect(admin.locator("#confirm-explain")).to_contain_text("cuts the host")
    await admin.get_by_role("button", name="Yes, reinstall worker-0").click()
    problem = admin.locator(".problem", has_text="Reinstall")
    await expect(problem).to_contain_text("Reinstall failed. The host service:")
    await expect(problem).to_contain_text("it is unlocked; lock it first")
    assert "Traceback" not in await admin.content()

    # The timeline is live: the host locked through the API shows its new entry (table and
    # chart) on the open page within 1 s, without a reload.
    await live(admin)
    await admin.evaluate("window.__sameDocument = true")
    newest = admin.locator("#timeline tbody tr").first
    await expect(newest).to_contain_text("unlocked-enabled-available")
    async with console.host.client(stack.tokens.admin) as http:
        started = time.monotonic()
        r = await act(http, "worker-0", "lock")
        assert r.status_code == 200, r.text
        await expect(newest).to_contain_text("locked-disabled-online", timeout=1_000)
        shown = time.monotonic() - started
    chart = admin.locator("#availability-chart")
    await expect(chart).to_have_attribute("aria-label", re.compile(r"available, then online$"))
    await expect(admin.locator('[data-field="uptime"]')).to_have_text("—")
    assert await admin.evaluate("window.__sameDocument === true"), "the page was reloaded"
    print(f"timeline entry shown {shown * 1000:.0f} ms after the lock")
    assert shown <= 1.0

    # Locked: the locked-only actions, reinstall among them, with the warning that it cuts.
    await expect(admin.get_by_role("button", name="Reinstall", exact=True)).to_be_visible()
    await expect(admin.get_by_role("button", name="Force lock", exact=True)).to_be_hidden()
    await admin.get_by_role("button", name="Reinstall", exact=True).click()
    await expect(admin.locator("#confirm-explain")).to_contain_text("This cuts the host")
    await admin.get_by_role("button", name="Yes, reinstall worker-0").click()
    await expect(admin.locator(".notice")).to_contain_text("Reinstall requested for worker-0")
    async with console.host.client(stack.tokens.admin) as http:
        await host_where(http, "worker-0", lambda h: not h["task"], "worker-0 reinstalled")

    # The event log: by event id (the fault API's filter) and by reason text (filtered by the
    # dashboard over the page it fetched, as the page says).
    bus = await stack.bus()
    await bus.publish(
        [log("site=search.n=1", "200.021", "Backup COMPLETED on nfs-1")]
        + [log(f"site=search.n={i}", "200.022", f"rotation {i}") for i in range(2, 5)]
    )
    async with console.fault.client(stack.tokens.reader) as http:

        async def written() -> bool:
            q = {"logs": "True", "q.field": "entity_instance_id", "q.value": "site=search"}
            return len((await http.get("/v1/event_log", params=q)).json()["event_log"]) == 4

        await eventually(written, what="4 customer logs written")
    rows = admin.locator("#events tbody tr", has_text="site=search")
    await admin.goto(f"{console.url}/events")
    await admin.get_by_label("Event id contains").fill("200.022")
    await admin.get_by_role("button", name="Show").click()
    await expect(rows).to_have_count(3)
    await admin.get_by_label("Event id contains").fill("")
    await admin.get_by_label("Reason contains").fill("backup completed")
    await admin.get_by_role("button", name="Show").click()
    await expect(rows).to_have_count(1)
    await expect(rows).to_contain_text("Backup COMPLETED on nfs-1")
    await expect(admin.locator("#search-scope")).to_contain_text("cannot search reason text")
    await admin.get_by_label("Reason contains").fill("no such words")
    await admin.get_by_role("button", name="Show").click()
    await expect(admin.locator("#events tbody")).to_have_text("No events.")

    # The reader's token revoked (gone from the dashboard's tokens file): its open page's event
    # stream is closed within the check interval and the page lands on the login page.
    await reader.goto(f"{console.url}/alarms")
    await live(reader)
    write_tokens_file(tokens, {"admin": both["admin"]})
    started = time.monotonic()
    await reader.wait_for_url(re.compile(r"/login\?reason=refused"), timeout=5_000)
    print(f"revoked reader on the login page after {time.monotonic() - started:.1f} s")
    await expect(reader.locator("#login-reason")).to_contain_text("refused")
    assert not [c for c in await reader.context.cookies() if c["name"] == "roost_session"]
    # The admin, still listed, keeps its stream and pages.
    await admin.goto(f"{console.url}/hosts")
    await live(admin)
    await expect(uptime).to_have_text("—")
