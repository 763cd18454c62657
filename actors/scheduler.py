"""Scheduler actor: claims due cron slots atomically and fires them over A2A, isolated per schedule."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Hashable
from typing import Any

import aiohttp
import ray
import redis.exceptions

from actors.a2a_client import Outcome, send
from actors.runtime.handles import ACTOR_OPTIONS
from actors.runtime.isolation import ItemGuard
from actors.runtime.subsystem import TRANSIENT_ERRORS, Subsystem, SubsystemSpec
from settings import Settings
from store import events, keys, schedules
from store.client import connect
from store.records import decode, now_rfc3339

log = logging.getLogger(__name__)

SCHEDULER_SPEC = SubsystemSpec("scheduler", interval_s=1.0)
MAX_IN_FLIGHT = 64
LEASE_MARGIN_S = 5


class Scheduler(Subsystem):
    """Each tick: claim expired leases and due slots, start their fires, return.

    Fires run as tasks (at most MAX_IN_FLIGHT, each with FIRE_TIMEOUT_S), so a slow or dead
    workspace delays only its own schedule. A schedule whose stored fields are corrupt is
    recorded as `error`, and after 3 failures in a row quarantined: taken out of the due
    index until a PATCH fixes it.
    """

    spec = SCHEDULER_SPEC

    def __init__(self, settings: Settings, spec: SubsystemSpec | None = None) -> None:
        self.redis = connect(settings.redis_url, timeout_s=5.0)
        self.fire_timeout_s = settings.fire_timeout_s
        self._fires: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._claim = self.redis.register_script(schedules.CLAIM)
        self._reclaim = self.redis.register_script(schedules.RECLAIM)
        self._complete = self.redis.register_script(schedules.COMPLETE)
        self.fired = 0
        self.redelivered = 0
        self._quarantined = 0
        self._versions: dict[str, str] = {}
        super().__init__(settings, spec)
        self.items = ItemGuard(propagate=TRANSIENT_ERRORS, on_quarantine=self._quarantine)

    def progress(self) -> dict[str, Any]:
        return {"in_flight": len(self._fires), "fired": self.fired, "redelivered": self.redelivered}

    async def tick(self) -> bool:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        now = time.time()
        lease = int(now + self.fire_timeout_s + LEASE_MARGIN_S)
        self._versions.clear()  # versions are only compared within the tick that read them
        self._quarantined = await self.redis.scard(keys.SCHEDULES_QUARANTINED)
        capacity = MAX_IN_FLIGHT - len(self._fires)
        if capacity <= 0:
            # Full: wait (bounded) for a fire to finish, then tick again at once.
            await asyncio.wait(self._fires, timeout=self.spec.interval_s, return_when=asyncio.FIRST_COMPLETED)
            return True
        expired = await self.redis.zrangebyscore(
            keys.SCHEDULES_INFLIGHT, "-inf", now, start=0, num=capacity, withscores=True
        )
        for member, expected in expired:
            if await self._reclaim(keys=[keys.SCHEDULES_INFLIGHT], args=[member, int(expected), lease]):
                schedule_id, _, slot = member.decode().rpartition(":")
                outcome = await self.items.run(schedule_id, lambda s=schedule_id, t=int(slot): self._refire(s, t))
                if not outcome.ok and not outcome.skipped and not outcome.quarantined_now:
                    await self._record_error(schedule_id, outcome.error, now)
        capacity = MAX_IN_FLIGHT - len(self._fires)
        due = await self.redis.zrangebyscore(keys.SCHEDULES_DUE, "-inf", now, start=0, num=capacity, withscores=True)
        if not due:
            return False
        ids = [member.decode() for member, _ in due]
        raws = await self._read_all([keys.schedule(i) for i in ids])
        workspace_ids = {
            raw.get(b"workspace_id", b"").decode(errors="replace") for raw in raws if isinstance(raw, dict)
        }
        workspace_ids.discard("")
        found = await self._read_all([keys.workspace(w) for w in workspace_ids])
        workspace_raws = dict(zip(workspace_ids, found, strict=True))
        plans = []
        for schedule_id, (_, score), raw in zip(ids, due, raws, strict=True):
            self._versions[schedule_id] = version = _digest(raw)
            outcome = await self.items.run(
                schedule_id,
                lambda s=schedule_id, r=raw, d=int(score): self._plan(s, r, workspace_raws, d, now, lease),
                version=version,
            )
            if outcome.ok:
                plans.append(outcome.value)
            elif not outcome.skipped and not outcome.quarantined_now:
                await self._record_error(schedule_id, outcome.error, now)
        # One round trip claims them all; each claim is still atomic on its own.
        async with self.redis.pipeline(transaction=False) as pipe:
            for _, _, claim_keys, args in plans:
                await self._claim(keys=claim_keys, args=args, client=pipe)
            claimed = await pipe.execute() if plans else []
        for (fields, slot, _, _), won in zip(plans, claimed, strict=True):
            if won:
                self._start(fields["id"], fields, slot)
        return len(due) == capacity

    def pause_s(self) -> float:
        # Wake just after the next whole second: slots are whole seconds.
        return min(self.spec.interval_s, 1.0 - time.time() % 1.0 + 0.005)

    async def _read_all(self, hash_keys: list[str]) -> list[Any]:
        if not hash_keys:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in hash_keys:
                pipe.hgetall(key)
            # A key of the wrong type is that one item's problem, not the tick's.
            return await pipe.execute(raise_on_error=False)

    async def _plan(
        self,
        schedule_id: str,
        raw: Any,
        workspace_raws: dict[str, Any],
        due: int,
        now: float,
        lease: int,
    ) -> tuple[dict[str, str], int, list[str], list[Any]]:
        """Validate one schedule and compute its claim (no I/O); raises if it is corrupt."""
        fields = self._validated(schedule_id, raw, workspace_raws)
        slot = schedules.latest_slot(fields["cron"], fields["timezone"], now, due)
        following = schedules.next_slot(fields["cron"], fields["timezone"], now)
        args = [schedule_id, due, f"{schedule_id}:{slot}", following, lease, now_rfc3339(following)]
        return fields, slot, [keys.SCHEDULES_DUE, keys.SCHEDULES_INFLIGHT, keys.schedule(schedule_id)], args

    async def _refire(self, schedule_id: str, slot: int) -> None:
        raw = await self.redis.hgetall(keys.schedule(schedule_id))
        if not raw:  # deleted meanwhile: nothing to deliver
            await self.redis.zrem(keys.SCHEDULES_INFLIGHT, f"{schedule_id}:{slot}")
            return
        self._versions[schedule_id] = _digest(raw)
        workspace_id = raw.get(b"workspace_id", b"").decode(errors="replace")
        workspace = await self.redis.hgetall(keys.workspace(workspace_id)) if workspace_id else {}
        self.redelivered += 1
        self._start(schedule_id, self._validated(schedule_id, raw, {workspace_id: workspace}), slot)

    def _validated(self, schedule_id: str, raw: Any, workspace_raws: dict[str, Any]) -> dict[str, str]:
        """The schedule's fields, checked; raises (for ItemGuard) when they are corrupt."""
        if isinstance(raw, Exception):
            raise ValueError(f"record unreadable: {raw}")
        if not raw:
            raise LookupError(f"schedule {schedule_id} has no record")
        fields = decode(raw)  # invalid UTF-8 raises UnicodeDecodeError
        for name in ("tenant_id", "workspace_id", "cron", "timezone", "prompt"):
            if not fields.get(name):
                raise ValueError(f"field {name} is missing")
        schedules.validate_cron(fields["cron"], fields["timezone"], time.time())
        workspace = workspace_raws.get(fields["workspace_id"])
        if isinstance(workspace, Exception):
            raise ValueError(f"workspace record unreadable: {workspace}")
        if not workspace or decode(workspace).get("tenant_id") != fields["tenant_id"]:
            raise LookupError(f"workspace {fields['workspace_id']} does not exist")
        ws = decode(workspace)
        if ws.get("a2a_version") not in ("1.0", "0.3") or not ws.get("url", "").startswith(("http://", "https://")):
            raise ValueError(f"workspace {fields['workspace_id']} has a corrupt url or a2a_version")
        fields["_url"], fields["_version"] = ws["url"], ws["a2a_version"]
        return fields

    def _start(self, schedule_id: str, fields: dict[str, str], slot: int) -> None:
        task = asyncio.get_running_loop().create_task(self._fire(schedule_id, fields, slot))
        self._fires.add(task)
        task.add_done_callback(self._fires.discard)

    async def _fire(self, schedule_id: str, fields: dict[str, str], slot: int) -> None:
        """Deliver one slot and record the outcome; never raises (it runs as a detached task)."""
        message_id = f"cron-{schedule_id}-{slot}"
        try:
            assert self._session is not None
            outcome = await send(
                self._session, fields["_url"], fields["_version"], message_id, fields["prompt"], self.fire_timeout_s
            )
        except Exception as exc:  # a fire task has no caller to report to: record it as the slot's error
            log.error("fire %s failed", message_id, exc_info=exc)
            outcome = Outcome(False, f"internal error: {type(exc).__name__}: {exc}")
        status = "ok" if outcome.ok else "error"
        payload = {"schedule_id": schedule_id, "status": status, "error": outcome.error, "message_id": message_id}
        event = events.entry("SCHEDULE_FIRED", fields["tenant_id"], fields["workspace_id"], payload)
        try:
            await self._complete(
                keys=[keys.schedule(schedule_id), keys.SCHEDULES_INFLIGHT, keys.events(fields["tenant_id"])],
                args=[
                    f"{schedule_id}:{slot}",
                    now_rfc3339(),
                    status,
                    outcome.error or "",
                    self.settings.events_max_per_tenant,
                    *events.flat(event),
                ],
            )
        except TRANSIENT_ERRORS as exc:
            # The lease stays: the slot is delivered again (same messageId) when it expires.
            log.warning("could not record fire of %s: %s", message_id, exc)
            return
        except Exception as exc:  # e.g. a corrupt record Redis refuses: drop the lease, never loop on it
            log.error("could not record fire of %s; lease dropped", message_id, exc_info=exc)
            try:
                await self.redis.zrem(keys.SCHEDULES_INFLIGHT, f"{schedule_id}:{slot}")
            except TRANSIENT_ERRORS:
                pass
            return
        self.fired += 1

    async def _if_unchanged(self, schedule_id: str, write: Any) -> dict[bytes, bytes] | None:
        """Run `write(pipe, raw)` in a transaction only if the record is as this tick read it.

        A PATCH or DELETE that lands meanwhile wins: nothing is written (and a deleted
        schedule is never recreated). Returns the record written over, or None.
        """
        key = keys.schedule(schedule_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                raw = await pipe.hgetall(key)
                if not raw or _digest(raw) != self._versions.get(schedule_id):
                    return None
                pipe.multi()
                write(pipe, raw)
                await pipe.execute()
                return raw
            except redis.exceptions.WatchError:
                return None
            except redis.exceptions.ResponseError as exc:  # a key of the wrong type: nothing to record on
                log.warning("cannot record on schedule %s: %s", schedule_id, exc)
                return None

    async def _record_error(self, schedule_id: str, error: str | None, now: float) -> None:
        """Record the failure and let the others go first: the next try is a second later."""

        def write(pipe: Any, raw: dict[bytes, bytes]) -> None:
            key = keys.schedule(schedule_id)
            pipe.hset(key, mapping={"last_status": "error", "last_error": error or "unknown error"})
            pipe.hincrby(key, "consecutive_failures", 1)
            pipe.zadd(keys.SCHEDULES_DUE, {schedule_id: int(now) + 1}, xx=True)

        await self._if_unchanged(schedule_id, write)

    async def _quarantine(self, schedule_id: Hashable, error: str) -> None:
        """Take the schedule out of the due index until a PATCH fixes it; tell its tenant."""
        schedule_id = str(schedule_id)
        inflight = await self.redis.zrange(keys.SCHEDULES_INFLIGHT, 0, -1)
        stuck = [m for m in inflight if m.decode().rpartition(":")[0] == schedule_id]

        def write(pipe: Any, raw: dict[bytes, bytes]) -> None:
            key = keys.schedule(schedule_id)
            pipe.zrem(keys.SCHEDULES_DUE, schedule_id)
            if stuck:
                pipe.zrem(keys.SCHEDULES_INFLIGHT, *stuck)
            pipe.sadd(keys.SCHEDULES_QUARANTINED, schedule_id)
            pipe.hset(key, mapping={"last_status": "quarantined", "last_error": error})
            pipe.hincrby(key, "consecutive_failures", 1)

        raw = await self._if_unchanged(schedule_id, write)
        if raw is None and await self.redis.type(keys.schedule(schedule_id)) != b"hash":
            # No record a PATCH could fix (gone, or not a hash): just stop trying it.
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(keys.SCHEDULES_DUE, schedule_id)
                if stuck:
                    pipe.zrem(keys.SCHEDULES_INFLIGHT, *stuck)
                await pipe.execute()
        # Quarantine lives in Redis from now on (record, index); the guard need not remember it.
        self.items.release(schedule_id)
        self._quarantined = await self.redis.scard(keys.SCHEDULES_QUARANTINED)
        tenant_id = raw.get(b"tenant_id", b"").decode(errors="replace") if raw else ""
        if tenant_id:
            workspace_id = raw.get(b"workspace_id", b"").decode(errors="replace") if raw else ""
            payload = {"schedule_id": schedule_id, "error": error}
            await events.append(
                self.redis,
                "SCHEDULE_QUARANTINED",
                tenant_id,
                workspace_id,
                payload,
                max_len=self.settings.events_max_per_tenant,
            )

    def quarantined(self) -> int:
        return self._quarantined


def _digest(raw: Any) -> str:
    if not isinstance(raw, dict):
        return f"unreadable: {raw}"
    return hashlib.sha256(b"\0".join(k + b"=" + v for k, v in sorted(raw.items()))).hexdigest()


SchedulerActor = ray.remote(Scheduler)


def scheduler_actor(settings: Settings) -> Any:
    """Create or attach to the scheduler of `settings.ray_namespace`."""
    return SchedulerActor.options(name=SCHEDULER_SPEC.name, namespace=settings.ray_namespace, **ACTOR_OPTIONS).remote(
        settings
    )
