"""Scheduler actor: claims due cron slots atomically and fires them over A2A, isolated per schedule."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from actors.a2a_client import Outcome, send
from actors.egress import egress_for
from actors.fair import FairQueue
from actors.runtime import metrics
from actors.runtime.batch import Batch
from actors.runtime.shards import ShardOwner
from actors.runtime.subsystem import TRANSIENT_ERRORS, Every, Subsystem, SubsystemSpec
from settings import Settings
from store import quotas, schedules, workspaces
from store.client import connect
from store.keys import shard_of
from store.records import decode, field
from store.secrets import SecretBox
from store.shards import Fence

log = logging.getLogger(__name__)

SCHEDULER_SPEC = SubsystemSpec("scheduler", interval_s=1.0)
LEASE_MARGIN_S = 5
DUE_TENANTS_PER_TICK = 10_000  # tenants read per tick, the longest waiting first


@dataclass(frozen=True)
class Fire:
    """One schedule as a fire needs it, read and checked in the tick that claimed its slot."""

    schedule_id: str
    tenant_id: str
    workspace_id: str
    prompt: str
    cron: str
    timezone: str
    target: workspaces.Target


class Scheduler(Subsystem):
    """Each tick: claim expired leases and due slots, start their fires, return.

    Fires run as tasks, each with FIRE_TIMEOUT_S: at most SCHEDULER_FIRES_IN_FLIGHT in all,
    and at most the tenant's `fires_in_flight` (TENANT_FIRES_IN_FLIGHT) per tenant. Due
    slots wait in their tenant's own index, and the free fire slots go to the tenants with
    due work in weighted fair order (FairQueue): a tenant whose workspace hangs, or whose
    schedules are many, holds only its own share and never delays another tenant's slot.
    A schedule whose stored fields are corrupt is recorded as `error`, and after 3 failures
    in a row quarantined: taken out of the due index until a PATCH fixes it.

    With SCHEDULER_REPLICAS, each replica works the tenants of the shards it holds
    (ShardOwner): every claim, reclaim and completion is fenced by its shard's lease, and a
    shard another replica should have is let go once its fires in flight are recorded.
    """

    spec = SCHEDULER_SPEC

    @classmethod
    def replicas(cls, settings: Settings) -> int:
        return settings.scheduler_replicas

    def __init__(self, settings: Settings, **runtime: Any) -> None:
        super().__init__(settings, **runtime)
        self.redis = self.own(connect(settings.redis_url, timeout_s=5.0))
        self.fire_timeout_s = settings.fire_timeout_s
        self._fires: set[asyncio.Task[None]] = set()
        self.egress = self.own(egress_for(settings))
        self.box = SecretBox(settings.channel_secret_key or "")
        self.fired = 0
        self.redelivered = 0
        self._quarantined = 0
        self._versions: dict[str, str] = {}
        self._index_of: dict[str, str] = {}  # schedule id -> the tenant due index it was read from
        self._slots = schedules.Slots(time.time())
        self._tenant_fires: Counter[str] = Counter()
        self._fair = FairQueue()
        self.capacity = settings.scheduler_fires_in_flight
        self._each_second = Every(1.0, self.clock)
        self._shares: dict[str, quotas.Share] = {}
        # Fires that end together are recorded together: one round trip for many.
        self._completions: Batch[schedules.Completion] = Batch(
            lambda done: schedules.complete_many(self.redis, done, max_len=settings.events_max_per_tenant)
        )
        self.shards = ShardOwner(
            self.redis, settings.ray_namespace, self.spec.group_name, self.name, lease_s=settings.shard_lease_s
        )
        self._shard_fires: Counter[int] = Counter()  # fires in flight per shard (a shard is let go at 0)

    async def open(self) -> None:
        await self.egress.open()
        if moved := await schedules.move_legacy_due(self.redis):
            log.info("moved %d schedules into their tenants' due indexes", moved)

    async def close(self) -> None:
        """Fires in flight are cancelled: their leases stay, so each slot is delivered again (by
        whichever replica takes the shard: this one lets go of its shards)."""
        for task in self._fires:
            task.cancel()
        await asyncio.gather(*self._fires, return_exceptions=True)
        await self.shards.leave()

    def progress(self) -> dict[str, Any]:
        return {
            "in_flight": len(self._fires),
            "tenants_in_flight": len(self._tenant_fires),
            "fired": self.fired,
            "redelivered": self.redelivered,
            "shards": len(self.shards.held()),
        }

    async def tick(self) -> bool:
        await self.shards.refresh(busy=lambda shard: self._shard_fires[shard] > 0)
        owned = self.shards.owned()
        now = time.time()
        lease = int(now + self.fire_timeout_s + LEASE_MARGIN_S)
        # versions, and where a schedule was read from, only hold within the tick that read them
        self._versions.clear()
        self._index_of.clear()
        self._slots = schedules.Slots(now)
        room = self.capacity - len(self._fires)
        if room <= 0:
            # Full: wait (bounded) for a fire to finish, then tick again at once.
            await asyncio.wait(self._fires, timeout=self.spec.interval_s, return_when=asyncio.FIRST_COMPLETED)
            return True
        # Leases run out in whole seconds, and the count is for reports: once a second is enough
        # (a tick that follows a fire's end comes much more often under load).
        if self._each_second.due():
            self._quarantined = await schedules.quarantined_count(self.redis, self.shards.held())
            self._shares.clear()
            expired_leases = await schedules.expired_leases(self.redis, now, room, owned) if owned else []
        else:
            expired_leases = []
        for expired in expired_leases:
            fence = self.shards.fence(shard_of(expired.schedule_id))
            if fence and await schedules.reclaim(self.redis, expired, lease, fence):
                schedule_id = expired.schedule_id
                outcome = await self.items.run(
                    schedule_id, lambda e=expired, f=fence: self._refire(e.schedule_id, e.slot, f)
                )
                if not outcome.ok and not outcome.skipped and not outcome.quarantined_now:
                    await self._record_error(schedule_id, outcome.error, now)
        room = self.capacity - len(self._fires)
        due, held = await self._fair_share(now, room, owned)
        if not due:
            return await self._wait_for_room() if held else False
        ids = [schedule_id for _, (schedule_id, _) in due]
        raws = await schedules.read(self.redis, ids)
        workspace_ids = sorted({field(raw, "workspace_id") for raw in raws if isinstance(raw, dict)} - {""})
        workspace_raws = dict(zip(workspace_ids, await workspaces.read(self.redis, workspace_ids), strict=True))
        plans: list[tuple[Fire, schedules.Claim]] = []
        for (tenant_id, (schedule_id, due_slot)), raw in zip(due, raws, strict=True):
            self._versions[schedule_id] = version = schedules.version(raw)
            self._index_of[schedule_id] = tenant_id
            fence = self.shards.fence(shard_of(tenant_id))
            if fence is None:
                continue  # its shard's lease ran out in this tick: the slot is its next owner's
            outcome = await self.items.run(
                schedule_id,
                lambda t=tenant_id, s=schedule_id, r=raw, d=due_slot, f=fence: self._plan(
                    t, s, r, workspace_raws, d, lease, f
                ),
                version=version,
            )
            if outcome.ok:
                plans.append(outcome.value)
            elif not outcome.skipped and not outcome.quarantined_now:
                await self._record_error(schedule_id, outcome.error, now)
        # One round trip claims them all; each claim is still atomic on its own.
        claimed = await schedules.claim(self.redis, [c for _, c in plans])
        for (fire, c), won in zip(plans, claimed, strict=True):
            if won:
                self._start(fire, c.slot, c.fence)
        if len(due) == room:
            return True
        return await self._wait_for_room() if held else False

    async def _fair_share(
        self, now: float, room: int, shards: list[int]
    ) -> tuple[list[tuple[str, tuple[str, int]]], bool]:
        """Up to `room` due slots of the tenants of `shards` as (tenant, (schedule id, due slot)),
        in weighted fair order, none from a tenant already at its `fires_in_flight`; and whether
        a tenant's cap held back slots that are due."""
        if room <= 0 or not shards:
            return [], False
        tenant_ids = await schedules.due_tenants(self.redis, now, DUE_TENANTS_PER_TICK, shards)
        # Each tenant's share is read once a second: a changed quota applies within that.
        unread = [t for t in tenant_ids if t not in self._shares]
        self._shares.update(await quotas.shares(self.redis, self.settings.quotas(), unread))
        shares = self._shares
        rooms = {t: int(shares[t]["fires_in_flight"]) - self._tenant_fires[t] for t in tenant_ids}
        wants = {t: min(r, room) for t, r in rooms.items()}
        backlogs = await schedules.due(self.redis, now, wants)
        # A tenant with no room, or with as many due as it had room for, may have more waiting.
        held = any(r <= 0 or len(backlogs.get(t, ())) >= r for t, r in rooms.items())
        weights = {t: shares[t].weight for t in tenant_ids}
        return self._fair.order(backlogs, rooms, weights, room), held

    async def _wait_for_room(self) -> bool:
        """A tenant's cap holds back due slots: tick again as soon as a fire ends (or a second
        has passed), so a capped tenant goes on at the pace its fires finish."""
        if not self._fires:
            return False
        await asyncio.wait(self._fires, timeout=self.pause_s(), return_when=asyncio.FIRST_COMPLETED)
        return True

    def pause_s(self) -> float:
        # Wake just after the next whole second: slots are whole seconds.
        return min(self.spec.interval_s, 1.0 - time.time() % 1.0 + 0.005)

    async def _plan(
        self,
        tenant_id: str,
        schedule_id: str,
        raw: Any,
        workspace_raws: dict[str, Any],
        due: int,
        lease: int,
        fence: Fence,
    ) -> tuple[Fire, schedules.Claim]:
        """Validate one schedule and compute its claim (no I/O); raises if it is corrupt."""
        fire = self._validated(schedule_id, raw, workspace_raws)
        if fire.tenant_id != tenant_id:
            raise ValueError(f"schedule {schedule_id} is in the due index of another tenant")
        _, following = self._slots.around(fire.cron, fire.timezone)
        slot = self._slots.latest(fire.cron, fire.timezone, due)
        return fire, schedules.Claim(tenant_id, schedule_id, due, slot, following, lease, fence)

    async def _refire(self, schedule_id: str, slot: int, fence: Fence) -> None:
        (raw,) = await schedules.read(self.redis, [schedule_id])
        if isinstance(raw, Exception):
            raise raw
        if not raw:  # deleted meanwhile: nothing to deliver
            await schedules.drop_lease(self.redis, schedule_id, slot, fence)
            return
        self._versions[schedule_id] = schedules.version(raw)
        self._index_of[schedule_id] = field(raw, "tenant_id")
        workspace_id = field(raw, "workspace_id")
        workspace_raws = dict(zip([workspace_id], await workspaces.read(self.redis, [workspace_id]), strict=True))
        self.redelivered += 1
        self._start(self._validated(schedule_id, raw, workspace_raws), slot, fence)

    def _validated(self, schedule_id: str, raw: Any, workspace_raws: dict[str, Any]) -> Fire:
        """What to fire for the schedule, checked; raises (for ItemGuard) when its records are corrupt."""
        if isinstance(raw, Exception):
            raise ValueError(f"record unreadable: {raw}")
        if not raw:
            raise LookupError(f"schedule {schedule_id} has no record")
        fields = decode(raw)  # invalid UTF-8 raises UnicodeDecodeError
        for name in ("tenant_id", "workspace_id", "cron", "timezone", "prompt"):
            if not fields.get(name):
                raise ValueError(f"field {name} is missing")
        self._slots.around(fields["cron"], fields["timezone"])  # ValueError naming the bad field
        workspace_id = fields["workspace_id"]
        workspace = workspace_raws.get(workspace_id)
        if isinstance(workspace, Exception):
            raise ValueError(f"workspace record unreadable: {workspace}")
        if not workspace or decode(workspace).get("tenant_id") != fields["tenant_id"]:
            raise LookupError(f"workspace {workspace_id} does not exist")
        target = workspaces.target(workspace_id, workspace, self.box)
        return Fire(
            schedule_id, fields["tenant_id"], workspace_id, fields["prompt"], fields["cron"], fields["timezone"], target
        )

    def _start(self, fire: Fire, slot: int, fence: Fence | None) -> None:
        metrics.work().lateness.observe(max(0.0, time.time() - slot), tags={"subsystem": self.name})
        task = asyncio.get_running_loop().create_task(self._fire(fire, slot, fence))
        self._fires.add(task)
        tenant_id = fire.tenant_id
        shard = fence.shard if fence else shard_of(tenant_id)
        self._tenant_fires[tenant_id] += 1
        self._shard_fires[shard] += 1

        def done(task: asyncio.Task[None]) -> None:
            self._fires.discard(task)
            self._tenant_fires[tenant_id] -= 1
            if self._tenant_fires[tenant_id] <= 0:
                del self._tenant_fires[tenant_id]
            self._shard_fires[shard] -= 1
            if self._shard_fires[shard] <= 0:
                del self._shard_fires[shard]

        task.add_done_callback(done)

    async def _fire(self, fire: Fire, slot: int, fence: Fence | None) -> None:
        """Deliver one slot and record the outcome; never raises (it runs as a detached task)."""
        schedule_id = fire.schedule_id
        message_id = schedules.message_id(schedule_id, slot)
        target = fire.target
        try:
            outcome = await send(
                self.egress,
                target.url,
                target.a2a_version,
                message_id,
                fire.prompt,
                self.fire_timeout_s,
                target.auth_token,
            )
        except Exception as exc:  # a fire task has no caller to report to: record it as the slot's error
            log.error("fire %s failed", message_id, exc_info=exc)
            outcome = Outcome(False, f"internal error: {type(exc).__name__}: {exc}")
        try:
            error = None if outcome.ok else outcome.error or "unknown error"
            await self._completions.submit(
                schedules.Completion(schedule_id, slot, fire.tenant_id, fire.workspace_id, error, fence)
            )
        except TRANSIENT_ERRORS as exc:
            # The lease stays: the slot is delivered again (same messageId) when it expires.
            log.warning("could not record fire of %s: %s", message_id, exc)
            return
        except Exception as exc:  # e.g. a corrupt record Redis refuses: drop the lease, never loop on it
            log.error("could not record fire of %s; lease dropped", message_id, exc_info=exc)
            try:
                await schedules.drop_lease(self.redis, schedule_id, slot, fence)
            except TRANSIENT_ERRORS:
                pass
            return
        self.fired += 1
        metrics.work().fires.inc(tags={"subsystem": self.name, "status": "ok" if outcome.ok else "error"})

    async def _record_error(self, schedule_id: str, error: str | None, now: float) -> None:
        """Record the failure and let the others go first: the next try is a second later."""
        if schedule_id in self._versions:
            tenant_id = self._index_of.get(schedule_id, "")
            await schedules.record_error(self.redis, tenant_id, schedule_id, self._versions[schedule_id], error, now)

    async def on_quarantine(self, schedule_id: Hashable, error: str) -> None:
        """Take the schedule out of the due index until a PATCH fixes it; tell its tenant."""
        schedule_id = str(schedule_id)
        await schedules.quarantine(
            self.redis,
            self._index_of.get(schedule_id, ""),
            schedule_id,
            self._versions.get(schedule_id, ""),
            error,
            max_len=self.settings.events_max_per_tenant,
        )
        # Quarantine lives in Redis from now on (record, index); the guard need not remember it.
        self.items.release(schedule_id)
        self._quarantined = await schedules.quarantined_count(self.redis, self.shards.held())

    def quarantined(self) -> int:
        return self._quarantined

    async def quarantine_items(self) -> list[dict[str, Any]]:
        return await schedules.quarantined(self.redis, self.shards.held())

    async def release_item(self, key: str) -> bool:
        """Put a quarantined schedule back in its tenant's due index, its failures forgotten."""
        released = await schedules.release(self.redis, key, time.time())
        if released:
            self.items.release(key)
            log.warning("scheduler: schedule %s released by an operator", key)
            self._quarantined = await schedules.quarantined_count(self.redis, self.shards.held())
        return released
