"""The dashboard's software page and the overview's update card in a real browser (headless
Debian Chromium) against a real software service: releases, the strategy's stages and steps,
progress live from the bus without a reload, apply and abort behind a confirmation (admin only),
the software service down or not configured read as sentences."""

from __future__ import annotations

import time
from typing import Any

import pytest
from playwright.async_api import expect

from roost_shared.catalog import SoftwareHostChanged, StrategyChanged
from roost_shared.events import Envelope
from tests.dashboard.conftest import add_available_host, logged_in, start_console
from tests.dashboard.test_dashboard_browser import A11Y, live
from tests.support.releases import release_archive

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

RELEASE = "roost-1.1.0"


def progress(strategy: dict[str, Any], **changes: Any) -> Envelope:
    """``software.strategy.changed`` for ``strategy`` as the software service would say it,
    with ``changes``."""
    fields = {
        "uuid": strategy["uuid"],
        "release_id": strategy["release"],
        "state": strategy["state"],
        "stage": strategy["current_stage"],
        "stages": len(strategy["stages"]),
        "steps_done": strategy["steps_done"],
        "steps_total": strategy["steps_total"],
        "current": "",
        "reason": "",
    }
    return Envelope.of(StrategyChanged(**(fields | changes)), source="test")


async def test_software_page_strategy_live_progress_and_actions(stack, tmp_path, browser):
    console = start_console(stack, tmp_path, full=False, software=True)
    await add_available_host(console, "worker-0")
    archive = release_archive(tmp_path / "release", RELEASE, "1.1.0")
    async with console.software.client(stack.tokens.admin) as http:
        r = await http.post(
            "/v1/releases", content=archive, headers={"Content-Type": "application/gzip"}
        )
        assert r.status_code == 201, r.text
        r = await http.post("/v1/strategy", json={"release": RELEASE})
        assert r.status_code == 201, r.text
        strategy = r.json()
    total = strategy["steps_total"]
    assert total > 0 and strategy["state"] == "ready-to-apply"

    # The overview, open in its own tab: no update in progress (planned, not applying).
    page = await logged_in(browser, console, stack.tokens.admin)
    overview = page
    card = overview.locator("#update-card")
    await expect(card.locator('[data-sw="none"]')).to_have_text("No update in progress.")
    await expect(card.locator("[data-strategy-live]")).to_be_hidden()
    await live(overview)
    await overview.evaluate("window.__sameDocument = true")

    # The software page: the release row, the strategy with its stages and steps, the progress
    # bar at 0 of all steps; Apply offered, Abort not (ready to apply).
    sw = await page.context.new_page()
    await sw.set_viewport_size({"width": 1280, "height": 800})
    response = await sw.goto(f"{console.url}/software")
    assert response is not None and response.status == 200
    row = sw.locator(f'#releases tr[data-release="{RELEASE}"]')
    await expect(row).to_contain_text("1.1.0")
    await expect(row.locator('[data-field="state"]')).to_have_text("available")
    await expect(row).to_contain_text("test release 1.1.0")
    stages = sw.locator("#stages tbody.stage")
    await expect(stages).to_have_count(len(strategy["stages"]))
    for stage in strategy["stages"]:
        body = sw.locator(f'#stages tbody[data-stage="{stage["index"]}"]')
        await expect(body.locator("tr.stage-row")).to_contain_text(stage["name"])
        await expect(body.locator("tr.step-row")).to_have_count(len(stage["steps"]))
    assert any("worker-0" in s["hosts"] for s in strategy["stages"]), strategy["stages"]
    await expect(sw.locator("#stages")).to_contain_text("worker-0")
    bar = sw.locator('#strategy progress[data-sw="progress"]')
    await expect(bar).to_have_attribute("value", "0")
    await expect(bar).to_have_attribute("max", str(total))
    await expect(sw.get_by_role("progressbar", name="Update progress")).to_have_count(1)
    await expect(sw.locator('#strategy [data-sw="state"]')).to_have_text("ready-to-apply")
    apply = sw.get_by_role("button", name="Apply the update strategy")
    abort = sw.get_by_role("button", name="Abort the update strategy")
    await expect(apply).to_be_visible()
    await expect(abort).to_be_hidden()
    assert await sw.locator(".problem").count() == 0
    assert await sw.evaluate(A11Y) == []
    await sw.screenshot(path=str(console.shots / "software.png"), full_page=True)
    await sw.set_viewport_size({"width": 768, "height": 1024})
    tablet = await sw.evaluate(A11Y)
    await sw.screenshot(path=str(console.shots / "software-tablet.png"), full_page=True)
    await sw.set_viewport_size({"width": 1280, "height": 800})
    assert tablet == [], tablet
    await live(sw)
    await sw.evaluate("window.__sameDocument = true")

    # Progress on the bus: the bar, the state and the step in progress follow within 1 s on
    # both pages, without a reload; Abort is offered now, Apply not.
    bus = await stack.bus()
    started = time.monotonic()
    await bus.publish(
        [progress(strategy, state="applying", stage=1, steps_done=3, current="worker-0: lock")]
    )
    await expect(bar).to_have_attribute("value", "3", timeout=1_000)
    moved = time.monotonic() - started
    await expect(sw.locator('#strategy [data-sw="current"]')).to_have_text("worker-0: lock")
    await expect(sw.locator('#strategy [data-sw="state"]')).to_have_text("applying")
    await expect(abort).to_be_visible()
    await expect(apply).to_be_hidden()
    card_bar = card.locator('progress[data-sw="progress"]')
    await expect(card_bar).to_have_attribute("value", "3", timeout=1_000)
    await expect(card.locator('[data-sw="release"]')).to_have_text(RELEASE)
    await expect(card.locator('[data-sw="state"]')).to_have_text("applying")
    await expect(card.locator('[data-sw="none"]')).to_be_hidden()
    await overview.screenshot(path=str(console.shots / "overview-update.png"), full_page=True)
    print(f"progress visible after {moved * 1000:.0f} ms")
    assert moved <= 1.0

    # Failed: the card stays, with the reason; applied: no update in progress.
    await bus.publish(
        [progress(strategy, state="apply-failed", steps_done=4, reason="worker-0: install failed")]
    )
    await expect(card.locator('[data-sw="reason"]')).to_have_text(
        "worker-0: install failed", timeout=1_000
    )
    await expect(card.locator('[data-sw="state"]')).to_have_text("apply-failed")
    await expect(sw.locator('#strategy [data-sw="reason"]')).to_have_text(
        "worker-0: install failed", timeout=1_000
    )
    await expect(apply).to_be_visible()  # a failed strategy can be resumed
    await bus.publish([progress(strategy, state="applied", steps_done=total)])
    await expect(card.locator('[data-sw="none"]')).to_be_visible(timeout=1_000)
    await expect(bar).to_have_attribute("value", str(total), timeout=1_000)
    assert await sw.evaluate("window.__sameDocument === true"), "the software page reloaded"
    assert await overview.evaluate("window.__sameDocument === true"), "the overview reloaded"

    # A release uploaded meanwhile (software.release.changed) appears in the open page's table;
    # a host's deploy state (software.host.changed) brings the deployment section again (here
    # unchanged: there is no deployment, and no agent to make one move).
    async with console.software.client(stack.tokens.admin) as http:
        newer = release_archive(tmp_path / "release-2", "roost-1.2.0", "1.2.0", reboot=True)
        r = await http.post(
            "/v1/releases", content=newer, headers={"Content-Type": "application/gzip"}
        )
        assert r.status_code == 201, r.text
    newer_row = sw.locator('#releases tr[data-release="roost-1.2.0"]')
    await expect(newer_row).to_contain_text("required", timeout=2_000)
    await sw.evaluate("document.getElementById('software-deploy').__old = true")
    await bus.publish(
        [
            Envelope.of(
                SoftwareHostChanged(hostname="worker-0", release_id=RELEASE, state="installing"),
                source="test",
            )
        ]
    )
    await sw.wait_for_function(
        "document.getElementById('software-deploy').__old === undefined", timeout=2_000
    )
    await expect(sw.locator("#no-deployment")).to_be_visible()
    assert await sw.evaluate("window.__sameDocument === true"), "the software page reloaded"

    # A reader sees the strategy but neither Apply nor Abort (nor their forms).
    reader = await logged_in(browser, console, stack.tokens.reader)
    await reader.goto(f"{console.url}/software")
    await expect(reader.locator("#stages")).to_be_visible()
    assert await reader.get_by_role("button", name="Apply the update strategy").count() == 0
    assert await reader.get_by_role("button", name="Abort the update strategy").count() == 0
    assert await reader.locator('form[action^="/software/strategy"]').count() == 0
    await reader.context.close()

    # Apply for real, behind a confirmation: the software service runs it; worker-0 has no
    # agent, so its precheck fails (deterministically) and the service's own progress events
    # turn the open page to apply-failed with the reason, the failed stage and step marked in
    # the stages table (fetched again), Apply offered to resume; no reload.
    await sw.reload()
    await expect(bar).to_have_attribute("value", "0")
    await apply.click()
    await expect(sw.locator("h1")).to_have_text("Apply the update strategy?")
    await sw.get_by_role("button", name="Yes, apply the strategy").click()
    await expect(sw.locator(".notice")).to_contain_text("Apply of the strategy requested.")
    await live(sw)
    await sw.evaluate("window.__sameDocument = true")
    state = sw.locator('#strategy [data-sw="state"]')
    await expect(state).to_have_text("apply-failed", timeout=30_000)
    await expect(sw.locator('#strategy [data-sw="reason"]')).to_contain_text("worker-0")
    await expect(sw.locator("#stages tbody.stage.failed")).to_have_count(1, timeout=2_000)
    await expect(sw.locator("#stages tr.step-row.failed")).to_contain_text("precheck")
    await expect(sw.locator("#stages tr.step-row.failed .state-failed")).to_be_visible()
    started_at = sw.locator("#strategy-options dt:has-text('started') + dd")
    await expect(started_at).not_to_have_text("—")  # the options and times came along
    await expect(apply).to_be_visible()
    await expect(abort).to_be_hidden()
    assert await sw.evaluate("window.__sameDocument === true"), "the software page reloaded"
    await sw.screenshot(path=str(console.shots / "software-failed.png"), full_page=True)
    await overview.goto(f"{console.url}/")
    await expect(card.locator('[data-sw="state"]')).to_have_text("apply-failed")
    await expect(card.locator('[data-sw="reason"]')).to_contain_text("precheck")

    # The software service down: the page and the overview's card say so in words.
    console.software.stop()
    await sw.goto(f"{console.url}/software")
    await expect(sw.locator(".problem").first).to_contain_text(
        "The software service: cannot be reached"
    )
    assert "Traceback" not in await sw.content()
    await sw.screenshot(path=str(console.shots / "software-down.png"), full_page=True)
    await overview.goto(f"{console.url}/")
    await expect(card.locator(".problem")).to_contain_text("The software service")
    await expect(overview.locator("#h-hosts")).to_be_visible()
