"""Workspace liveness: heartbeats set the TTL key and bring a workspace online once."""

from __future__ import annotations

import redis

from store import keys
from tests.support import Platform, http


def workspace_events(client: redis.Redis, tenant_id: str, workspace_id: str) -> list[str]:
    return [
        f[b"event"].decode()
        for _, f in client.xrange(keys.events(tenant_id))
        if f[b"workspace_id"].decode() == workspace_id and f[b"event"].startswith(b"WORKSPACE_")
    ]


def test_heartbeats_set_the_ttl_and_come_online_once(platform: Platform) -> None:
    tenant = platform.new_tenant("beats")
    _, ws = platform.tenant_post(tenant, "/workspaces", {"name": "w", "url": "http://127.0.0.1:1/"})
    assert ws["status"] == "unknown"
    client = redis.Redis.from_url(platform.settings.redis_url)
    for _ in range(3):
        assert platform.post(f"/workspaces/{ws['id']}/heartbeat", token=tenant["token"])[0] == 204
    ttl_ms = client.pttl(keys.workspace_alive(ws["id"]))
    assert 0 < ttl_ms <= platform.settings.workspace_ttl_s * 1000
    assert platform.tenant_get(tenant, f"/workspaces/{ws['id']}")[1]["status"] == "online"
    assert client.sismember(keys.workspaces_online(keys.shard_of(ws["id"])), ws["id"])
    assert workspace_events(client, tenant["id"], ws["id"]) == ["WORKSPACE_ONLINE"]  # one transition, one event
    # Offline (as the monitor leaves it), then a heartbeat: online again, one more event.
    client.hset(keys.workspace(ws["id"]), "status", "offline")
    client.srem(keys.workspaces_online(keys.shard_of(ws["id"])), ws["id"])
    assert platform.post(f"/workspaces/{ws['id']}/heartbeat", token=tenant["token"])[0] == 204
    assert workspace_events(client, tenant["id"], ws["id"]) == ["WORKSPACE_ONLINE", "WORKSPACE_ONLINE"]
    # Deleted: out of the online index too.
    assert http("DELETE", f"{platform.url}/workspaces/{ws['id']}", token=tenant["token"])[0] == 204
    assert not client.sismember(keys.workspaces_online(keys.shard_of(ws["id"])), ws["id"])
