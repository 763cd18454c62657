"""Broadcaster throughput and latency: XADD to receipt on 100 WebSocket clients of 10 tenants.

1. Throughput: E events per tenant appended as fast as Redis takes them; events/s until the
   last of the 100 clients has all of them.
2. Latency at half the platform's rate, for 8 s: receipt time minus the stream id's time.
   Again with a stalled client (one that stops reading) on every tenant.
3. Catch-up: one client replays 100,000 events (last_event_id=0-0).

Baseline in the same run: one process with no Ray in between (uvicorn + Starlette, the same
WebSocket stack) that XREADs the same streams with redis-py and sends each event to the
same clients. The clients run in two processes of their own.

`--api-per-node` runs the platform with API_PER_NODE (each API actor reads its own
clients' streams: no broadcaster), on a Ray of `--nodes` nodes on this machine: with 3,
three API actors share the port and the kernel spreads the clients over them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time
from typing import Any

import harness
import redis.asyncio as aioredis
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect

from actors.broadcaster import Broadcaster
from store import events, keys
from store.embedded import free_port
from tests.ws_client import StalledClient, Writer

TENANTS = 10
CLIENTS_PER_TENANT = 10
CLIENT_PROCESSES = 2


# -- the baseline: one process, redis-py straight to the sockets ----------------------------


def serve_baseline(port: int, redis_url: str, tenant_ids: list[str]) -> None:
    clients: dict[str, set[WebSocket]] = {t: set() for t in tenant_ids}

    async def subscribe(websocket: WebSocket) -> None:
        await websocket.accept()
        tenant_id = websocket.query_params["tenant"]
        clients[tenant_id].add(websocket)
        try:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass
        except WebSocketDisconnect:
            pass
        finally:
            clients[tenant_id].discard(websocket)

    async def relay() -> None:
        redis = aioredis.Redis.from_url(redis_url)
        positions = {keys.events(t): await events.head(redis, t) or "0-0" for t in tenant_ids}
        while True:
            reply = await redis.xread(positions, count=1000, block=1000)
            for raw_key, entries in reply:
                key = raw_key.decode()
                tenant_id = keys.events_tenant(key)
                for raw_id, fields in entries:
                    text = events.envelope(tenant_id, raw_id.decode(), fields)
                    for websocket in list(clients[tenant_id]):
                        try:
                            await websocket.send_text(text)
                        except Exception:
                            clients[tenant_id].discard(websocket)
                positions[key] = entries[-1][0].decode()

    async def main() -> None:
        config = uvicorn.Config(
            Starlette(routes=[WebSocketRoute("/ws", subscribe)]),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            ws="websockets-sansio",
        )
        relay_task = asyncio.create_task(relay())
        await uvicorn.Server(config).serve()
        relay_task.cancel()

    asyncio.run(main())


# -- the clients ---------------------------------------------------------------------------


def run_clients(targets: list[tuple[str, dict[str, str]]], expect: int, ready: Any, results: Any) -> None:
    """Connect every target, report ready, read `expect` events each; report receipts."""

    async def one(url: str, headers: dict[str, str], opened: asyncio.Event, out: list) -> None:
        async with connect(url, additional_headers=headers, max_size=None, open_timeout=30) as ws:
            opened.set()
            now = time.time()
            for _ in range(expect):
                message = await asyncio.wait_for(ws.recv(), 120)
                now = time.time()
                out.append(now - int(json.loads(message)["id"].split("-")[0]) / 1000)
            out.append(now)  # the last element is the time of the last receipt

    async def main() -> None:
        openeds = [asyncio.Event() for _ in targets]
        outs: list[list[float]] = [[] for _ in targets]
        tasks = [asyncio.create_task(one(u, h, e, o)) for (u, h), e, o in zip(targets, openeds, outs, strict=True)]
        await asyncio.gather(*(e.wait() for e in openeds))
        ready.put(len(targets))
        await asyncio.gather(*tasks)
        results.put((max(o[-1] for o in outs), [x for o in outs for x in o[:-1]]))

    asyncio.run(main())


def measure(targets: list[tuple[str, dict[str, str]]], expect: int, write: Any) -> tuple[float, float, list[float]]:
    """Start the client processes, wait until all are connected, call write(); (t0, last receipt, latencies)."""
    ctx = multiprocessing.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    share = [targets[i::CLIENT_PROCESSES] for i in range(CLIENT_PROCESSES)]
    procs = [ctx.Process(target=run_clients, args=(s, expect, ready, results)) for s in share]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    t0 = time.time()
    write()
    outcomes = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    return t0, max(o[0] for o in outcomes), [x for o in outcomes for x in o[1]]


def burst(writer: Writer, tenant_ids: list[str], per_tenant: int) -> None:
    for start in range(0, per_tenant, 100):
        writer.write_all(tenant_ids, min(100, per_tenant - start), start=start)


def paced(writer: Writer, tenant_ids: list[str], rate: float, seconds: float = 8.0) -> None:
    """Append `rate` events/s in all, round-robin over the tenants, for `seconds`."""
    per_tenant = paced_count(rate, len(tenant_ids), seconds)
    start = time.monotonic()
    written = 0
    while written < per_tenant:
        due = min(per_tenant, int((time.monotonic() - start) * rate / len(tenant_ids)) + 1)
        writer.write_all(tenant_ids, due - written, start=written)
        written = due
        time.sleep(0.005)


def paced_count(rate: float, tenants: int, seconds: float = 8.0) -> int:
    return max(1, int(rate * seconds / tenants))


def run_system(
    name: str,
    targets: list[tuple[str, dict[str, str]]],
    writer: Writer,
    tenant_ids: list[str],
    per_tenant: int,
    rate: float | None,
) -> tuple[float, float]:
    """Throughput, then latency at `rate` (half the measured throughput if None); returns both rates."""
    t0, last, _ = measure(targets, per_tenant, lambda: burst(writer, tenant_ids, per_tenant))
    throughput = per_tenant * len(tenant_ids) / (last - t0)
    print(
        f"{name}: throughput {throughput:,.0f} events/s ({throughput * CLIENTS_PER_TENANT:,.0f} receipts/s) "
        f"for {per_tenant * len(tenant_ids):,} events to {len(targets)} clients",
        flush=True,
    )
    rate = rate or throughput / 2
    _, _, latencies = measure(targets, paced_count(rate, len(tenant_ids)), lambda: paced(writer, tenant_ids, rate))
    print(f"{name}: latency at {rate:,.0f} events/s: {harness.summary(latencies)}", flush=True)
    return throughput, rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-tenant", type=int, default=2_000)
    parser.add_argument("--replay", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=None, help="events/s for the latency runs (default: half)")
    parser.add_argument("--api-per-node", action="store_true", help="API_PER_NODE=1: an API on every node")
    parser.add_argument("--nodes", type=int, default=1, help="Ray nodes on this machine")
    args = parser.parse_args()
    print(f"platform: API_PER_NODE={int(args.api_per_node)} on {args.nodes} node(s)", flush=True)
    with harness.platform([Broadcaster], args.nodes, api_per_node=args.api_per_node) as platform:
        tenants = [platform.new_tenant(f"bench-{n}") for n in range(TENANTS)]
        ids = [t["id"] for t in tenants]
        writer = Writer(platform.settings.redis_url)
        ws_base = platform.url.replace("http://", "ws://") + "/ws"
        ours = [
            (ws_base, {"Authorization": f"Bearer {t['token']}"}) for t in tenants for _ in range(CLIENTS_PER_TENANT)
        ]
        port = free_port()
        baseline = multiprocessing.get_context("spawn").Process(
            target=serve_baseline, args=(port, platform.settings.redis_url, ids), daemon=True
        )
        baseline.start()
        base = [(f"ws://127.0.0.1:{port}/ws?tenant={t}", {}) for t in ids for _ in range(CLIENTS_PER_TENANT)]
        time.sleep(2)
        try:
            ours_rate, half = run_system("platform", ours, writer, ids, args.per_tenant, args.rate)
            base_rate, _ = run_system("baseline", base, writer, ids, args.per_tenant, half)
            print(f"throughput ratio platform/baseline: {ours_rate / base_rate:.2f}", flush=True)
            stalled = [StalledClient(platform.url, t["token"]) for t in tenants]
            _, _, latencies = measure(ours, paced_count(half, TENANTS), lambda: paced(writer, ids, half))
            print(f"platform with a stalled client on every tenant: latency {harness.summary(latencies)}", flush=True)
            for client in stalled:
                client.sock.close()
            replay(platform, writer, args.replay)
        finally:
            baseline.terminate()
            baseline.join(timeout=10)


def replay(platform: Any, writer: Writer, count: int) -> None:
    tenant = platform.new_tenant("bench-replay")
    for start in range(0, count, 1000):
        writer.write(tenant["id"], 1000, start=start)

    async def catch_up() -> float:
        url = platform.url.replace("http://", "ws://") + "/ws?last_event_id=0-0"
        t0 = time.perf_counter()
        async with connect(url, additional_headers={"Authorization": f"Bearer {tenant['token']}"}) as ws:
            for _ in range(count):
                await ws.recv()
        return time.perf_counter() - t0

    async def read_only() -> float:
        redis = aioredis.Redis.from_url(platform.settings.redis_url)
        t0 = time.perf_counter()
        cursor = "0-0"
        while True:
            page = await events.after(redis, tenant["id"], cursor, 500)
            if not page:
                break
            for stream_id, fields in page:
                events.envelope(tenant["id"], stream_id, fields)
            cursor = page[-1][0]
        return time.perf_counter() - t0

    seconds = asyncio.run(catch_up())
    floor = asyncio.run(read_only())
    print(
        f"catch-up: {count:,} events replayed over WS /ws in {seconds:.2f} s ({count / seconds:,.0f}/s); "
        f"reading and encoding them with redis-py alone: {floor:.2f} s; ratio {seconds / floor:.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
