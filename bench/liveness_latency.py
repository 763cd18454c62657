"""/admin/liveness with 1,000 registered subsystems at 50 concurrent clients; /livez as baseline."""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp
import harness
import ray

from actors.runtime.handles import HEALTH_ACTOR
from tests.support import ADMIN_TOKEN

SUBSYSTEMS = 1_000
CLIENTS = 50
REQUESTS = 2_000


async def load(url: str, token: str | None) -> list[float]:
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    remaining = REQUESTS

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            async with session.get(url, headers=headers) as response:
                await response.read()
                assert response.status == 200, response.status
            latencies.append(time.perf_counter() - start)

    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(CLIENTS)))
    return latencies


def main() -> None:
    with harness.platform() as platform:
        health = ray.get_actor(HEALTH_ACTOR, namespace=platform.settings.ray_namespace)
        names = [f"bench-{n}" for n in range(SUBSYSTEMS)]
        ray.get(health.register.remote([{"name": n, "interval_s": 60.0} for n in names]))
        reports = {n: {"state": "RUNNING", "tick_age_s": 0.0, "exception_restarts": 0} for n in names}
        ray.get(health.report.remote({"pid": os.getpid(), "node": None, "reports": reports}))
        body = platform.liveness()
        assert len(body["subsystems"]) == SUBSYSTEMS + 1
        asyncio.run(load(platform.url + "/livez", None))  # warm up
        livez = asyncio.run(load(platform.url + "/livez", None))
        liveness = asyncio.run(load(platform.url + "/admin/liveness", ADMIN_TOKEN))
    print(f"{SUBSYSTEMS:,} subsystems, {CLIENTS} concurrent clients, {REQUESTS:,} requests per endpoint")
    print(f"/admin/liveness: {harness.summary(liveness)}")
    print(f"/livez baseline: {harness.summary(livez)}")
    print(f"ratio liveness / livez: {harness.ratios(liveness, livez)}")


if __name__ == "__main__":
    main()
