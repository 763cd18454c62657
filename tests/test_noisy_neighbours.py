"""Noisy neighbours: one tenant's load never starves another's fires, probes or share."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from aiohttp import web
from cryptography.fernet import Fernet

from actors.health_sweep import HealthSweep
from actors.scheduler import Scheduler
from store import keys, workspaces
from store.client import connect
from store.embedded import free_port
from store.secrets import SecretBox
from tests.a2a_agent import A2AAgent, BlackHole
from tests.support import ADMIN_TOKEN, Platform, http, start_platform, wait_for
from tests.test_liveness_monitor import events_of, status
from tests.test_scheduler import schedule, workspace

KEY = Fernet.generate_key().decode()


@pytest.fixture(scope="module")
def shared(ray_session: dict, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    deployed = start_platform(
        redis_url,
        tmp_path_factory.mktemp("noisy"),
        subsystems=[Scheduler, HealthSweep],
        fire_timeout_s=5.0,
        health_sweep_interval_s=1.0,
        channel_secret_key=KEY,
    )
    yield deployed
    deployed.close()


def fired_at(agent: A2AAgent, schedule_id: str) -> dict[int, float]:
    """Each delivered slot of the schedule, and when it first arrived."""
    arrived: dict[int, float] = {}
    for r in agent.bodies_for(f"cron-{schedule_id}-"):
        slot = int(r["body"]["params"]["message"]["messageId"].rsplit("-", 1)[1])
        arrived.setdefault(slot, r["at"])
    return arrived


def test_a_tenant_with_300_hung_schedules_holds_its_own_fires_and_delays_no_one(shared: Platform) -> None:
    """Acceptance a: A's 300 every-second schedules hang; B's every-2-s slots all arrive, none 2 s late."""
    hole, agent = BlackHole().start(), A2AAgent().start()
    try:
        noisy, quiet = shared.new_tenant("noisy"), shared.new_tenant("quiet")
        stuck = workspace(shared, noisy, hole.url)
        for _ in range(300):
            schedule(shared, noisy, stuck, cron="* * * * * *")
        wait_for(lambda: hole.open >= 16, 30, what="the noisy tenant's fires in flight")
        healthy = workspace(shared, quiet, agent.url)
        mine = [schedule(shared, quiet, healthy, cron="*/2 * * * * *")["id"] for _ in range(5)]
        start = time.time()
        time.sleep(30)
        end = time.time()
        expected = [s for s in range(int(start) + 2, int(end) - 2) if s % 2 == 0]
        for schedule_id in mine:
            arrived = fired_at(agent, schedule_id)
            assert set(expected) <= set(arrived), sorted(set(expected) - set(arrived))
            late = {slot: round(at - slot, 2) for slot, at in arrived.items() if slot in expected}
            assert max(late.values()) <= 2.0, late
        assert hole.peak <= 16  # TENANT_FIRES_IN_FLIGHT, however many were due
        assert hole.connections > 16  # and they did turn over (each fire times out after 5 s)
        progress = shared.subsystem("scheduler")["progress"]
        assert progress["in_flight"] <= 16 + 5
    finally:
        hole.stop()
        agent.stop()


class Health:
    """Workspaces' `/health`: paths starting /hang hang, /bad answer 500 (counted per path), others 200."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.hits: Counter[str] = Counter()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        assert started.wait(10), "the health server did not start"

    def _run(self, started: threading.Event) -> None:
        async def health(request: web.Request) -> web.Response:
            self.hits[request.path] += 1
            if request.path.startswith("/hang"):
                await asyncio.sleep(3600)
            return web.Response(status=500 if request.path.startswith("/bad") else 200)

        app = web.Application()
        app.router.add_get("/{tail:.*}", health)
        self.runner = runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1)
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port, backlog=4096).start())
        started.set()
        self.loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)


async def online_workspaces(redis_url: str, tenant_id: str, urls: list[str]) -> list[str]:
    """Workspaces stored and heartbeating as the API would store them (2,000 by HTTP would take long)."""
    client, box = connect(redis_url), SecretBox(KEY)
    ids = []
    for start in range(0, len(urls), 200):
        body = {"a2a_version": "1.0", "restart_url": None, "auth_token": None}
        made = await asyncio.gather(
            *(workspaces.create(client, box, tenant_id, {**body, "name": "w", "url": u}) for u in urls[start:][:200])
        )
        ids += [w["id"] for w in made]
    await asyncio.gather(*(workspaces.heartbeat(client, tenant_id, w, 3600, 1000) for w in ids))
    await client.aclose()
    return ids


def test_2000_hanging_workspaces_never_stall_the_sweep_nor_delay_another_tenant(shared: Platform) -> None:
    """Acceptance c: the sweep stays RUNNING, B's failing workspace goes offline after 3 probes,
    and a sweep restarted in between keeps the count."""
    server = Health()
    try:
        noisy, quiet = shared.new_tenant("hangs"), shared.new_tenant("fails")
        url = shared.settings.redis_url
        asyncio.run(online_workspaces(url, noisy["id"], [f"{server.base}/hang/{n}/" for n in range(2000)]))
        wait_for(lambda: sum(n for p, n in server.hits.items() if p.startswith("/hang")) >= 16, 30, what="hangs")
        (first,) = asyncio.run(online_workspaces(url, quiet["id"], [f"{server.base}/bad-1/"]))
        wait_for(lambda: status(shared, quiet, first) == "offline", 30, what="B's workspace offline")
        assert server.hits["/bad-1/health"] == 3
        # Longer than the sweep's stale_after_s (15 s): it beats while the rounds go on.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            sub = shared.subsystem("health-sweep")
            assert sub["state"] == "RUNNING", sub
            time.sleep(0.5)
        assert sub["progress"]["rounds_in_progress"] >= 1  # the noisy tenant's round is still going
        assert shared.get("/readyz")[0] == 200

        # A restart between the second and the third failure keeps the count (kept in Redis).
        client = redis.Redis.from_url(url)
        (second,) = asyncio.run(online_workspaces(url, quiet["id"], [f"{server.base}/bad-2/"]))
        failures = keys.workspaces_probe_failures(keys.shard_of(second))
        wait_for(lambda: client.hget(failures, second) == b"2", 30, interval_s=0.02)
        os.kill(shared.pid_of("health-sweep"), signal.SIGKILL)
        wait_for(lambda: status(shared, quiet, second) == "offline", 60, what="the second one offline")
        # 3 probes in all, or 4 if one was in flight at the kill; a count started again would take 5.
        assert server.hits["/bad-2/health"] <= 4, server.hits["/bad-2/health"]
        assert events_of(shared, quiet["id"], second).count("WORKSPACE_OFFLINE") == 1
    finally:
        server.stop()
        client = redis.Redis.from_url(shared.settings.redis_url)
        # the 2,000 leave the sweep of the tests after this one
        client.delete(*(keys.workspaces_online(shard) for shard in keys.ALL_SHARDS))


def test_backlogged_tenants_share_the_scheduler_by_weight(ray_session: dict, fresh_redis, tmp_path) -> None:
    """Acceptance g. Its own platform: a global cap of 4 fires, so the tenants contend for it."""
    agent = A2AAgent(delay_s=0.5).start()
    platform = start_platform(fresh_redis(), tmp_path / "data", subsystems=[Scheduler], scheduler_fires_in_flight=4)
    try:
        light, heavy = platform.new_tenant("light"), platform.new_tenant("heavy")
        status_code, changed = http(
            "PATCH", f"{platform.url}/admin/tenants/{heavy['id']}", {"weight": 3}, token=ADMIN_TOKEN
        )
        assert status_code == 200 and changed["weight"] == 3, changed
        ids = {}
        for tenant in (light, heavy):
            ws = workspace(platform, tenant, agent.url)
            ids[tenant["id"]] = {schedule(platform, tenant, ws, cron="* * * * * *")["id"] for _ in range(20)}
        time.sleep(4)  # both backlogged: 40 due a second against about 8 a second of capacity
        start = time.time()
        time.sleep(15)
        got: Counter[str] = Counter()
        for r in agent.requests:
            message_id = r["body"]["params"]["message"]["messageId"]
            if r["at"] < start:
                continue
            owner = next(t for t, s in ids.items() if message_id.rsplit("-", 1)[0].removeprefix("cron-") in s)
            got[owner] += 1
        ratio = got[heavy["id"]] / max(got[light["id"]], 1)
        assert got[light["id"]] >= 10 and 2.2 <= ratio <= 4.0, (got, ratio)
    finally:
        platform.close()
        agent.stop()
