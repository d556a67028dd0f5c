"""The dashboard in a real browser (headless Debian Chromium) against real services: every page
loads (screenshots saved), alarms appear and disappear live, a host is locked from its page,
readers see no mutating controls, bad tokens land on the login page, API errors read well."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import httpx
import pytest
from playwright.async_api import expect

from tests.dashboard.conftest import add_available_host, logged_in, start_console
from tests.support.fault import alarm, clear, log
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

GROUP = {
    "redundancy": {"model": "active-standby"},
    "members": {"hosts": ["worker-0", "worker-1"]},
    "services": [{"name": "gw", "start": ["/bin/sleep", "600"]}],
}
PAGES = {
    "overview": "/",
    "hosts": "/hosts",
    "host": "/hosts/worker-0",
    "alarms": "/alarms",
    "events": "/events",
    "services": "/services",
    "software": "/software",
}


#: Basic accessibility and layout checks run in the page: every visible input and select has a
#: label, every button and link a name, every table column header a scope, one h1, nothing wider
#: than the window.
A11Y = """() => {
  const bad = [];
  for (const el of document.querySelectorAll('input:not([type=hidden]), select, textarea'))
    if (!el.labels || el.labels.length === 0) bad.push('unlabelled ' + (el.name || el.id));
  for (const el of document.querySelectorAll('button, a'))
    if (!(el.textContent.trim() || el.getAttribute('aria-label')))
      bad.push('nameless ' + el.outerHTML);
  for (const th of document.querySelectorAll('thead th'))
    if (th.getAttribute('scope') !== 'col') bad.push('th without scope: ' + th.textContent);
  if (document.querySelectorAll('h1').length !== 1) bad.push('not one h1');
  if (document.documentElement.scrollWidth > window.innerWidth) bad.push('wider than the window');
  return bad;
}"""


async def live(page) -> None:
    """The page's event stream is open (events published after this reach it)."""
    await expect(page.locator("body[data-live='1']")).to_have_count(1, timeout=10_000)


async def test_pages_live_alarms_and_lock_from_the_page(stack, tmp_path, browser):
    console = start_console(stack, tmp_path, full=True)
    await add_available_host(console, "worker-0")
    async with console.service.client(stack.tokens.admin) as http:
        r = await http.put("/v1/service-groups/gateway", json=GROUP)
        assert r.status_code == 201, r.text
    page = await logged_in(browser, console, stack.tokens.admin)
    assert await page.locator("#role").text_content() == "admin"
    (cookie,) = [c for c in await page.context.cookies() if c["name"] == "roost_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert await page.evaluate("document.cookie") == ""  # out of the page's scripts' reach

    # Every page loads, with no error banner, and is saved as a screenshot.
    for name, path in PAGES.items():
        response = await page.goto(f"{console.url}{path}")
        assert response is not None and response.status == 200, name
        await expect(page.locator("h1")).to_be_visible()
        assert await page.locator(".problem").count() == 0, (
            name,
            await page.locator(".problem").all_text_contents(),
        )
        assert await page.evaluate(A11Y) == [], name
        await page.screenshot(path=str(console.shots / f"{name}.png"), full_page=True)
        await page.set_viewport_size({"width": 768, "height": 1024})  # a tablet
        tablet = await page.evaluate(A11Y)
        await page.screenshot(path=str(console.shots / f"{name}-tablet.png"))
        await page.set_viewport_size({"width": 1280, "height": 800})
        assert tablet == [], f"{name} at tablet width: {tablet}"
    print(f"screenshots in {console.shots}")

    # The group is listed with its hosts; a swact the service refuses (no healthy standby:
    # no agent runs it) comes back as a readable message, not an error page.
    await page.goto(f"{console.url}/services")
    await expect(page.locator('[data-group="gateway"]')).to_contain_text("active-standby")
    # Declared again with a third member: the open page follows without a reload (the service
    # service tells declaration changes on the bus; its state changes it does not).
    await page.evaluate("window.__sameDocument = true")
    await live(page)
    async with console.service.client(stack.tokens.admin) as http:
        wider = {**GROUP, "members": {"hosts": ["worker-0", "worker-1", "worker-2"]}}
        r = await http.put("/v1/service-groups/gateway", json=wider)
        assert r.status_code == 200, r.text
    members = page.locator('[data-group="gateway"] [data-field="members"]')
    await expect(members).to_have_text("worker-0, worker-1, worker-2", timeout=2_000)
    assert await page.evaluate("window.__sameDocument === true"), "the page was reloaded"
    await page.get_by_role("button", name="Swact gateway").click()
    await page.get_by_role("button", name="Yes, swact gateway").click()
    await expect(page.locator(".problem")).to_contain_text("Swact of gateway failed.")
    await expect(page.locator(".problem")).to_contain_text("The service service:")

    # An alarm raised on the bus appears without a reload within 1 s; cleared, it goes. The
    # overview open in another tab counts it.
    overview = await page.context.new_page()
    await overview.goto(f"{console.url}/")
    await live(overview)
    critical = overview.locator('#alarm-summary tr[data-severity="critical"] td.num').first
    await expect(critical).to_have_text("0")
    await page.goto(f"{console.url}/alarms")
    await live(page)
    await page.evaluate("window.__sameDocument = true")
    bus = await stack.bus()
    entity = f"host=worker-0.disk={uuid.uuid4().hex[:6]}"
    row = page.locator("#alarms tbody tr", has_text=entity)
    started = time.monotonic()
    await bus.publish([alarm(entity, "100.104", "critical", reason_text="/var is 97% full")])
    await expect(row).to_be_visible(timeout=5_000)
    appeared = time.monotonic() - started
    await expect(row.locator(".sev")).to_have_text("critical")
    await expect(critical).to_have_text("1", timeout=2_000)
    # Changed in place: the same row, now major.
    await bus.publish([alarm(entity, "100.104", "major", reason_text="/var is 92% full")])
    await expect(row.locator(".sev")).to_have_text("major", timeout=1_000)
    await expect(row).to_have_count(1)
    await expect(row).to_contain_text("92% full")
    started = time.monotonic()
    await bus.publish([clear(entity, "100.104")])
    await expect(row).to_have_count(0, timeout=5_000)
    gone = time.monotonic() - started
    assert await page.evaluate("window.__sameDocument === true"), "the page was reloaded"
    print(f"alarm visible after {appeared * 1000:.0f} ms, gone after {gone * 1000:.0f} ms")
    assert appeared <= 1.0 and gone <= 1.0
    await expect(critical).to_have_text("0")  # counted, then uncounted
    await overview.close()

    # An alarm's details, and deleting it by hand (confirmed).
    await page.goto(f"{console.url}/alarms")
    await live(page)
    await bus.publish([alarm("host=worker-0.nic=eth9", "100.113", "minor")])
    await page.get_by_role("link", name="alarm 100.113 on host=worker-0.nic=eth9").click()
    await expect(page.locator("#alarm-detail")).to_contain_text("host=worker-0.nic=eth9")
    await page.screenshot(path=str(console.shots / "alarm.png"), full_page=True)
    # Suppressed: gone from the default list, shown with "include suppressed"; then back.
    await page.get_by_role("button", name="Suppress 100.113").click()
    await page.get_by_role("button", name="Yes, suppress 100.113").click()
    await expect(page.locator(".notice")).to_contain_text("100.113 is now suppressed")
    await page.goto(f"{console.url}/alarms")
    eth9 = page.locator("#alarms tbody tr", has_text="nic=eth9")
    await expect(eth9).to_have_count(0)
    await page.get_by_label("include suppressed").check()
    await page.get_by_role("button", name="Filter").click()
    await expect(eth9).to_contain_text("suppressed")
    await eth9.get_by_role("link").click()
    await page.get_by_role("button", name="Unsuppress 100.113").click()
    await page.get_by_role("button", name="Yes, unsuppress 100.113").click()
    await expect(page.locator(".notice")).to_contain_text("100.113 is now unsuppressed")
    await page.get_by_role("button", name="Delete", exact=True).click()
    await page.get_by_role("button", name="Yes, delete the alarm").click()
    await expect(page.locator(".notice")).to_contain_text("deleted")
    await expect(page.locator("#alarms tbody tr", has_text="nic=eth9")).to_have_count(0)

    # The event log has all three, found by entity; 60 customer logs page 50 then 10.
    await page.goto(f"{console.url}/events")
    await page.get_by_label("Entity contains").fill(entity)
    await page.get_by_role("button", name="Show").click()
    await expect(page.locator("#events tbody tr")).to_have_count(3)  # set, changed, clear
    await expect(page.locator("#events tbody tr").first).to_contain_text("clear")
    await bus.publish([log(f"site=paging.n={i}", text=f"log {i}") for i in range(60)])
    async with console.fault.client(stack.tokens.reader) as http:

        async def logged() -> bool:
            q = {"logs": "True", "q.field": "entity_instance_id", "q.value": "site=paging"}
            r = await http.get("/v1/event_log", params={**q, "limit": 100})
            return len(r.json()["event_log"]) == 60

        await eventually(logged, what="60 customer logs written")
    paged = page.locator("#events tbody tr", has_text="site=paging")
    await page.goto(f"{console.url}/events?kind=logs&entity=site%3Dpaging")
    await expect(paged).to_have_count(50)
    await page.get_by_role("link", name="Older →").click()
    await expect(paged).to_have_count(10)
    await expect(page.get_by_role("link", name="Older →")).to_have_count(0)

    # Lock worker-0 from its page (with a confirmation); the hosts list open in another tab
    # shows the new state without a reload.
    watcher = await page.context.new_page()
    await watcher.goto(f"{console.url}/hosts")
    await live(watcher)
    await watcher.evaluate("window.__sameDocument = true")
    admin_cell = watcher.locator('[data-host="worker-0"] [data-field="administrative"]')
    await expect(admin_cell).to_have_text("unlocked")

    await page.goto(f"{console.url}/hosts/worker-0")
    await page.get_by_role("button", name="Lock", exact=True).click()
    await expect(page.locator("h1")).to_have_text("Lock worker-0?")
    await page.screenshot(path=str(console.shots / "confirm-lock.png"))
    # Keyboard only: the confirmation has the focus; Enter confirms.
    await expect(page.get_by_role("button", name="Yes, lock worker-0")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.locator(".notice")).to_contain_text("Lock requested for worker-0")
    await expect(page.locator('[data-field="administrative"]')).to_have_text("locked")
    await expect(page.get_by_role("button", name="Unlock", exact=True)).to_be_visible()
    await expect(page.get_by_role("button", name="Lock", exact=True)).to_have_count(0)
    chart = page.locator("#availability-chart")
    await expect(chart).to_have_attribute("aria-label", re.compile(r"available, then online$"))
    await page.screenshot(path=str(console.shots / "host-locked.png"), full_page=True)

    await expect(admin_cell).to_have_text("locked", timeout=2_000)
    await expect(
        watcher.locator('[data-host="worker-0"] [data-field="availability"]')
    ).to_have_text("online")
    assert await watcher.evaluate("window.__sameDocument === true"), "the list was reloaded"

    # A host the list has not shown yet: the list reloads itself to show it.
    await add_available_host(console, "worker-1")
    new_host = watcher.locator('[data-host="worker-1"] [data-field="availability"]')
    await expect(new_host).to_have_text("available", timeout=5_000)


async def test_readers_bad_tokens_and_api_errors(stack, tmp_path, browser):
    console = start_console(stack, tmp_path, full=False, ROOST_ALARMS_PAGE_SIZE="3")
    await add_available_host(console, "worker-0")

    # Like every service: alive, ready, metrics (the reader's open event stream counted).
    async with httpx.AsyncClient(base_url=console.url, timeout=5) as http:
        assert (await http.get("/healthz")).json()["service"] == "dashboard"
        assert (await http.get("/readyz")).status_code == 200

    # A reader sees the host but no lock (or any mutating) control.
    page = await logged_in(browser, console, stack.tokens.reader)
    assert await page.locator("#role").text_content() == "reader"
    await page.goto(f"{console.url}/hosts/worker-0")
    await expect(page.locator('[data-field="administrative"]')).to_have_text("unlocked")
    assert await page.get_by_role("button", name="Lock", exact=True).count() == 0
    assert await page.locator(".actions").count() == 0
    await page.screenshot(path=str(console.shots / "reader-host.png"), full_page=True)
    await live(page)
    async with httpx.AsyncClient(base_url=console.url, timeout=5) as http:

        async def one_stream() -> bool:  # earlier pages' streams end when noticed
            return "roost_live_streams 1.0" in (await http.get("/metrics")).text

        await eventually(one_stream, what="the reader's one open event stream counted")

    # The alarm list pages (3 a page here): 4 alarms, most severe first, 3 then 1.
    bus = await stack.bus()
    sevs = ("critical", "major", "minor", "warning")
    await bus.publish([alarm(f"host=worker-0.p={s}", "100.101", s) for s in sevs])
    async with console.fault.client(stack.tokens.reader) as http:

        async def four() -> bool:
            return len((await http.get("/v1/alarms")).json()["alarms"]) == 4

        await eventually(four, what="4 alarms raised")
    await page.goto(f"{console.url}/alarms")
    rows = page.locator("#alarms tbody tr")
    await expect(rows).to_have_count(3)
    await expect(rows.first).to_contain_text("critical")
    await page.get_by_role("link", name="Next page →").click()
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("warning")
    await expect(page.get_by_role("link", name="Next page →")).to_have_count(0)

    # A garbage token at the login page is refused there, in words.
    anon = await browser.new_context(viewport={"width": 1280, "height": 800})
    p = await anon.new_page()
    await p.goto(f"{console.url}/login")
    await p.get_by_label("API token").fill("not-a-token")
    await p.get_by_role("button", name="Log in").click()
    await expect(p.locator("#login-reason")).to_have_text("That token was refused.")

    # An expired (ended, unknown) session in the cookie: every page goes to the login page
    # with a readable reason, never a trace; no cookie at all: the login page too.
    for path in ("/", "/alarms", "/hosts/worker-0", "/events/stream"):
        await anon.add_cookies(
            [{"name": "roost_session", "value": "expired-" + uuid.uuid4().hex, "url": console.url}]
        )
        await p.goto(f"{console.url}{path}")
        assert p.url.startswith(f"{console.url}/login"), (path, p.url)
        await expect(p.locator("#login-reason"), p.url).to_contain_text("session has ended")
        assert "Traceback" not in await p.content()
        assert not [c for c in await anon.cookies() if c["name"] == "roost_session"]
        assert "Traceback" not in await p.content()
    # Words in a link never reach the page: reasons are codes, outcomes one-time cookies.
    await p.goto(f"{console.url}/login?reason=Send+your+token+to+evil.example")
    assert await p.locator("#login-reason").count() == 0
    await anon.clear_cookies()
    await p.goto(f"{console.url}/hosts")
    assert p.url.startswith(f"{console.url}/login")
    await p.screenshot(path=str(console.shots / "login-expired.png"))

    # A reader has no swact button either.
    await page.goto(f"{console.url}/services")
    assert await page.get_by_role("button", name="Swact").count() == 0

    # No software service configured (ROOST_SOFTWARE_URL unset): the software page and the
    # overview's update card say so, as a sentence, not an error.
    response = await page.goto(f"{console.url}/software")
    assert response is not None and response.status == 200
    await expect(page.locator("#software-not-configured")).to_contain_text("not configured")
    assert await page.locator(".problem").count() == 0
    await page.goto(f"{console.url}/")
    await expect(page.locator("#update-card")).to_contain_text(
        "The software service is not configured"
    )

    # A page that does not exist: a page saying so (API clients still get problem+json).
    response = await page.goto(f"{console.url}/no-such-page")
    assert response is not None and response.status == 404
    await expect(page.locator(".problem")).to_have_text("There is no such page.")
    async with httpx.AsyncClient(base_url=console.url, timeout=5) as http:
        r = await http.get("/no-such-page")
        assert r.headers["content-type"].startswith("application/problem+json")

    # The fault service down: the alarms page says so in words; the hosts page still works.
    console.fault.stop()
    await page.goto(f"{console.url}/alarms")
    problem = page.locator(".problem")
    await expect(problem).to_contain_text("The fault service: cannot be reached")
    assert "Traceback" not in await page.content()
    await page.screenshot(path=str(console.shots / "alarms-fault-down.png"), full_page=True)
    await page.goto(f"{console.url}/")
    await expect(page.locator(".problem").first).to_contain_text("The fault service")
    await expect(page.locator("#h-hosts")).to_be_visible()


async def test_an_alarm_raised_while_the_page_loads_is_not_lost(stack, tmp_path, browser):
    """The window between a page's render and its event stream opening: an alarm raised then
    shows (the stream replays from the page's event number) without a reload."""
    console = start_console(stack, tmp_path, full=False)
    page = await logged_in(browser, console, stack.tokens.admin)
    held = asyncio.Event()
    release = asyncio.Event()

    async def hold_stream(route) -> None:  # the stream request waits until the alarm is in
        held.set()
        await release.wait()
        await route.continue_()

    await page.route("**/events/stream*", hold_stream)
    await page.goto(f"{console.url}/alarms")
    await asyncio.wait_for(held.wait(), 10)
    entity = f"host=worker-0.disk={uuid.uuid4().hex[:6]}"
    await expect(page.locator("#alarms tbody tr", has_text=entity)).to_have_count(0)
    bus = await stack.bus()
    async with httpx.AsyncClient(base_url=console.url, timeout=5) as http:
        seen = 'roost_live_events_total{type="fault.alarm.raised"} 1.0'

        async def received() -> bool:  # the dashboard has it (the page is not listening yet)
            return seen in (await http.get("/metrics")).text

        await bus.publish([alarm(entity, "100.104", "critical", reason_text="/var is 97% full")])
        await eventually(received, what="the dashboard received the alarm")
    await page.evaluate("window.__sameDocument = true")
    release.set()
    await live(page)
    await expect(page.locator("#alarms tbody tr", has_text=entity)).to_be_visible(timeout=2_000)
    assert await page.evaluate("window.__sameDocument === true"), "the page was reloaded"
