"""One beat(): an in-process write vs one fire-and-forget actor call per beat (same run)."""

from __future__ import annotations

import asyncio
import time

import harness
import ray

from actors.runtime.heartbeat import Heartbeats

IN_PROCESS_BEATS = 1_000_000
ACTOR_CALLS = 20_000


@ray.remote(num_cpus=0)
class Sink:
    async def report(self, batch: dict) -> None:
        return None


async def _never(batch: dict) -> None:
    raise AssertionError("not flushed in this benchmark")


def in_process_cost_s() -> float:
    beats = Heartbeats(_never, pid=0, node=None)
    start = time.perf_counter()
    for i in range(IN_PROCESS_BEATS):
        beats.beat("scheduler", i)
    return (time.perf_counter() - start) / IN_PROCESS_BEATS


def actor_call_cost_s(sink) -> tuple[float, float]:
    ray.get(sink.report.remote({}))  # warm
    start = time.perf_counter()
    refs = [sink.report.remote({"reports": {"scheduler": {"tick_age_s": 0.0}}}) for _ in range(ACTOR_CALLS)]
    submitted = time.perf_counter() - start
    ray.get(refs)
    done = time.perf_counter() - start
    return submitted / ACTOR_CALLS, done / ACTOR_CALLS


def main() -> None:
    asyncio.set_event_loop(asyncio.new_event_loop())
    with harness.local_ray():
        sink = Sink.remote()
        beat = in_process_cost_s()
        submit, complete = actor_call_cost_s(sink)
    print(f"beat() in process:           {beat * 1e9:9.0f} ns per beat  ({IN_PROCESS_BEATS:,} beats)")
    print(f"actor call per beat, submit: {submit * 1e9:9.0f} ns per beat  ({ACTOR_CALLS:,} calls)")
    print(f"actor call per beat, done:   {complete * 1e9:9.0f} ns per beat  (until the actor processed all)")
    print(f"ratio submit / beat():   {submit / beat:8.0f}x")
    print(f"ratio done / beat():     {complete / beat:8.0f}x")


if __name__ == "__main__":
    main()
