"""The liveness monitor: expired workspaces go offline once, with one event and one restart request."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import ray

from actors.liveness_monitor import LIVENESS_SPEC, LivenessMonitor
from store import keys
from store.embedded import EmbeddedRedis, free_port
from tests.support import Platform, start_platform, sync_redis, wait_for


class RestartEndpoint:
    """A loopback HTTP server that records the restart requests POSTed to it.

    It answers 500 to the first `failures[workspace id]` requests for a workspace, then 202.
    """

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.failures: dict[str, int] = {}
        received, failures = self.requests, self.failures

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                received.append({**request, "at": time.time()})
                failing = failures.get(request["workspace_id"], 0)
                failures[request["workspace_id"]] = failing - 1
                self.send_response(500 if failing > 0 else 202)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/restart"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, workspace_id: str) -> int:
        return sum(1 for r in self.requests if r["workspace_id"] == workspace_id)


@pytest.fixture(scope="module")
def monitored(ray_session: dict, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    deployed = start_platform(
        redis_url,
        tmp_path_factory.mktemp("liveness"),
        subsystems=[LivenessMonitor],
        workspace_ttl_s=1.0,
        liveness_scan_interval_s=1.0,
        restart_debounce_s=60.0,
    )
    yield deployed
    deployed.close()


@pytest.fixture(scope="module")
def endpoint() -> Iterator[RestartEndpoint]:
    server = RestartEndpoint()
    yield server
    server.server.shutdown()


def events_of(platform: Platform, tenant_id: str, workspace_id: str) -> list[str]:
    client = sync_redis(platform.settings.redis_url)
    return [
        f[b"event"].decode()
        for _, f in client.xrange(keys.events(tenant_id))
        if f[b"workspace_id"].decode() == workspace_id
    ]


def new_workspace(platform: Platform, tenant: dict, restart_url: str | None) -> str:
    body = {"name": "w", "url": "http://127.0.0.1:1/", **({"restart_url": restart_url} if restart_url else {})}
    status, ws = platform.tenant_post(tenant, "/workspaces", body)
    assert status == 201, ws
    return ws["id"]


def beat(platform: Platform, tenant: dict, workspace_id: str) -> None:
    assert platform.post(f"/workspaces/{workspace_id}/heartbeat", token=tenant["token"])[0] == 204


def status(platform: Platform, tenant: dict, workspace_id: str) -> str:
    return platform.tenant_get(tenant, f"/workspaces/{workspace_id}")[1]["status"]


def test_a_quiet_workspace_goes_offline_once_with_one_restart_request(
    monitored: Platform, endpoint: RestartEndpoint
) -> None:
    tenant, other = monitored.new_tenant("quiet"), monitored.new_tenant("bystander")
    ws = new_workspace(monitored, tenant, endpoint.url)
    beat(monitored, tenant, ws)
    wait_for(lambda: status(monitored, tenant, ws) == "offline", 30, what="offline after the TTL")
    wait_for(lambda: "WORKSPACE_RESTART_REQUESTED" in events_of(monitored, tenant["id"], ws), 30)
    assert events_of(monitored, tenant["id"], ws) == [
        "WORKSPACE_ONLINE",
        "WORKSPACE_OFFLINE",
        "WORKSPACE_RESTART_REQUESTED",
    ]
    assert endpoint.count(ws) == 1
    assert events_of(monitored, other["id"], ws) == []  # the owner's stream only


def test_a_failing_restart_endpoint_is_asked_again_with_backoff(monitored: Platform, endpoint: RestartEndpoint) -> None:
    tenant = monitored.new_tenant("flaky")
    ws = new_workspace(monitored, tenant, endpoint.url)
    endpoint.failures[ws] = 2  # 500, 500, then 202
    beat(monitored, tenant, ws)
    wait_for(lambda: "WORKSPACE_RESTART_REQUESTED" in events_of(monitored, tenant["id"], ws), 30, what="requested")
    attempts = [r["at"] for r in endpoint.requests if r["workspace_id"] == ws]
    assert len(attempts) == 3
    assert attempts[1] - attempts[0] >= 1.0 and attempts[2] - attempts[1] >= 2.0  # 1 s, then 2 s apart at least
    client = sync_redis(monitored.settings.redis_url)
    (payload,) = [
        json.loads(f[b"payload"])
        for _, f in client.xrange(keys.events(tenant["id"]))
        if f[b"event"] == b"WORKSPACE_RESTART_REQUESTED"
    ]
    assert payload == {"workspace_id": ws, "restart_url": endpoint.url, "delivered": True}
    assert events_of(monitored, tenant["id"], ws).count("WORKSPACE_OFFLINE") == 1


def test_expiries_missed_while_the_monitor_was_down_are_caught_by_the_scan(monitored: Platform) -> None:
    tenant = monitored.new_tenant("missed")
    ids = [new_workspace(monitored, tenant, None) for _ in range(50)]
    namespace = monitored.settings.ray_namespace
    ray.kill(ray.get_actor(LIVENESS_SPEC.name, namespace=namespace), no_restart=True)
    for ws in ids:
        beat(monitored, tenant, ws)
    client = sync_redis(monitored.settings.redis_url)
    wait_for(lambda: not any(client.exists(keys.workspace_alive(w)) for w in ids), 30, what="all 50 keys expired")
    assert {status(monitored, tenant, w) for w in ids} == {"online"}  # nobody noticed yet
    monitored.deployment.start(LivenessMonitor)  # back: its first tick scans
    wait_for(lambda: all(status(monitored, tenant, w) == "offline" for w in ids), 30, what="all 50 offline")
    wait_for(lambda: all("WORKSPACE_RESTART_REQUESTED" in events_of(monitored, tenant["id"], w) for w in ids), 30)
    for ws in ids:
        assert events_of(monitored, tenant["id"], ws) == [
            "WORKSPACE_ONLINE",
            "WORKSPACE_OFFLINE",
            "WORKSPACE_RESTART_REQUESTED",
        ]


def test_flapping_comes_back_online_and_restarts_are_debounced(monitored: Platform, endpoint: RestartEndpoint) -> None:
    tenant = monitored.new_tenant("flapping")
    ws = new_workspace(monitored, tenant, endpoint.url)
    for _ in range(2):
        beat(monitored, tenant, ws)
        assert status(monitored, tenant, ws) == "online"
        wait_for(lambda: status(monitored, tenant, ws) == "offline", 30, what="offline")
    wait_for(lambda: monitored.subsystem("liveness-monitor")["progress"]["restarts_debounced"] >= 1, 30)
    seen = events_of(monitored, tenant["id"], ws)
    transitions = [e for e in seen if e != "WORKSPACE_RESTART_REQUESTED"]
    assert transitions == ["WORKSPACE_ONLINE", "WORKSPACE_OFFLINE"] * 2  # one event per transition
    assert seen.count("WORKSPACE_RESTART_REQUESTED") == 1
    assert endpoint.count(ws) == 1  # the second offline within RESTART_DEBOUNCE_S sent no request


def test_a_corrupt_workspace_is_quarantined_and_the_others_are_still_watched(monitored: Platform) -> None:
    tenant = monitored.new_tenant("poison")
    bad, good = new_workspace(monitored, tenant, None), new_workspace(monitored, tenant, None)
    client = sync_redis(monitored.settings.redis_url)
    beat(monitored, tenant, bad)
    client.hdel(keys.workspace(bad), "tenant_id")  # a record that lost its tenant
    beat(monitored, tenant, good)
    wait_for(lambda: status(monitored, tenant, good) == "offline", 30, what="the good one offline")
    sub = wait_for(lambda: (s := monitored.subsystem("liveness-monitor"))["quarantined"] >= 1 and s, 30)
    assert sub["state"] == "RUNNING"
    client.srem(keys.workspaces_online(keys.shard_of(bad)), bad)  # leave no poison behind for the other tests


def test_keys_expiring_while_redis_restarts_are_all_caught(ray_session: dict, tmp_path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", port=free_port())
    server.start()
    platform = start_platform(
        server.url,
        tmp_path / "data",
        subsystems=[LivenessMonitor],
        workspace_ttl_s=1.0,
        liveness_scan_interval_s=1.0,
    )
    try:
        tenant = platform.new_tenant("outage")
        ids = [new_workspace(platform, tenant, None) for _ in range(20)]
        for ws in ids:
            beat(platform, tenant, ws)
        expired_at = time.time() + platform.settings.workspace_ttl_s
        server.stop()  # the keys expire while Redis is down: no notification will ever come
        platform.wait_state("liveness-monitor", "BACKOFF", timeout_s=30)
        time.sleep(max(0.0, expired_at - time.time()) + 0.1)  # not a window to watch: the TTL must pass
        server.start()
        wait_for(lambda: all(status(platform, tenant, w) == "offline" for w in ids), 60, what="all 20 offline")
        for ws in ids:
            assert events_of(platform, tenant["id"], ws).count("WORKSPACE_OFFLINE") == 1
        platform.wait_state("liveness-monitor", "RUNNING", timeout_s=60)
    finally:
        platform.close()
        server.stop()
