"""Scheduler throughput and lateness against a fast loopback A2A endpoint.

1. Burst: N schedules due in the same second; time until all are delivered, deliveries/s,
   lateness p50/p99. Baseline in the same run: a plain asyncio loop with the same HTTP
   client (aiohttp, 64 in flight) firing the same N requests at the same endpoint.
2. Steady: M schedules every 10 s for D seconds; lateness p99 and the scheduler's CPU share.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import time
import urllib.request

import aiohttp
import harness
import psutil
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from actors.a2a_client import request as a2a_request
from driver import SUBSYSTEMS
from store import keys, schedules
from store.client import connect
from store.embedded import free_port
from tests.support import ADMIN_TOKEN, Platform, http, wait_for

BASELINE_IN_FLIGHT = 64


def serve_agent(port: int, answer_after_s: float = 0.0) -> None:
    """A minimal JSON-RPC agent that records, per messageId, when it arrived; it answers after `answer_after_s`."""
    seen: dict[str, float] = {}

    async def rpc(request: Request) -> JSONResponse:
        body = await request.json()
        message_id = body["params"]["message"]["messageId"]
        seen.setdefault(message_id, time.time())
        if answer_after_s:
            await asyncio.sleep(answer_after_s)
        return JSONResponse({"jsonrpc": "2.0", "id": body["id"], "result": {"role": "agent", "parts": []}})

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(seen)

    async def reset(request: Request) -> JSONResponse:
        seen.clear()
        return JSONResponse({})

    app = Starlette(routes=[Route("/", rpc, methods=["POST"]), Route("/stats", stats), Route("/reset", reset)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def agent_stats(base: str) -> dict[str, float]:
    with urllib.request.urlopen(base + "stats", timeout=30) as response:
        return json.loads(response.read())


async def create_all(redis_url: str, tenant_id: str, workspace_id: str, cron: str, count: int) -> None:
    redis = connect(redis_url)
    now = time.time()
    body = {
        "workspace_id": workspace_id,
        "name": "b",
        "cron": cron,
        "timezone": "UTC",
        "prompt": "tick",
        "enabled": True,
    }
    for start in range(0, count, 50):
        await asyncio.gather(*(schedules.create(redis, tenant_id, body, now) for _ in range(min(50, count - start))))
    await redis.aclose()


async def baseline(url: str, count: int) -> float:
    """Same client, same concurrency, same request shape: no Ray, no Redis."""
    limit = asyncio.Semaphore(BASELINE_IN_FLIGHT)
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> None:
            headers, body = a2a_request("1.0", f"baseline-{i}", "tick")
            async with limit, session.post(url, json=body, headers=headers) as response:
                await response.read()

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        return time.perf_counter() - start


def lateness(seen: dict[str, float], prefix: str = "cron-") -> list[float]:
    return [at - int(mid.rsplit("-", 1)[1]) for mid, at in seen.items() if mid.startswith(prefix)]


def as_many_in_flight_as_the_baseline(platform: Platform, tenant: dict) -> None:
    """One tenant's fires in flight: 64, as the baseline's (its default quota is 16)."""
    path = f"{platform.url}/admin/tenants/{tenant['id']}"
    status, body = http("PATCH", path, {"quotas": {"fires_in_flight": BASELINE_IN_FLIGHT}}, token=ADMIN_TOKEN)
    assert status == 200, body


def burst(url: str, count: int, lead_s: int, **overrides: object) -> list[float]:
    """`count` schedules due in one second on a platform of their own; each delivery's lateness."""
    with harness.platform(subsystems=SUBSYSTEMS, **overrides) as platform:
        tenant = platform.new_tenant("bench")
        as_many_in_flight_as_the_baseline(platform, tenant)
        _, ws = platform.tenant_post(tenant, "/workspaces", {"name": "w", "url": url})
        slot = int(time.time()) + lead_s
        cron = f"{slot % 60} {slot // 60 % 60} * * * *"
        asyncio.run(create_all(platform.settings.redis_url, tenant["id"], ws["id"], cron, count))
        assert time.time() < slot, "creation took longer than the lead time"
        wait_for(lambda: len(agent_stats(url)) >= count, 600, interval_s=0.5, what="burst delivered")
        late = lateness(agent_stats(url))
    urllib.request.urlopen(url + "reset", timeout=30).read()
    return late


def egress_cost(url: str, count: int, rounds: int) -> None:
    """The egress guard (loopback allowed, every address checked) against its allow-all path, alternating."""
    guarded = {"egress_allow_cidrs": ("127.0.0.0/8",)}
    open_ = {"egress_allow_cidrs": ("0.0.0.0/0", "::/0")}
    rates: dict[str, list[float]] = {"guarded": [], "allow-all": []}
    for _ in range(rounds):
        for name, overrides in (("guarded", guarded), ("allow-all", open_)):
            late = burst(url, count, 25, **overrides)
            rates[name].append(count / max(late))
            print(f"  {name}: {count:,} delivered in {max(late):.2f} s, {rates[name][-1]:,.0f}/s", flush=True)
    ratio = statistics.median(rates["guarded"]) / statistics.median(rates["allow-all"])
    print(f"egress guard: median deliveries/s guarded / allow-all = {ratio:.3f} (goal: 0.95 or better)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--steady", type=int, default=1_000)
    parser.add_argument("--steady-seconds", type=int, default=120)
    parser.add_argument(
        "--egress", type=int, default=0, help="instead: rounds of the egress cost, guarded vs allow-all"
    )
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    agent = multiprocessing.get_context("spawn").Process(target=serve_agent, args=(port,), daemon=True)
    agent.start()
    wait_for(lambda: agent_stats(url) == {}, 30)
    try:
        if args.egress:
            egress_cost(url, min(args.burst, 5_000), args.egress)
            return
        with harness.platform(subsystems=SUBSYSTEMS) as platform:
            redis_url = platform.settings.redis_url
            tenant = platform.new_tenant("bench")
            as_many_in_flight_as_the_baseline(platform, tenant)
            _, ws = platform.tenant_post(tenant, "/workspaces", {"name": "w", "url": url})

            # 1. Burst: every schedule due in one second, about 40 s from now (creation takes a while).
            slot = int(time.time()) + 40
            asyncio.run(
                create_all(redis_url, tenant["id"], ws["id"], f"{slot % 60} {slot // 60 % 60} * * * *", args.burst)
            )
            assert time.time() < slot, "creation took longer than the lead time"
            wait_for(lambda: len(agent_stats(url)) >= args.burst, 600, interval_s=0.5, what="burst delivered")
            late = lateness(agent_stats(url))
            burst_s = max(late)
            base_s = asyncio.run(baseline(url, args.burst))
            print(f"burst: {args.burst:,} schedules due in one second")
            print(
                f"  scheduler: all delivered {burst_s:.2f} s after the slot, {args.burst / burst_s:,.0f} deliveries/s"
            )
            print(f"  lateness: {harness.summary(late, unit='s', scale=1.0)}")
            rate = args.burst / base_s
            print(f"  baseline (plain asyncio + aiohttp, 64 in flight): {base_s:.2f} s, {rate:,.0f} requests/s")
            print(f"  ratio scheduler / baseline time: {burst_s / base_s:.1f}x")

            # Clear the burst schedules out of the way.
            client = harness.sync_redis(redis_url)
            client.delete(keys.tenant_due(tenant["id"]))
            client.zrem(keys.schedules_due_tenants(keys.shard_of(tenant["id"])), tenant["id"])
            urllib.request.urlopen(url + "reset", timeout=30).read()

            # 2. Steady state.
            if args.steady:
                asyncio.run(create_all(redis_url, tenant["id"], ws["id"], "*/10 * * * * *", args.steady))
                pid = platform.subsystem("scheduler")["pid"]
                proc = psutil.Process(pid)
                proc.cpu_percent(None)
                time.sleep(args.steady_seconds)
                cpu = proc.cpu_percent(None)
                late = lateness(agent_stats(url))
                print(f"steady: {args.steady:,} schedules every 10 s for {args.steady_seconds} s ({len(late):,} fires)")
                print(f"  lateness: {harness.summary(late, unit='s', scale=1.0)}")
                print(f"  scheduler CPU: {cpu:.0f} % of one core ({cpu / psutil.cpu_count():.0f} % of the machine)")
    finally:
        agent.terminate()
        agent.join(10)


if __name__ == "__main__":
    main()
