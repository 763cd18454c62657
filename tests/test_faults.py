"""Fault injection end to end: raise, exit, SIGKILL, block and hang are detected and cured."""

from __future__ import annotations

import os
import signal

from actors.runtime.supervised import RestartPolicy
from tests.support import Platform, wait_for

# Slow first backoff so BACKOFF is observable through the API for a few seconds.
SLOW_BACKOFF = RestartPolicy(initial_backoff_s=4.0)


def test_raise_restarts_the_loop_through_backoff(platform: Platform) -> None:
    with platform.ticker("raise-1", policy=SLOW_BACKOFF):
        before = platform.wait_state("raise-1", "RUNNING")
        platform.fault("raise-1", "raise")
        backoff = platform.wait_state("raise-1", "BACKOFF", restarts_exception=1)
        assert backoff["last_error"] == "RuntimeError: injected fault: raise"
        assert backoff["next_retry_at"] is not None
        assert backoff["healthy"] is False
        after = platform.wait_state("raise-1", "RUNNING", restarts_exception=1)
        assert after["pid"] == before["pid"]
        assert after["restarts"] == {"exception": 1, "process": 0, "stalled": 0}
        assert after["last_error_at"] is not None


def test_exit_restarts_the_process_and_its_loops_with_no_outside_call(platform: Platform) -> None:
    with platform.ticker("exit-1"):
        before = platform.wait_state("exit-1", "RUNNING")
        platform.fault("exit-1", "exit")
        after = platform.wait_state("exit-1", "RUNNING", restarts_process=1)
        assert after["pid"] != before["pid"]
        assert after["restarts"]["stalled"] == 0
        # The new process ticks on its own.
        ticks = after["progress"]["ticks"]
        wait_for(lambda: platform.subsystem("exit-1")["progress"]["ticks"] > ticks, 10, what="ticks advance")


def test_sigkill_of_the_pid_shown_in_liveness(platform: Platform) -> None:
    with platform.ticker("kill-1"):
        before = platform.wait_state("kill-1", "RUNNING")
        os.kill(before["pid"], signal.SIGKILL)
        after = platform.wait_state("kill-1", "RUNNING", restarts_process=1)
        assert after["pid"] != before["pid"]


def test_block_forever_is_detected_and_cured_by_the_watchdog(platform: Platform) -> None:
    with platform.ticker("block-1"):
        before = platform.wait_state("block-1", "RUNNING")
        wait_for(lambda: platform.get("/readyz")[0] == 200, 30, what="ready before the fault")
        platform.fault("block-1", "block")

        def unready() -> dict | None:
            status, body = platform.get("/readyz")
            return body if status == 503 else None

        body = wait_for(unready, 30, what="readyz 503")
        assert body["status"] == "unready" and "block-1" in body["unhealthy"]
        platform.wait_state("block-1", "STALLED")
        after = platform.wait_state("block-1", "RUNNING", restarts_stalled=1)
        assert after["pid"] != before["pid"]
        assert after["restarts"]["process"] == 0
        wait_for(lambda: platform.get("/readyz")[0] == 200, 30, what="ready after the cure")


def test_hang_is_detected_and_cured_as_stalled(platform: Platform) -> None:
    with platform.ticker("hang-1"):
        before = platform.wait_state("hang-1", "RUNNING")
        platform.fault("hang-1", "hang")
        stalled = platform.wait_state("hang-1", "STALLED")
        assert stalled["healthy"] is False
        after = platform.wait_state("hang-1", "RUNNING", restarts_stalled=1)
        assert after["pid"] != before["pid"]
        assert after["progress"]["ticks"] > before["progress"]["ticks"]  # RUNNING means it ticked
        assert after["restarts"] == {"exception": 0, "process": 0, "stalled": 1}


def test_block_past_stale_but_short_of_kill_recovers_without_a_kill(platform: Platform) -> None:
    with platform.ticker("pause-1"):
        before = platform.wait_state("pause-1", "RUNNING")
        # stale_after_s is 3 s and kill_after_s 6 s for a 1 s interval.
        platform.fault("pause-1", "block", seconds=4.5)
        platform.wait_state("pause-1", "STALLED")
        after = platform.wait_state("pause-1", "RUNNING")
        assert after["pid"] == before["pid"]
        assert after["restarts"] == {"exception": 0, "process": 0, "stalled": 0}
