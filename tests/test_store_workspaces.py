"""store.workspaces against a real Redis: heartbeat, the offline compare-and-set, the restart queue."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis
from cryptography.fernet import Fernet

from store import keys, workspaces
from store.quotas import QuotaExceeded
from store.records import new_id
from store.secrets import SecretBox

BOX = SecretBox(Fernet.generate_key().decode())


async def created(store: aioredis.Redis, tenant_id: str, **extra: str) -> str:
    body = {"name": "agent", "url": "http://127.0.0.1:9/", "a2a_version": "1.0", "restart_url": None, **extra}
    return (await workspaces.create(store, BOX, tenant_id, body))["id"]


async def raw_of(store: aioredis.Redis, workspace_id: str) -> dict[bytes, bytes]:
    (raw,) = await workspaces.read(store, [workspace_id])
    assert isinstance(raw, dict)
    return raw


async def event_names(store: aioredis.Redis, tenant_id: str) -> list[str]:
    return [fields[b"event"].decode() for _, fields in await store.xrange(keys.events(tenant_id))]


async def test_a_heartbeat_brings_a_workspace_online_once(store: aioredis.Redis) -> None:
    tenant_id = new_id()
    workspace_id = await created(store, tenant_id)
    assert await workspaces.heartbeat(store, tenant_id, workspace_id, 30, 100) is True
    assert await workspaces.heartbeat(store, tenant_id, workspace_id, 30, 100) is False
    assert await workspaces.online(store) == [workspace_id]
    assert 0 < await store.pttl(keys.workspace_alive(workspace_id)) <= 30_000
    assert await event_names(store, tenant_id) == ["WORKSPACE_ONLINE"]
    assert workspaces.public((await workspaces.get(store, tenant_id, workspace_id)) or {})["status"] == "online"
    missing = new_id(keys.shard_of(tenant_id))  # (the API reads a workspace as the tenant's before this)
    assert await workspaces.heartbeat(store, tenant_id, missing, 30, 100) is False  # no such workspace


async def test_offline_happens_once_whoever_notices_it(store: aioredis.Redis) -> None:
    tenant_id = new_id()
    workspace_id = await created(store, tenant_id, restart_url="http://127.0.0.1:9/restart")
    await workspaces.heartbeat(store, tenant_id, workspace_id, 30, 100)
    raw = await raw_of(store, workspace_id)
    # The liveness key is still there: a watcher that requires it gone changes nothing.
    assert not await workspaces.mark_offline(store, workspace_id, raw, "expired", max_len=100, require_expired=True)
    results = await asyncio.gather(
        *(
            workspaces.mark_offline(store, workspace_id, raw, "probes", max_len=100, require_expired=False)
            for _ in range(5)
        )
    )
    assert results.count(True) == 1
    assert await workspaces.online(store) == []
    assert await workspaces.due(store, 10**10) == []
    assert await workspaces.restarts_due(store, 10**10, 10) == [workspace_id]
    assert await event_names(store, tenant_id) == ["WORKSPACE_ONLINE", "WORKSPACE_OFFLINE"]
    (_, fields), *_ = await store.xrevrange(keys.events(tenant_id), count=1)
    assert json.loads(fields[b"payload"]) == {"workspace_id": workspace_id, "reason": "probes"}


async def test_an_expired_key_takes_it_offline_and_a_corrupt_record_raises(store: aioredis.Redis) -> None:
    tenant_id = new_id()
    workspace_id = await created(store, tenant_id)
    await workspaces.heartbeat(store, tenant_id, workspace_id, 30, 100)
    await store.delete(keys.workspace_alive(workspace_id))
    raw = await raw_of(store, workspace_id)
    assert await workspaces.mark_offline(store, workspace_id, raw, "expired", max_len=100, require_expired=True)
    assert not await workspaces.mark_offline(store, workspace_id, {}, "gone", max_len=100, require_expired=False)
    with pytest.raises(ValueError, match="tenant_id"):
        await workspaces.mark_offline(
            store, workspace_id, {**raw, b"tenant_id": b"x"}, "bad", max_len=100, require_expired=False
        )


async def test_the_restart_queue_retries_debounces_and_records_the_request(store: aioredis.Redis) -> None:
    tenant_id = new_id()
    workspace_id = await created(store, tenant_id)
    await store.zadd(keys.workspaces_restarts(keys.shard_of(workspace_id)), {workspace_id: 1})
    assert await workspaces.debounce_restart(store, workspace_id, 60) is True
    await workspaces.retry_restart(store, workspace_id, 1, 50)
    assert await workspaces.restarts_due(store, 49, 10) == []
    assert await workspaces.restarts_due(store, 50, 10) == [workspace_id]
    assert (await raw_of(store, workspace_id))[b"restart_attempt"] == b"1"
    await workspaces.restart_requested(store, workspace_id, tenant_id, "http://x/restart", True, max_len=100)
    assert await workspaces.restarts_due(store, 10**10, 10) == []
    assert b"restart_attempt" not in await raw_of(store, workspace_id)
    (_, fields), *_ = await store.xrevrange(keys.events(tenant_id), count=1)
    assert fields[b"event"] == b"WORKSPACE_RESTART_REQUESTED"
    assert json.loads(fields[b"payload"]) == {
        "workspace_id": workspace_id,
        "restart_url": "http://x/restart",
        "delivered": True,
    }
    # A second first request within the debounce time is dropped.
    await store.zadd(keys.workspaces_restarts(keys.shard_of(workspace_id)), {workspace_id: 1})
    assert await workspaces.debounce_restart(store, workspace_id, 60) is False
    assert await workspaces.restarts_due(store, 10**10, 10) == []


async def test_delete_removes_it_from_every_index(store: aioredis.Redis) -> None:
    tenant_id = new_id()
    workspace_id = await created(store, tenant_id)
    await workspaces.heartbeat(store, tenant_id, workspace_id, 30, 100)
    assert await workspaces.delete(store, new_id(), workspace_id) is False  # not that tenant's
    assert await workspaces.delete(store, tenant_id, workspace_id) is True
    assert await workspaces.online(store) == []
    assert await workspaces.due(store, 10**10) == []
    assert await store.exists(keys.workspace(workspace_id), keys.workspace_alive(workspace_id)) == 0


async def test_expired_liveness_keys_are_announced_and_others_are_not(store: aioredis.Redis) -> None:
    await store.config_set("notify-keyspace-events", "Ex")
    watched, other = new_id(), new_id()
    heard: list[str] = []

    async def listen() -> None:
        async for workspace_id in workspaces.expired(store):
            heard.append(workspace_id)

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.2)  # subscribed
    await store.set(keys.workspace_alive(watched), "1", px=10)
    await store.set(keys.workspace_restart_debounce(other), "1", px=10)
    for _ in range(50):
        await store.exists(keys.workspace_alive(watched), keys.workspace_restart_debounce(other))
        if heard:
            break
        await asyncio.sleep(0.05)
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    assert heard == [watched]


async def test_concurrent_creates_never_pass_the_quota(store: aioredis.Redis) -> None:
    tenant_id, box = new_id(), SecretBox(Fernet.generate_key().decode())
    body = {"name": "w", "url": "http://127.0.0.1:9/", "a2a_version": "1.0", "restart_url": None, "auth_token": None}
    results = await asyncio.gather(
        *(workspaces.create(store, box, tenant_id, body, limit=5) for _ in range(20)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, QuotaExceeded)]
    assert len(refused) == 15 and str(refused[0]) == "quota exceeded: workspaces (limit 5)"
    assert await store.scard(keys.tenant_workspaces(tenant_id)) == 5
    assert len([k async for k in store.scan_iter(match="workspace:*", _type="HASH")]) == 5  # nothing half-written
