"""Liveness replicas: the monitor's and the sweep's replicas share the workspaces by shard;
each quiet workspace goes offline once with one restart request, also when a replica dies."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from actors.health_sweep import HealthSweep
from actors.liveness_monitor import LivenessMonitor
from actors.runtime.handles import NamedActor
from store.keys import shard_of
from store.shards import assigned
from tests.support import Platform, start_platform, wait_for
from tests.test_health_sweep import Workspaces
from tests.test_liveness_monitor import RestartEndpoint, beat, events_of, new_workspace, status

MONITORS = ["liveness-monitor", "liveness-monitor-1", "liveness-monitor-2"]
SWEEPS = ["health-sweep", "health-sweep-1", "health-sweep-2"]


@pytest.fixture(scope="module")
def replicated(ray_session: dict, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    deployed = start_platform(
        redis_url,
        tmp_path_factory.mktemp("liveness-replicas"),
        subsystems=[LivenessMonitor, HealthSweep],
        liveness_replicas=3,
        shard_lease_s=3.0,
        workspace_ttl_s=5.0,
        liveness_scan_interval_s=1.0,
        health_sweep_interval_s=1.0,
        restart_debounce_s=60.0,
    )
    yield deployed
    deployed.close()


def test_replicas_share_the_workspaces_and_each_quiet_one_goes_offline_once(replicated: Platform) -> None:
    platform = replicated
    endpoint, servers = RestartEndpoint(), Workspaces()
    stop = threading.Event()
    try:
        # Tenants until each replica of both kinds has some in its shards (ids are random).
        shares = [set(got) for names in (MONITORS, SWEEPS) for got in assigned(names).values()]
        tenants: list[dict] = []
        while not all(any(shard_of(t["id"]) in share for t in tenants) for share in shares):
            assert len(tenants) < 100
            tenants.append(platform.new_tenant(f"lively-{len(tenants)}"))
        steady = []  # beating all along, healthy: never offline
        for n, tenant in enumerate(tenants):
            for k in range(5):
                body = {"name": f"ok{n}-{k}", "url": f"{servers.base}/ok{n}-{k}/"}
                code, ws = platform.tenant_post(tenant, "/workspaces", body)
                assert code == 201, ws
                steady.append((tenant, ws["id"]))

        def keep_beating() -> None:
            while not stop.is_set():
                for tenant, ws in steady:
                    beat(platform, tenant, ws)
                stop.wait(0.5)

        beater = threading.Thread(target=keep_beating, daemon=True)
        beater.start()
        # Each sweep replica probes only the workspaces of its own shards: together, each once.
        wait_for(
            lambda: (
                [platform.subsystem(n)["progress"]["watched"] for n in SWEEPS].count(0) == 0
                and sum(platform.subsystem(n)["progress"]["watched"] for n in SWEEPS) == len(steady)
            ),
            60,
            what="the sweep's replicas probing a share each",
        )
        wait_for(lambda: all(platform.subsystem(n)["progress"]["shards"] for n in MONITORS), 30)

        # Quiet workspaces in every tenant: one beat, then nothing. A monitor replica is lost
        # for good while they expire: its shards' workspaces are taken over by the others.
        quiet = [(tenant, new_workspace(platform, tenant, endpoint.url)) for tenant in tenants for _ in range(3)]
        for tenant, ws in quiet:
            beat(platform, tenant, ws)
        NamedActor(MONITORS[2], platform.settings.ray_namespace).kill(restart=False)
        wait_for(lambda: all(status(platform, t, w) == "offline" for t, w in quiet), 60, what="every quiet one offline")
        wait_for(lambda: all(endpoint.count(w) >= 1 for _, w in quiet), 30, what="every restart requested")
        for tenant, ws in quiet:
            assert events_of(platform, tenant["id"], ws) == [
                "WORKSPACE_ONLINE",
                "WORKSPACE_OFFLINE",
                "WORKSPACE_RESTART_REQUESTED",
            ], ws
            assert endpoint.count(ws) == 1
        assert all(status(platform, t, w) == "online" for t, w in steady)
        assert all("WORKSPACE_OFFLINE" not in events_of(platform, t["id"], w) for t, w in steady)
        # The two left hold every shard between them.
        wait_for(
            lambda: sum(platform.subsystem(n)["progress"]["shards"] for n in MONITORS[:2]) == 64,
            30,
            what="every shard held by the two monitors left",
        )
    finally:
        stop.set()
        endpoint.server.shutdown()
        servers.stop()
