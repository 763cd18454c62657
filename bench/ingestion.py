"""HealthActor ingestion from 4 processes x 1,000 names: coalesced batches vs one call per beat."""

from __future__ import annotations

import asyncio
import os
import time

import harness
import ray

from actors.runtime.handles import HEALTH_ACTOR

SENDERS = 4
NAMES = 1_000
DURATION_S = 5.0
IN_FLIGHT = 64


@ray.remote(num_cpus=0)
class Sender:
    def __init__(self, namespace: str, index: int) -> None:
        self.health = ray.get_actor(HEALTH_ACTOR, namespace=namespace)
        self.names = [f"bench-{index}-{n}" for n in range(NAMES)]

    async def coalesced(self, duration_s: float) -> int:
        """Beat every name, send them all in one batch, await it (one in flight); repeat."""
        sent = 0
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            reports = {name: {"state": "RUNNING", "tick_age_s": 0.0, "exception_restarts": 0} for name in self.names}
            await self.health.report.remote({"pid": os.getpid(), "node": None, "reports": reports})
            sent += len(reports)
        return sent

    async def per_beat(self, duration_s: float) -> int:
        """One call per beat, up to IN_FLIGHT calls outstanding."""
        sent = 0
        end = time.monotonic() + duration_s
        pending: set = set()
        i = 0
        while time.monotonic() < end:
            name = self.names[i % NAMES]
            i += 1
            batch = {"pid": os.getpid(), "node": None, "reports": {name: {"state": "RUNNING", "tick_age_s": 0.0}}}
            pending.add(asyncio.ensure_future(self.health.report.remote(batch)))
            if len(pending) >= IN_FLIGHT:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                sent += len(done)
        if pending:
            await asyncio.wait(pending)
            sent += len(pending)
        return sent


def run(senders: list, mode: str) -> float:
    start = time.perf_counter()
    counts = ray.get([getattr(s, mode).remote(DURATION_S) for s in senders])
    return sum(counts) / (time.perf_counter() - start)


def main() -> None:
    with harness.platform() as platform:
        namespace = platform.settings.ray_namespace
        senders = [Sender.remote(namespace, i) for i in range(SENDERS)]
        ray.get([s.coalesced.remote(0.5) for s in senders])  # warm up, create the records
        coalesced = run(senders, "coalesced")
        per_beat = run(senders, "per_beat")
    print(f"{SENDERS} processes x {NAMES:,} names, {DURATION_S:g} s each mode")
    print(f"coalesced (1 call carries {NAMES:,} beats): {coalesced:12,.0f} beats/s")
    print(f"one call per beat ({IN_FLIGHT} in flight):     {per_beat:12,.0f} beats/s")
    print(f"ratio coalesced / per beat: {coalesced / per_beat:.0f}x")


if __name__ == "__main__":
    main()
