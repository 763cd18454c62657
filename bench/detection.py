"""Detection and cure: `block` to /readyz 503 and to RUNNING again; `exit` to RUNNING again."""

from __future__ import annotations

import statistics
import time

import harness

from tests.support import Platform, wait_for

ROUNDS = 3


def running_in_a_new_process(platform: Platform, old_pid: int) -> dict:
    def check() -> dict | None:
        sub = platform.subsystem("bench-ticker")
        return sub if sub["state"] == "RUNNING" and sub["pid"] != old_pid else None

    return wait_for(check, 60, interval_s=0.05)


def main() -> None:
    to_unready: list[float] = []
    to_running: list[float] = []
    exit_to_running: list[float] = []
    with harness.platform() as platform:
        platform.add_ticker("bench-ticker", interval_s=1.0)
        sub = platform.wait_state("bench-ticker", "RUNNING")
        stale_after_s = platform.subsystem("bench-ticker")["stale_after_s"]
        kill_after_s = platform.subsystem("bench-ticker")["kill_after_s"]
        for _ in range(ROUNDS):
            wait_for(lambda: platform.get("/readyz")[0] == 200, 60)
            start = time.monotonic()
            platform.fault("bench-ticker", "block")
            wait_for(lambda: platform.get("/readyz")[0] == 503, 60, interval_s=0.05)
            to_unready.append(time.monotonic() - start)
            sub = running_in_a_new_process(platform, sub["pid"])
            to_running.append(time.monotonic() - start)
        for _ in range(ROUNDS):
            start = time.monotonic()
            platform.fault("bench-ticker", "exit")
            sub = running_in_a_new_process(platform, sub["pid"])
            exit_to_running.append(time.monotonic() - start)
    print(f"ticker interval 1 s, stale_after_s {stale_after_s:g}, kill_after_s {kill_after_s:g}; {ROUNDS} rounds")
    print(f"block -> /readyz 503: median {statistics.median(to_unready):.2f} s  {[round(x, 2) for x in to_unready]}")
    print(f"block -> RUNNING:     median {statistics.median(to_running):.2f} s  {[round(x, 2) for x in to_running]}")
    exits = [round(x, 2) for x in exit_to_running]
    print(f"exit -> RUNNING:      median {statistics.median(exit_to_running):.2f} s  {exits}")
    print(
        f"ratio to thresholds: 503 / stale_after_s {statistics.median(to_unready) / stale_after_s:.2f}, "
        f"RUNNING / kill_after_s {statistics.median(to_running) / kill_after_s:.2f}"
    )


if __name__ == "__main__":
    main()
