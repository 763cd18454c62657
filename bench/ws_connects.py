"""WebSocket connects: a reconnect storm against the API, against a baseline in the same run.

`--clients` clients (in one process of their own, `--concurrency` at a time) each connect to
WS /ws with a tenant's token, wait for the connection to open, close it and connect
again, `--rounds` times: connects/s and the time to open (p50 / p99). What the platform does
per connect: the token's lookup, the tenant's share, the `ws_connections` count (one Lua
script, counted in Redis over every API), the stream's head, the hub's registration; and
on close, the count's release.

Baseline in the same run: one process with no Ray (uvicorn + Starlette, the same WebSocket
stack) that looks the token up in the same Redis (one GET), accepts, and waits for the
close. The ratio is what the platform's admission costs over the bare stack.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time

import harness
import redis.asyncio as aioredis
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect

from actors.broadcaster import Broadcaster
from store import keys, tenants
from store.embedded import free_port
from tests.ws_client import ws_url


def serve_baseline(port: int, redis_url: str) -> None:
    async def subscribe(websocket: WebSocket) -> None:
        token = (websocket.headers.get("authorization") or "").removeprefix("Bearer ")
        if await redis.get(keys.tenant_token(tenants.token_digest(token))) is None:
            await websocket.close(4401)
            return
        await websocket.accept()
        try:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass
        except WebSocketDisconnect:
            pass

    redis = aioredis.Redis.from_url(redis_url)
    app = Starlette(routes=[WebSocketRoute("/ws", subscribe)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", ws="websockets-sansio")


def storm(url: str, token: str, clients: int, rounds: int, concurrency: int, results: multiprocessing.Queue) -> None:
    async def main() -> tuple[float, list[float]]:
        gate = asyncio.Semaphore(concurrency)
        opened: list[float] = []

        async def client() -> None:
            for _ in range(rounds):
                async with gate:
                    t0 = time.perf_counter()
                    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
                        opened.append(time.perf_counter() - t0)
                        await ws.close()

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return time.perf_counter() - t0, opened

    results.put(asyncio.run(main()))


def run(name: str, url: str, token: str, args: argparse.Namespace) -> float:
    """One storm in a process of its own; prints and returns connects/s."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=storm, args=(url, token, args.clients, args.rounds, args.concurrency, results))
    process.start()
    seconds, opened = results.get(timeout=600)
    process.join(timeout=30)
    rate = len(opened) / seconds
    print(f"{name}: {len(opened):,} connects in {seconds:.2f} s: {rate:,.0f}/s; open {harness.summary(opened)}")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3, help="platform and baseline runs, alternating")
    args = parser.parse_args()
    with harness.platform([Broadcaster], tenant_max_ws_connections=args.clients) as platform:
        tenant = platform.new_tenant("bench-connects")
        port = free_port()
        baseline = multiprocessing.get_context("spawn").Process(
            target=serve_baseline, args=(port, platform.settings.redis_url), daemon=True
        )
        baseline.start()
        time.sleep(2)
        try:
            ratios = []
            for _ in range(args.repeat):
                ours = run("platform", ws_url(platform.url), tenant["token"], args)
                base = run("baseline", f"ws://127.0.0.1:{port}/ws", tenant["token"], args)
                ratios.append(ours / base)
            print("connects/s platform/baseline: " + ", ".join(f"{r:.2f}" for r in ratios), flush=True)
        finally:
            baseline.terminate()
            baseline.join(timeout=10)


if __name__ == "__main__":
    main()
