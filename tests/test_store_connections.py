"""store.connections: each tenant's WebSockets counted across API actors, on a Redis and a Cluster."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from store import connections, keys, tenants
from store.connections import Admission


async def test_the_limit_holds_over_every_holder_and_a_release_makes_room(store: aioredis.Redis) -> None:
    tenant = await tenants.create_tenant(store, "t")
    other = await tenants.create_tenant(store, "o")
    mine, theirs = tenants.token_digest(tenant["token"]), tenants.token_digest(other["token"])
    # Two APIs' members, one quota.
    assert await connections.admit(store, tenant["id"], mine, "node-a#1:1", 2) is Admission.ADMITTED
    assert await connections.admit(store, tenant["id"], mine, "node-b#7:1", 2) is Admission.ADMITTED
    assert await connections.admit(store, tenant["id"], mine, "node-b#7:2", 2) is Admission.OVER_QUOTA
    assert await connections.admit(store, other["id"], theirs, "node-b#7:3", 2) is Admission.ADMITTED  # counted apart
    assert await connections.count(store, tenant["id"]) == 2
    await connections.release(store, tenant["id"], "node-a#1:1")
    assert await connections.admit(store, tenant["id"], mine, "node-b#7:2", 2) is Admission.ADMITTED


async def test_a_token_that_does_not_open_the_tenant_is_refused_and_not_counted(store: aioredis.Redis) -> None:
    tenant = await tenants.create_tenant(store, "t")
    other = await tenants.create_tenant(store, "o")
    for digest in (tenants.token_digest(other["token"]), tenants.token_digest("guess"), ""):
        assert await connections.admit(store, tenant["id"], digest, "m", 2) is Admission.REFUSED_TOKEN
    old = tenants.token_digest(tenant["token"])
    await tenants.rotate_token(store, tenant["id"])
    assert await connections.admit(store, tenant["id"], old, "m", 2) is Admission.REFUSED_TOKEN
    assert await connections.count(store, tenant["id"]) == 0


async def test_a_holder_that_stops_renewing_stops_counting_after_its_lease(store: aioredis.Redis) -> None:
    tenant = await tenants.create_tenant(store, "t")
    digest = tenants.token_digest(tenant["token"])
    lease_ms = 1_500
    assert await connections.admit(store, tenant["id"], digest, "kept", 2, lease_ms) is Admission.ADMITTED
    assert await connections.admit(store, tenant["id"], digest, "lost", 2, lease_ms) is Admission.ADMITTED
    for _ in range(4):  # only "kept" is renewed, past the lease of both
        await asyncio.sleep(0.5)
        assert await connections.renew(store, {tenant["id"]: {"kept": digest}}, lease_ms) == ({}, {})
    assert await connections.count(store, tenant["id"]) == 1
    assert await connections.admit(store, tenant["id"], digest, "new", 2, lease_ms) is Admission.ADMITTED
    assert 0 < await store.pttl(keys.tenant_ws_connections(tenant["id"])) <= lease_ms  # nothing outlives them


async def test_a_renewal_returns_the_connections_of_a_replaced_token_and_of_a_deleted_tenant(
    store: aioredis.Redis,
) -> None:
    rotated = await tenants.create_tenant(store, "rotated")
    deleted = await tenants.create_tenant(store, "deleted")
    old = tenants.token_digest(rotated["token"])
    for tenant in (rotated, deleted):
        digest = tenants.token_digest(tenant["token"])
        assert await connections.admit(store, tenant["id"], digest, f"{tenant['name']}:1", 5) is Admission.ADMITTED
    new_token = await tenants.rotate_token(store, rotated["id"])
    assert new_token is not None
    new = tenants.token_digest(new_token)
    assert await connections.admit(store, rotated["id"], new, "rotated:2", 5) is Admission.ADMITTED
    await tenants.delete(store, deleted["id"], "ns")
    held = {
        rotated["id"]: {"rotated:1": old, "rotated:2": new},
        deleted["id"]: {"deleted:1": tenants.token_digest(deleted["token"])},
    }
    revoked, failed = await connections.renew(store, held)
    assert not failed
    assert revoked == {
        rotated["id"]: connections.Revoked(["rotated:1"], deleted=False),
        deleted["id"]: connections.Revoked(["deleted:1"], deleted=True),
    }
    assert await connections.count(store, rotated["id"]) == 1  # the revoked one no longer counts
    assert await store.exists(keys.tenant_ws_connections(deleted["id"])) == 0


async def test_one_tenants_failed_renewal_renews_no_fewer_others(store: aioredis.Redis) -> None:
    good = await tenants.create_tenant(store, "good")
    bad = await tenants.create_tenant(store, "bad")
    digest = tenants.token_digest(good["token"])
    assert await connections.admit(store, good["id"], digest, "m", 5, lease_ms=1_000) is Admission.ADMITTED
    await store.set(keys.tenant_ws_connections(bad["id"]), "not a zset")
    held = {bad["id"]: {"b": tenants.token_digest(bad["token"])}, good["id"]: {"m": digest}}
    before = await store.zscore(keys.tenant_ws_connections(good["id"]), "m")
    revoked, failed = await connections.renew(store, held, lease_ms=60_000)
    assert not revoked and list(failed) == [bad["id"]] and "WRONGTYPE" in str(failed[bad["id"]])
    after = await store.zscore(keys.tenant_ws_connections(good["id"]), "m")
    assert after - before > 50_000  # renewed all the same, for the longer lease
