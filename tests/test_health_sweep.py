"""The health sweep: failing, hanging and refusing workspaces go offline after 3 sweeps; healthy ones never."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import redis
from aiohttp import web

from actors.health_sweep import HealthSweep
from actors.liveness_monitor import LivenessMonitor
from store import keys
from store.embedded import free_port
from tests.support import Platform, start_platform, wait_for
from tests.test_liveness_monitor import beat, events_of, status


class Workspaces:
    """One asyncio server for many workspaces: /ok<n>/health is 200, /bad/health 500, /hang/health hangs."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        if not started.wait(10):
            raise RuntimeError("the workspaces' health server did not start")

    def _run(self, started: threading.Event) -> None:
        async def health(request: web.Request) -> web.Response:
            if request.path.startswith("/hang"):
                await asyncio.sleep(3600)
            return web.Response(status=500 if request.path.startswith("/bad") else 200)

        app = web.Application()
        app.router.add_get("/{tail:.*}", health)
        self.runner = web.AppRunner(app, handle_signals=False)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        started.set()
        self.loop.run_forever()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)  # a daemon thread; the hanging handler goes with it


@pytest.fixture
def swept(ray_session: dict, redis_url: str, tmp_path) -> Iterator[Platform]:
    deployed = start_platform(redis_url, tmp_path / "data", subsystems=[HealthSweep], health_sweep_interval_s=1.0)
    yield deployed
    deployed.close()


def test_bad_workspaces_go_offline_after_three_sweeps_and_healthy_ones_never(swept: Platform) -> None:
    servers = Workspaces()
    try:
        tenant = swept.new_tenant("sweep")
        urls = {
            "failing": f"{servers.base}/bad",
            "hanging": f"{servers.base}/hang",
            "refusing": f"http://127.0.0.1:{free_port()}/",
        }
        ids = {}
        for name, url in [*urls.items(), *((f"ok{n}", f"{servers.base}/ok{n}/") for n in range(200))]:
            status_code, ws = swept.tenant_post(tenant, "/workspaces", {"name": name, "url": url})
            assert status_code == 201, ws
            ids[name] = ws["id"]
            beat(swept, tenant, ws["id"])
        bad = [ids[n] for n in urls]
        wait_for(lambda: all(status(swept, tenant, w) == "offline" for w in bad), 60, what="the 3 bad ones offline")
        before = swept.subsystem("health-sweep")["progress"]
        # Three more sweeps: enough for any healthy workspace to have failed its way offline.
        wait_for(lambda: swept.subsystem("health-sweep")["progress"]["sweeps"] >= before["sweeps"] + 3, 60)
        client = redis.Redis.from_url(swept.settings.redis_url)
        healthy = [w for n, w in ids.items() if n.startswith("ok")]
        assert all(client.hget(keys.workspace(w), "status") == b"online" for w in healthy)
        for w in bad:
            assert events_of(swept, tenant["id"], w).count("WORKSPACE_OFFLINE") == 1
        progress = swept.subsystem("health-sweep")["progress"]
        assert progress["watched"] >= 200
    finally:
        servers.stop()


def test_a_workspace_with_a_corrupt_url_is_quarantined(swept: Platform) -> None:
    tenant = swept.new_tenant("sweep-poison")
    _, ws = swept.tenant_post(tenant, "/workspaces", {"name": "w", "url": "http://127.0.0.1:1/"})
    beat(swept, tenant, ws["id"])
    client = redis.Redis.from_url(swept.settings.redis_url)
    client.hset(keys.workspace(ws["id"]), "url", b"\xff\xfe not a url")
    sub = wait_for(lambda: (s := swept.subsystem("health-sweep"))["quarantined"] >= 1 and s, 30)
    assert sub["state"] == "RUNNING"
    client.srem(keys.workspaces_online(keys.shard_of(ws["id"])), ws["id"])


def test_corrupt_workspaces_are_quarantined_by_both_actors(ray_session: dict, redis_url: str, tmp_path) -> None:
    platform = start_platform(
        redis_url,
        tmp_path / "data",
        subsystems=[LivenessMonitor, HealthSweep],
        workspace_ttl_s=1.0,
        liveness_scan_interval_s=1.0,
        health_sweep_interval_s=1.0,
    )
    client = redis.Redis.from_url(platform.settings.redis_url)
    try:
        tenant = platform.new_tenant("corrupt")
        ids = {}
        for name in ("bad-url", "bad-utf8", "no-tenant", "good"):
            _, ws = platform.tenant_post(
                tenant, "/workspaces", {"name": name, "url": f"http://127.0.0.1:{free_port()}/"}
            )
            ids[name] = ws["id"]
            beat(platform, tenant, ws["id"])
        client.hset(keys.workspace(ids["bad-url"]), "url", "not a url")
        client.hset(keys.workspace(ids["bad-utf8"]), "name", b"\xff\xfe")
        client.hdel(keys.workspace(ids["no-tenant"]), "tenant_id")

        def quarantined(name: str) -> bool:
            return platform.subsystem(name)["quarantined"] >= 3

        wait_for(lambda: quarantined("liveness-monitor") and quarantined("health-sweep"), 60, what="3 each")
        # The good workspace (quiet, and its health endpoint refuses) still goes offline, once.
        wait_for(lambda: status(platform, tenant, ids["good"]) == "offline", 30)
        assert events_of(platform, tenant["id"], ids["good"]).count("WORKSPACE_OFFLINE") == 1
        for name in ("liveness-monitor", "health-sweep"):
            assert platform.subsystem(name)["state"] == "RUNNING"
    finally:
        for workspace_id in ids.values():
            client.srem(keys.workspaces_online(keys.shard_of(workspace_id)), workspace_id)
            client.zrem(keys.workspaces_deadlines(keys.shard_of(workspace_id)), workspace_id)
        platform.close()
