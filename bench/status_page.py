"""The status page's cost: 20 open pages polling, the API actor's CPU share.

A platform with every subsystem; for WINDOW_S seconds with no page open (the baseline, in
the same run, before and after), and between them with PAGES pages of GET /status open in one headless Chromium (the
distribution's, /usr/bin/chromium), each polling /admin/liveness every second and
/admin/quarantine every two. Reported: the API actor's and the HealthActor's CPU seconds
per second, and the requests the pages made.
"""

from __future__ import annotations

import time

import harness
import psutil
from playwright.sync_api import sync_playwright

from driver import SUBSYSTEMS
from tests.support import ADMIN_TOKEN
from tests.test_operators import CHROMIUM, CHROMIUM_ARGS

PAGES = 20
WINDOW_S = 30.0
SETTLE_S = 15.0


def cpu_share(processes: dict[str, psutil.Process], seconds: float) -> dict[str, float]:
    """CPU seconds per second of each process over `seconds`."""
    start = {name: sum(p.cpu_times()[:2]) for name, p in processes.items()}
    time.sleep(seconds)
    return {name: (sum(p.cpu_times()[:2]) - start[name]) / seconds for name, p in processes.items()}


def main() -> None:
    with harness.platform(subsystems=SUBSYSTEMS) as platform:
        processes = {"api": psutil.Process(platform.pid_of("api")), "health": psutil.Process(platform.pid_of("health"))}
        time.sleep(SETTLE_S)  # past the start's imports and first ticks
        idle = cpu_share(processes, WINDOW_S)
        requests = {"liveness": 0, "quarantine": 0}

        def count(request: object) -> None:
            url = getattr(request, "url", "")
            for name in requests:
                if f"/admin/{name}" in url:
                    requests[name] += 1

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            context = browser.new_context()
            context.on("request", count)
            for _ in range(PAGES):
                page = context.new_page()
                page.goto(platform.url + "/status")
                page.fill("#token", ADMIN_TOKEN)
                page.click("#login button[type=submit]")
                page.locator('#subsystems tr[data-subsystem="scheduler"]').wait_for(timeout=30_000)
            for name in requests:
                requests[name] = 0
            watched = cpu_share(processes, WINDOW_S)
            browser.close()
        after = cpu_share(processes, WINDOW_S)
    print(f"{PAGES} status pages open for {WINDOW_S:.0f} s against none, same platform, same run")
    print(
        f"requests by the pages: {requests['liveness'] / WINDOW_S:.1f}/s liveness, "
        f"{requests['quarantine'] / WINDOW_S:.1f}/s quarantine"
    )
    for name in processes:
        print(
            f"{name} actor CPU: {watched[name] * 100:.1f}% of a core with the pages, "
            f"{idle[name] * 100:.1f}% before them, {after[name] * 100:.1f}% after them"
        )


if __name__ == "__main__":
    main()
