"""Workspace liveness: offline latency after TTL expiry, reconciliation scan time, health sweep duration.

1. 10,000 online workspaces, 1 % going quiet at once (their keys set to expire together):
   time from each key's expiry to the workspace's `offline_at`, p50/p99 (the liveness monitor:
   the deadline index each tick, expired-key notifications, and its 10 s scan).
2. The reconciliation scan (`store.workspaces.OnlineScan`) over 10,000 and 100,000 online
   workspaces whose keys are all alive; baseline in the same run: SCARD of the same set.
3. The health sweep of 1,000 workspaces with 5 % hanging: the sweep's duration against the
   2 s probe timeout (`progress.last_sweep_s`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime

import harness
from aiohttp import web

from actors.health_sweep import PROBE_TIMEOUT_S, HealthSweep
from actors.liveness_monitor import LivenessMonitor
from store import keys, workspaces
from store.client import connect
from store.embedded import free_port
from store.records import new_id, now_rfc3339
from tests.support import wait_for


def populate(redis_url: str, tenant_id: str, count: int, url: str, ttl_ms: int) -> list[str]:
    """`count` online workspaces written straight to Redis, as heartbeats leave them."""
    client = harness.sync_redis(redis_url)
    ids = [new_id(keys.shard_of(tenant_id)) for _ in range(count)]
    now = now_rfc3339()
    deadline = time.time() + ttl_ms / 1000
    for start in range(0, count, 1000):
        with client.pipeline(transaction=False) as pipe:
            for workspace_id in ids[start : start + 1000]:
                fields = {"id": workspace_id, "tenant_id": tenant_id, "name": "w", "url": url, "a2a_version": "1.0"}
                pipe.hset(keys.workspace(workspace_id), mapping={**fields, "status": "online", "created_at": now})
                pipe.set(keys.workspace_alive(workspace_id), "1", px=ttl_ms)
                pipe.sadd(keys.workspaces_online(keys.shard_of(workspace_id)), workspace_id)
                pipe.zadd(keys.workspaces_deadlines(keys.shard_of(workspace_id)), {workspace_id: deadline})
            pipe.execute()
    return ids


def offline_latency() -> None:
    with harness.platform([LivenessMonitor]) as platform:
        tenant = platform.new_tenant("bench")
        populate(platform.settings.redis_url, tenant["id"], 9_900, "http://127.0.0.1:1/", 600_000)
        set_at = time.time()
        quiet = populate(platform.settings.redis_url, tenant["id"], 100, "http://127.0.0.1:1/", 3_000)
        expires_at = set_at + 3.0
        client = harness.sync_redis(platform.settings.redis_url)

        def offline_times() -> list[float] | None:
            with client.pipeline(transaction=False) as pipe:
                for workspace_id in quiet:
                    pipe.hget(keys.workspace(workspace_id), "offline_at")
                found = pipe.execute()
            if any(f is None for f in found):
                return None
            return [datetime.fromisoformat(f.decode().replace("Z", "+00:00")).timestamp() for f in found]

        times = wait_for(offline_times, 60, interval_s=0.2, what="100 workspaces offline")
        lags = [t - expires_at for t in times]
        print(f"offline after TTL expiry (100 of 10,000 at once): {harness.summary(lags)}", flush=True)


async def scan_times(redis_url: str) -> None:
    redis = connect(redis_url, timeout_s=30)
    tenant_id = new_id()
    total = 0
    for size in (10_000, 100_000):
        await asyncio.to_thread(populate, redis_url, tenant_id, size - total, "http://127.0.0.1:1/", 600_000)
        total = size
        t0 = time.perf_counter()
        scan = workspaces.OnlineScan(redis)
        expired = [w async for w in scan.expired()]
        seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        async with redis.pipeline(transaction=False) as pipe:
            for shard in keys.ALL_SHARDS:
                pipe.scard(keys.workspaces_online(shard))
            await pipe.execute()
        floor = time.perf_counter() - t0
        print(
            f"reconciliation scan of {scan.watched:,} online workspaces: {seconds * 1000:.0f} ms "
            f"({len(expired)} expired; SCARD of the same sets {floor * 1000:.2f} ms)",
            flush=True,
        )
    await redis.aclose()


def serve_health(port: int, started: threading.Event) -> None:
    async def health(request: web.Request) -> web.Response:
        if request.path.startswith("/hang"):
            await asyncio.sleep(3600)
        return web.Response(status=200)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", health)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        started.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def sweep_duration() -> None:
    port = free_port()
    started = threading.Event()
    threading.Thread(target=serve_health, args=(port, started), daemon=True).start()
    started.wait(10)
    with harness.platform([HealthSweep]) as platform:
        tenant = platform.new_tenant("sweep")
        url = platform.settings.redis_url
        populate(url, tenant["id"], 950, f"http://127.0.0.1:{port}/ok", 600_000)
        populate(url, tenant["id"], 50, f"http://127.0.0.1:{port}/hang", 600_000)
        durations = []
        seen = 0
        for _ in range(3):
            progress = wait_for(
                lambda s=seen: (
                    (p := platform.subsystem("health-sweep")["progress"])["sweeps"] > s and p["watched"] and p
                ),
                120,
            )
            seen = progress["sweeps"]
            durations.append(progress["last_sweep_s"])
        print(
            f"health sweep of 1,000 workspaces, 50 hanging: {', '.join(f'{d:.2f}' for d in durations)} s "
            f"(probe timeout {PROBE_TIMEOUT_S:g} s; ratio {max(durations) / PROBE_TIMEOUT_S:.2f})",
            flush=True,
        )


if __name__ == "__main__":
    offline_latency()
    with harness.redis_server() as server:
        asyncio.run(scan_times(server.url))
    sweep_duration()
