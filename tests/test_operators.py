"""The operators' doors: the status page in a real browser, the quarantine API, `driver.py status`.

One platform with every subsystem serves the module. The browser is the distribution's
Chromium (/usr/bin/chromium), driven by Playwright; screenshots of each state the page
goes through are saved under artifacts/status-page/.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from playwright.sync_api import Page, sync_playwright

from actors.runtime.handles import API_ACTOR, NamedActor
from driver import SUBSYSTEMS
from store import keys
from tests.a2a_agent import A2AAgent
from tests.support import ADMIN_TOKEN, Platform, http, start_platform, wait_for

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "artifacts" / "status-page"
CHROMIUM = "/usr/bin/chromium"
# Root in a container (no sandbox) and nothing to reach beyond loopback (no background networking).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NAMES = [cls.spec.name for cls in SUBSYSTEMS] + ["api"]
STALLED_RED = "rgb(207, 34, 46)"  # .state-STALLED in api/status.html
RUNNING_GREEN = "rgb(26, 127, 55)"


@pytest.fixture(scope="module")
def operated(ray_session: dict, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    deployed = start_platform(redis_url, tmp_path_factory.mktemp("ops-data"), subsystems=SUBSYSTEMS)
    yield deployed
    deployed.close()


@pytest.fixture
def page() -> Iterator[Page]:
    assert os.path.exists(CHROMIUM), "the status page test needs Debian's chromium package (make test installs it)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


def corrupt_schedule(platform: Platform, agent: A2AAgent, name: str) -> tuple[dict, dict]:
    """A tenant's every-second schedule whose cron is then broken in Redis, as a bad row would be."""
    tenant = platform.new_tenant(name)
    status, ws = platform.tenant_post(tenant, "/workspaces", {"name": "w", "url": agent.url})
    assert status == 201, ws
    body = {"workspace_id": ws["id"], "name": "s", "cron": "* * * * * *", "prompt": "hello"}
    status, schedule = platform.tenant_post(tenant, "/schedules", body)
    assert status == 201, schedule
    redis.Redis.from_url(platform.settings.redis_url).hset(keys.schedule(schedule["id"]), "cron", "every day at noon")
    return tenant, schedule


def quarantined(platform: Platform, key: str) -> dict[str, Any] | None:
    status, body = platform.get("/admin/quarantine")
    assert status == 200, body
    return next((item for item in body["items"] if item["key"] == key), None)


def repair(platform: Platform, schedule: dict) -> None:
    """An operator fixes the row in Redis by hand: no PATCH, so only a release brings it back."""
    redis.Redis.from_url(platform.settings.redis_url).hset(keys.schedule(schedule["id"]), "cron", "* * * * * *")


def run_count(platform: Platform, tenant: dict, schedule: dict) -> int:
    status, body = platform.tenant_get(tenant, f"/schedules/{schedule['id']}")
    assert status == 200, body
    return body["run_count"]


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def row_state(page: Page, name: str) -> tuple[str, str]:
    cell = page.locator(f'#subsystems tr[data-subsystem="{name}"] td.state')
    return cell.inner_text(), cell.evaluate("td => getComputedStyle(td).backgroundColor")


def page_shows(page: Page, name: str, state: str, timeout_s: float) -> None:
    """Wait until the subsystem's row reads `state` (polled from here: the page's CSP forbids eval)."""
    wait_for(
        lambda: page.locator(f'#subsystems tr[data-subsystem="{name}"] td.state').all_inner_texts() == [state],
        timeout_s,
        interval_s=0.1,
        what=f"the page showing {name} {state}",
    )


def test_the_status_page_shows_a_stall_a_recovery_and_releases_a_quarantined_schedule(
    operated: Platform, agent: A2AAgent, page: Page
) -> None:
    platform = operated
    page.goto(platform.url + "/status")
    assert page.locator("#login").is_visible() and not page.locator("#board").is_visible()
    page.fill("#token", ADMIN_TOKEN)
    page.click("#login button[type=submit]")
    # The token is kept in the tab's session storage, never in the address.
    assert page.evaluate("sessionStorage.getItem('platform.adminToken')") == ADMIN_TOKEN
    assert ADMIN_TOKEN not in page.url

    for name in NAMES:
        page_shows(page, name, "RUNNING", 30)
        assert row_state(page, name) == ("RUNNING", RUNNING_GREEN)
    assert page.inner_text("#verdict") == "READY"
    assert page.locator("#subsystems th[scope=col]").count() == 8  # a semantic table, headed by column
    # Seconds since the last tick count on between refreshes.
    age = page.locator('#subsystems tr[data-subsystem="health-sweep"] td.age')
    assert age.inner_text().endswith("s ago")
    shot(page, "1-running")

    # A wedged event loop: the row says STALLED, in words and in red, soon after /readyz turns 503.
    before = platform.subsystem("scheduler")["restarts"]["stalled"]
    platform.fault("scheduler", "block")
    wait_for(lambda: platform.get("/readyz", token=None)[0] == 503, 30, what="readyz 503")
    page_shows(page, "scheduler", "STALLED", 5)
    assert row_state(page, "scheduler") == ("STALLED", STALLED_RED)
    assert "NOT READY" in page.inner_text("#verdict") and "scheduler" in page.inner_text("#verdict")
    shot(page, "2-stalled")

    # The watchdog's restart brings it back, counted as one stalled restart.
    page_shows(page, "scheduler", "RUNNING", 60)
    restarts = page.inner_text('#subsystems tr[data-subsystem="scheduler"] td.restarts')
    assert f"stalled {before + 1}" in restarts, restarts
    shot(page, "3-recovered")

    # A corrupt schedule shows in the quarantine list; once its row is repaired, Release brings it back.
    tenant, schedule = corrupt_schedule(platform, agent, "page-victim")
    key = schedule["id"]
    row = page.locator(f'#quarantine tr[data-key="{key}"]')
    row.wait_for(timeout=30_000)
    assert row.locator("td").nth(0).inner_text() == "scheduler"
    assert row.locator("td").nth(2).inner_text() == tenant["id"]
    assert "cron" in row.locator("td").nth(3).inner_text()
    shot(page, "4-quarantined")
    repair(platform, schedule)
    row.get_by_role("button", name=f"Release scheduler item {key}").click()
    row.wait_for(state="detached", timeout=10_000)
    assert "Released" in page.inner_text("#quarantine-note")
    assert quarantined(platform, key) is None
    wait_for(lambda: run_count(platform, tenant, schedule) >= 1, 30, what="the released schedule fires")
    shot(page, "5-released")


def test_a_wrong_token_is_refused_and_asked_for_again(operated: Platform, page: Page) -> None:
    page.goto(operated.url + "/status")
    page.fill("#token", "not-the-admin-token-0123456789")
    page.click("#login button[type=submit]")
    page.locator("#login-problem").filter(has_text="refused").wait_for(timeout=10_000)
    assert page.locator("#login").is_visible()
    assert page.evaluate("sessionStorage.getItem('platform.adminToken')") is None


def test_the_status_page_reads_at_a_phones_width(operated: Platform, page: Page) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(operated.url + "/status")
    page.fill("#token", ADMIN_TOKEN)
    page.click("#login button[type=submit]")
    page.locator('#subsystems tr[data-subsystem="scheduler"]').wait_for(timeout=30_000)
    # Nothing wider than the screen: each row is a card, each cell labelled by its column.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    label = page.locator('#subsystems tr[data-subsystem="scheduler"] td.state').evaluate(
        "td => getComputedStyle(td, '::before').content"
    )
    assert label == '"State"'
    shot(page, "6-phone")


def test_the_page_needs_nothing_from_elsewhere(operated: Platform) -> None:
    status, html = http("GET", operated.url + "/status")
    assert status == 200 and "<table" in html
    for outside in ("http://", "https://", "//cdn", "<link", "src="):
        assert outside not in html, outside


def test_quarantine_api_is_admin_only_and_releases_what_it_holds(operated: Platform, agent: A2AAgent) -> None:
    platform = operated
    tenant, schedule = corrupt_schedule(platform, agent, "api-victim")
    release = {"subsystem": "scheduler", "key": schedule["id"]}
    assert platform.get("/admin/quarantine", token=None)[0] == 401
    assert platform.get("/admin/quarantine", token=tenant["token"])[0] == 401
    assert platform.post("/admin/quarantine/release", release, token=None)[0] == 401
    assert platform.post("/admin/quarantine/release", release, token=tenant["token"])[0] == 401
    for bad in ({}, {"subsystem": "scheduler"}, {"subsystem": "scheduler", "key": 7}, {**release, "extra": 1}):
        status, body = platform.post("/admin/quarantine/release", bad)
        assert status == 422 and body["error"], bad

    item = wait_for(lambda: quarantined(platform, schedule["id"]), 30, what="the schedule quarantined")
    assert item["subsystem"] == "scheduler" and item["tenant_id"] == tenant["id"]
    assert "cron" in item["error"] and item["failures"] >= 3 and item["since"].endswith("Z")

    # Not quarantined, or no such subsystem: 404.
    status, body = platform.post("/admin/quarantine/release", {"subsystem": "scheduler", "key": "no-such-item"})
    assert status == 404 and "no-such-item" in body["error"]
    status, body = platform.post("/admin/quarantine/release", {**release, "subsystem": "no-such-subsystem"})
    assert status == 404 and "no-such-subsystem" in body["error"]

    # Repaired by hand, it stays out of the due index until released (only a PATCH or a release lifts it).
    repair(platform, schedule)
    time.sleep(2.5)
    assert run_count(platform, tenant, schedule) == 0
    status, body = platform.post("/admin/quarantine/release", release)
    assert status == 200 and body == {**release, "released": True}
    wait_for(lambda: run_count(platform, tenant, schedule) >= 2, 30, what="the released schedule worked again")
    status, record = platform.tenant_get(tenant, f"/schedules/{schedule['id']}")
    assert record["last_status"] == "ok" and record["consecutive_failures"] == 0
    assert quarantined(platform, schedule["id"]) is None
    assert platform.post("/admin/quarantine/release", release)[0] == 404  # released once


def driver_status(platform: Platform, ray_session: dict) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_session["gcs_address"],
        "RAY_AUTH_MODE": "token",
        "RAY_NAMESPACE": platform.settings.ray_namespace,
    }
    return subprocess.run(
        [sys.executable, "driver.py", "status"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_driver_status_exits_0_when_ready_and_1_naming_a_stalled_subsystem(
    operated: Platform, ray_session: dict
) -> None:
    platform = operated
    wait_for(lambda: platform.get("/readyz", token=None)[0] == 200, 60, what="ready")
    ready = driver_status(platform, ray_session)
    assert ready.returncode == 0, ready.stdout + ready.stderr
    lines = ready.stdout.splitlines()
    for name in NAMES:
        assert any(line.split()[:2] == [name, "RUNNING"] for line in lines), (name, ready.stdout)
    assert lines[-1].startswith("ready:")

    # Draining: every subsystem healthy, but not ready (as /readyz says), from the API's next beat.
    api = NamedActor(API_ACTOR, platform.settings.ray_namespace)
    api.call_sync("set_draining", True, timeout_s=5)
    try:
        wait_for(lambda: platform.subsystem("api")["progress"]["draining"], 15, what="the API's beat says draining")
        draining = driver_status(platform, ray_session)
    finally:
        api.call_sync("set_draining", False, timeout_s=5)
    assert draining.returncode == 1 and "not ready: draining" in draining.stdout, draining.stdout
    wait_for(lambda: not platform.subsystem("api")["progress"]["draining"], 15, what="the API's beat says serving")

    platform.fault("health-sweep", "block", 30)
    wait_for(lambda: platform.get("/readyz", token=None)[0] == 503, 30, what="readyz 503")
    stalled = driver_status(platform, ray_session)
    assert stalled.returncode == 1, stalled.stdout + stalled.stderr
    assert "not ready: health-sweep (STALLED)" in stalled.stdout
    wait_for(lambda: platform.get("/readyz", token=None)[0] == 200, 90, what="ready again")
