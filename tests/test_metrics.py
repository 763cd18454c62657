"""Health metrics appear on Ray's metrics export port, tagged with the subsystem."""

from __future__ import annotations

import re
import urllib.request

from tests.support import Platform, wait_for


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_health_gauges_are_exported(platform: Platform, ray_session: dict) -> None:
    with platform.ticker("metered"):
        platform.wait_state("metered", "RUNNING")
        port = ray_session["metrics_port"]

        def exported() -> str | None:
            text = scrape(port)
            return text if re.search(r'ray_subsystem_healthy\{[^}]*subsystem="metered"[^}]*\} 1', text) else None

        text = wait_for(exported, 60, interval_s=1, what="subsystem_healthy gauge")
        assert re.search(r'ray_subsystem_seconds_since_tick\{[^}]*subsystem="metered"', text)
        for reason in ("exception", "process", "stalled"):
            assert re.search(
                rf'ray_subsystem_restarts\{{[^}}]*reason="{reason}"[^}}]*subsystem="metered"', text
            ) or re.search(rf'ray_subsystem_restarts\{{[^}}]*subsystem="metered"[^}}]*reason="{reason}"', text)
