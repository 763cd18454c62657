"""Adding a subsystem: a class in this file, deployed the way the driver deploys its own."""

from __future__ import annotations

import os
import signal
from typing import Any

from actors.runtime.subsystem import Subsystem, SubsystemSpec
from driver import Deployment
from settings import Settings
from store.client import connect
from tests.support import Platform, wait_for


class Counter(Subsystem):
    """A whole subsystem: its spec, a Redis client opened and closed by the runtime, a tick."""

    spec = SubsystemSpec("counter", interval_s=0.5)

    def __init__(self, settings: Settings, **runtime: Any) -> None:
        super().__init__(settings, **runtime)
        self.redis = self.own(connect(settings.redis_url))  # closed by the runtime on stop
        self.count = 0

    async def tick(self) -> None:
        self.count = await self.redis.incr(f"counter:{self.settings.ray_namespace}")

    def progress(self) -> dict[str, int]:
        return {"count": self.count}


def test_a_subsystem_defined_here_is_deployed_beats_and_comes_back_after_sigkill(platform: Platform) -> None:
    deployment: Deployment = platform.deployment
    actor = platform.add_subsystem(Counter, Counter.spec)  # registered, then deployment's own deploy()
    try:
        first = platform.wait_state("counter", "RUNNING")
        assert first["pid"] == actor.call_sync("ping", timeout_s=10)["pid"]
        counted = wait_for(lambda: platform.subsystem("counter")["progress"]["count"] >= 3, 10, what="ticks")
        assert counted
        # Deploying it again (a re-run driver) attaches to the same actor: never a second one.
        again = deployment.start(Counter)
        assert again.call_sync("ping", timeout_s=10)["pid"] == first["pid"]
        os.kill(first["pid"], signal.SIGKILL)
        back = platform.wait_state("counter", "RUNNING", restarts_process=1)
        assert back["pid"] != first["pid"]
        before = back["progress"]["count"]
        wait_for(lambda: platform.subsystem("counter")["progress"]["count"] > before, 10, what="counting again")
    finally:
        platform.remove_subsystem("counter")
