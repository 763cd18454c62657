"""store.schedules against a real Redis: claims, leases, completion, errors and quarantine, each atomic."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis

from store import keys, schedules
from store.records import new_id

NOW = 1_800_000_000.0
TENANT = new_id()


async def stored(store: aioredis.Redis, tenant_id: str | None = None, **fields: object) -> str:
    """A schedule created the way the API creates it (due at its next slot)."""
    body = {"workspace_id": new_id(), "name": "s", "cron": "* * * * *", "timezone": "UTC", "prompt": "p"}
    created = await schedules.create(store, tenant_id or TENANT, {**body, "enabled": True, **fields}, NOW)
    return created["id"]


async def due_at(store: aioredis.Redis, at: float) -> list[tuple[str, int]]:
    """Every slot due at `at`, over the tenants schedules:due_tenants says have one."""
    tenant_ids = await schedules.due_tenants(store, at, 100)
    found = await schedules.due(store, at, dict.fromkeys(tenant_ids, 100))
    assert all(found[t] for t in tenant_ids), "a tenant in due_tenants with nothing due"
    return sorted(slot for rows in found.values() for slot in rows)


async def fields_of(store: aioredis.Redis, schedule_id: str) -> dict[str, str]:
    raw = await store.hgetall(keys.schedule(schedule_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def test_create_indexes_the_schedule_due_at_its_next_slot(store: aioredis.Redis) -> None:
    tenant_id = new_id()
    schedule_id = await stored(store, tenant_id)
    assert await due_at(store, NOW + 60) == [(schedule_id, 1_800_000_060)]
    assert await due_at(store, NOW) == []
    assert await store.smembers(keys.tenant_schedules(tenant_id)) == {schedule_id.encode()}
    assert (await fields_of(store, schedule_id))["next_run_at"] == "2027-01-15T08:01:00.000Z"


async def test_a_slot_is_claimed_once_however_many_claim_it(store: aioredis.Redis) -> None:
    schedule_id = await stored(store)
    claim = schedules.Claim(
        TENANT, schedule_id, due=1_800_000_060, slot=1_800_000_060, following=1_800_000_120, lease_expires=1
    )
    assert await schedules.claim(store, [claim, claim, claim]) == [True, False, False]
    assert await due_at(store, NOW + 120) == [(schedule_id, 1_800_000_120)]
    leases = await schedules.expired_leases(store, 10, 10)
    assert leases == [schedules.Lease(schedule_id, 1_800_000_060, 1)]
    assert (await fields_of(store, schedule_id))["next_run_at"] == "2027-01-15T08:02:00.000Z"
    # A claim from an old read (its due score moved) loses too.
    assert await schedules.claim(store, [claim]) == [False]
    assert await schedules.claim(store, []) == []


async def test_an_expired_lease_is_reclaimed_by_one_scheduler_only(store: aioredis.Redis) -> None:
    schedule_id = await stored(store)
    claim = schedules.Claim(TENANT, schedule_id, 1_800_000_060, 1_800_000_060, 1_800_000_120, lease_expires=100)
    await schedules.claim(store, [claim])
    (lease,) = await schedules.expired_leases(store, 200, 10)
    assert await schedules.reclaim(store, lease, 500) is True
    assert await schedules.reclaim(store, lease, 600) is False  # the lease moved: another took it
    assert await schedules.expired_leases(store, 200, 10) == []
    assert await schedules.expired_leases(store, 500, 10) == [schedules.Lease(schedule_id, 1_800_000_060, 500)]


async def test_completion_records_the_fire_and_its_event_once(store: aioredis.Redis) -> None:
    tenant_id = new_id()
    schedule_id = await stored(store, tenant_id)
    slot = 1_800_000_060
    await schedules.claim(store, [schedules.Claim(tenant_id, schedule_id, slot, slot, slot + 60, 100)])
    done = await schedules.complete(
        store, schedule_id, slot, tenant_id=tenant_id, workspace_id="w", error=None, max_len=10
    )
    again = await schedules.complete(
        store, schedule_id, slot, tenant_id=tenant_id, workspace_id="w", error=None, max_len=10
    )
    assert (done, again) == (True, False)
    record = await fields_of(store, schedule_id)
    assert (record["last_status"], record["run_count"], record["consecutive_failures"]) == ("ok", "1", "0")
    (entry,) = await store.xrange(keys.events(tenant_id))
    payload = json.loads(entry[1][b"payload"])
    assert entry[1][b"event"] == b"SCHEDULE_FIRED"
    assert payload == {
        "schedule_id": schedule_id,
        "status": "ok",
        "error": None,
        "message_id": f"cron-{schedule_id}-{slot}",
    }
    assert await schedules.expired_leases(store, 1_000, 10) == []


async def test_a_failed_fire_counts_and_a_deleted_schedule_is_never_recreated(store: aioredis.Redis) -> None:
    tenant_id = new_id()
    schedule_id = await stored(store, tenant_id)
    for slot in (1, 2):
        await store.zadd(keys.schedules_inflight(keys.shard_of(schedule_id)), {f"{schedule_id}:{slot}": 100})
    assert await schedules.complete(
        store, schedule_id, 1, tenant_id=tenant_id, workspace_id="w", error="HTTP 500", max_len=10
    )
    record = await fields_of(store, schedule_id)
    assert (record["last_status"], record["last_error"], record["consecutive_failures"]) == ("error", "HTTP 500", "1")
    await schedules.delete(store, tenant_id, schedule_id)
    assert not await schedules.complete(
        store, schedule_id, 2, tenant_id=tenant_id, workspace_id="w", error=None, max_len=10
    )
    assert await store.exists(keys.schedule(schedule_id)) == 0
    assert await store.xlen(keys.events(tenant_id)) == 1


async def test_drop_lease_forgets_a_slot_in_flight(store: aioredis.Redis) -> None:
    await store.zadd(keys.schedules_inflight(keys.shard_of("abc")), {"abc:5": 1})
    await schedules.drop_lease(store, "abc", 5)
    assert await schedules.expired_leases(store, 10, 10) == []


async def test_an_error_is_recorded_only_on_the_version_that_was_read(store: aioredis.Redis) -> None:
    schedule_id = await stored(store)
    (raw,) = await schedules.read(store, [schedule_id])
    read_as = schedules.version(raw)
    assert await schedules.record_error(store, TENANT, schedule_id, read_as, "bad row", NOW) is True
    record = await fields_of(store, schedule_id)
    assert (record["last_status"], record["last_error"], record["consecutive_failures"]) == ("error", "bad row", "1")
    assert await due_at(store, NOW + 1) == [(schedule_id, int(NOW) + 1)]
    # The record changed since it was read (a PATCH, or the write above): nothing is written.
    assert await schedules.record_error(store, TENANT, schedule_id, read_as, "stale", NOW) is False
    assert (await fields_of(store, schedule_id))["last_error"] == "bad row"


async def test_quarantine_takes_it_out_of_every_index_and_tells_the_tenant(store: aioredis.Redis) -> None:
    tenant_id = new_id()
    schedule_id = await stored(store, tenant_id)
    await store.zadd(keys.schedules_inflight(keys.shard_of(schedule_id)), {f"{schedule_id}:7": 1, "other:7": 1})
    (raw,) = await schedules.read(store, [schedule_id])
    assert await schedules.quarantine(store, tenant_id, schedule_id, schedules.version(raw), "3 failures", max_len=10)
    assert await due_at(store, NOW + 3600) == []
    assert await schedules.expired_leases(store, 10, 10) == [schedules.Lease("other", 7, 1)]
    assert await schedules.quarantined_count(store) == 1
    record = await fields_of(store, schedule_id)
    assert (record["last_status"], record["last_error"]) == ("quarantined", "3 failures")
    (entry,) = await store.xrange(keys.events(tenant_id))
    assert entry[1][b"event"] == b"SCHEDULE_QUARANTINED"
    # A PATCH releases it.
    patched = await schedules.patch(store, tenant_id, schedule_id, {"prompt": "fixed"}, NOW)
    assert patched is not None and patched["last_status"] is None
    assert await schedules.quarantined_count(store) == 0
    assert await due_at(store, NOW + 60) == [(schedule_id, 1_800_000_060)]


async def test_quarantine_of_a_changed_or_unreadable_record(store: aioredis.Redis) -> None:
    schedule_id = await stored(store)
    assert await schedules.quarantine(store, TENANT, schedule_id, "an old version", "x", max_len=10) is False
    assert await schedules.quarantined_count(store) == 0
    assert len(await due_at(store, NOW + 60)) == 1  # changed meanwhile: left for a fresh read
    bogus = new_id()
    await store.set(keys.schedule(bogus), "not a hash")
    await store.zadd(keys.tenant_due(TENANT), {bogus: 1})
    (raw,) = await schedules.read(store, [bogus])
    assert isinstance(raw, Exception)
    assert await schedules.quarantine(store, TENANT, bogus, schedules.version(raw), "unreadable", max_len=10) is False
    assert [i for i, _ in await due_at(store, NOW + 60)] == [schedule_id]  # no record to fix: out


async def test_patch_validates_and_moves_the_slot_atomically(store: aioredis.Redis) -> None:
    tenant_id = new_id()
    schedule_id = await stored(store, tenant_id)
    patched = await schedules.patch(store, tenant_id, schedule_id, {"cron": "0 * * * *"}, NOW)
    assert patched is not None and patched["next_run_at"] == "2027-01-15T09:00:00.000Z"
    assert await due_at(store, NOW + 3600) == [(schedule_id, 1_800_003_600)]
    assert await schedules.patch(store, new_id(), schedule_id, {"name": "x"}, NOW) is None  # not the tenant's
    try:
        await schedules.patch(store, tenant_id, schedule_id, {"cron": "61 * * * *"}, NOW)
    except ValueError as exc:
        assert str(exc).startswith("cron:")
    else:
        raise AssertionError("a bad cron was stored")
    disabled = await schedules.patch(store, tenant_id, schedule_id, {"enabled": False}, NOW)
    assert disabled is not None and disabled["next_run_at"] is None
    assert await due_at(store, NOW + 3600) == []


async def test_due_tenants_follow_each_tenants_earliest_slot(store: aioredis.Redis) -> None:
    quiet, busy = new_id(), new_id()
    hourly = await stored(store, quiet, cron="0 * * * *")
    minutely = [await stored(store, busy) for _ in range(3)]
    assert await schedules.due_tenants(store, NOW + 60, 10) == [busy]
    assert await schedules.due_tenants(store, NOW + 3600, 10) == [busy, quiet]  # the longest waiting first
    slot = 1_800_000_060
    claims = [schedules.Claim(busy, s, slot, slot, slot + 60, 1) for s in minutely]
    assert await schedules.claim(store, claims) == [True] * 3
    assert await schedules.due_tenants(store, NOW + 60, 10) == []  # every busy slot moved a minute on
    first_two = [(s, slot + 60) for s in sorted(minutely)[:2]]  # equal slots: by id
    assert await schedules.due(store, NOW + 120, {busy: 2}) == {busy: first_two}
    await schedules.patch(store, quiet, hourly, {"enabled": False}, NOW)
    for schedule_id in minutely:
        await schedules.delete(store, busy, schedule_id)
    assert await store.zcard(keys.schedules_due_tenants(keys.shard_of(busy))) == 0  # nothing due: no tenant listed


@pytest.mark.single_redis
async def test_a_due_index_from_before_tenants_had_theirs_is_moved_whole(store: aioredis.Redis) -> None:
    tenant_id = new_id()
    kept = await stored(store, tenant_id)
    corrupt = await stored(store, tenant_id)
    await store.delete(keys.tenant_due(tenant_id))  # as an older release left it
    await store.delete(keys.schedules_due_tenants(keys.shard_of(tenant_id)))
    await store.hset(keys.schedule(corrupt), "tenant_id", "not an id")
    gone = new_id()
    legacy = {kept: 1_800_000_060, corrupt: 1_800_000_060, gone: 5}
    legacy |= {f"{new_id()}": 7 for _ in range(600)}  # more than one page, records gone
    await store.zadd(schedules.SCHEDULES_DUE_LEGACY, legacy)
    assert await schedules.move_legacy_due(store) == 1
    assert await store.exists(schedules.SCHEDULES_DUE_LEGACY) == 0
    assert await schedules.due(store, NOW + 60, {tenant_id: 10}) == {tenant_id: [(kept, 1_800_000_060)]}
    assert await schedules.due_tenants(store, NOW + 60, 10) == [tenant_id]
    assert await store.sismember(keys.schedules_quarantined(keys.shard_of(corrupt)), corrupt)  # nothing could fire it
    assert await schedules.move_legacy_due(store) == 0


async def test_an_operator_lists_and_releases_a_quarantined_schedule(store: aioredis.Redis) -> None:
    tenant_id = new_id()
    schedule_id = await stored(store, tenant_id)
    await store.hset(keys.schedule(schedule_id), "consecutive_failures", "2")
    (raw,) = await schedules.read(store, [schedule_id])
    assert await schedules.quarantine(store, tenant_id, schedule_id, schedules.version(raw), "3 failures", max_len=10)
    (item,) = await schedules.quarantined(store)
    assert {k: item[k] for k in ("key", "tenant_id", "error", "failures")} == {
        "key": schedule_id,
        "tenant_id": tenant_id,
        "error": "3 failures",
        "failures": 3,
    }
    assert item["since"].endswith("Z")
    assert await schedules.release(store, "not-quarantined", NOW) is False
    assert await schedules.release(store, schedule_id, NOW) is True
    assert await schedules.release(store, schedule_id, NOW) is False  # once
    assert await schedules.quarantined(store) == []
    record = await fields_of(store, schedule_id)
    assert (record["last_status"], record["consecutive_failures"], record["quarantined_at"]) == ("", "0", "")
    assert await due_at(store, NOW + 60) == [(schedule_id, 1_800_000_060)]  # due again at its next slot


async def test_a_released_schedule_whose_cron_is_broken_is_due_at_once_and_one_with_no_tenant_is_dropped(
    store: aioredis.Redis,
) -> None:
    tenant_id = new_id()
    broken, orphan = await stored(store, tenant_id), await stored(store, tenant_id)
    for schedule_id in (broken, orphan):
        (raw,) = await schedules.read(store, [schedule_id])
        assert await schedules.quarantine(store, tenant_id, schedule_id, schedules.version(raw), "bad", max_len=10)
    await store.hset(keys.schedule(broken), "cron", "every day at noon")
    await store.hset(keys.schedule(orphan), "tenant_id", "")
    assert await schedules.release(store, broken, NOW) is True
    assert await schedules.release(store, orphan, NOW) is True
    assert await due_at(store, NOW) == [(broken, int(NOW))]  # the scheduler tries it, and says why it fails
    assert await schedules.quarantined(store) == []
