"""Scheduler actor: claims due cron slots atomically and fires them over A2A, isolated per schedule."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from actors.a2a_client import Outcome, send
from actors.egress import egress_for
from actors.runtime.subsystem import TRANSIENT_ERRORS, Subsystem, SubsystemSpec
from settings import Settings
from store import schedules, workspaces
from store.client import connect
from store.records import decode, field
from store.secrets import SecretBox

log = logging.getLogger(__name__)

SCHEDULER_SPEC = SubsystemSpec("scheduler", interval_s=1.0)
MAX_IN_FLIGHT = 64
LEASE_MARGIN_S = 5


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

    Fires run as tasks (at most MAX_IN_FLIGHT, each with FIRE_TIMEOUT_S), so a slow or dead
    workspace delays only its own schedule. A schedule whose stored fields are corrupt is
    recorded as `error`, and after 3 failures in a row quarantined: taken out of the due
    index until a PATCH fixes it.
    """

    spec = SCHEDULER_SPEC

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

    async def open(self) -> None:
        await self.egress.open()

    async def close(self) -> None:
        """Fires in flight are cancelled: their leases stay, so each slot is delivered again."""
        for task in self._fires:
            task.cancel()
        await asyncio.gather(*self._fires, return_exceptions=True)

    def progress(self) -> dict[str, Any]:
        return {"in_flight": len(self._fires), "fired": self.fired, "redelivered": self.redelivered}

    async def tick(self) -> bool:
        now = time.time()
        lease = int(now + self.fire_timeout_s + LEASE_MARGIN_S)
        self._versions.clear()  # versions are only compared within the tick that read them
        self._quarantined = await schedules.quarantined_count(self.redis)
        capacity = MAX_IN_FLIGHT - len(self._fires)
        if capacity <= 0:
            # Full: wait (bounded) for a fire to finish, then tick again at once.
            await asyncio.wait(self._fires, timeout=self.spec.interval_s, return_when=asyncio.FIRST_COMPLETED)
            return True
        for expired in await schedules.expired_leases(self.redis, now, capacity):
            if await schedules.reclaim(self.redis, expired, lease):
                schedule_id = expired.schedule_id
                outcome = await self.items.run(schedule_id, lambda e=expired: self._refire(e.schedule_id, e.slot))
                if not outcome.ok and not outcome.skipped and not outcome.quarantined_now:
                    await self._record_error(schedule_id, outcome.error, now)
        capacity = MAX_IN_FLIGHT - len(self._fires)
        due = await schedules.due(self.redis, now, capacity)
        if not due:
            return False
        ids = [schedule_id for schedule_id, _ in due]
        raws = await schedules.read(self.redis, ids)
        workspace_ids = sorted({field(raw, "workspace_id") for raw in raws if isinstance(raw, dict)} - {""})
        workspace_raws = dict(zip(workspace_ids, await workspaces.read(self.redis, workspace_ids), strict=True))
        plans: list[tuple[Fire, schedules.Claim]] = []
        for (schedule_id, due_slot), raw in zip(due, raws, strict=True):
            self._versions[schedule_id] = version = schedules.version(raw)
            outcome = await self.items.run(
                schedule_id,
                lambda s=schedule_id, r=raw, d=due_slot: self._plan(s, r, workspace_raws, d, now, lease),
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
                self._start(fire, c.slot)
        return len(due) == capacity

    def pause_s(self) -> float:
        # Wake just after the next whole second: slots are whole seconds.
        return min(self.spec.interval_s, 1.0 - time.time() % 1.0 + 0.005)

    async def _plan(
        self,
        schedule_id: str,
        raw: Any,
        workspace_raws: dict[str, Any],
        due: int,
        now: float,
        lease: int,
    ) -> tuple[Fire, schedules.Claim]:
        """Validate one schedule and compute its claim (no I/O); raises if it is corrupt."""
        fire = self._validated(schedule_id, raw, workspace_raws)
        slot = schedules.latest_slot(fire.cron, fire.timezone, now, due)
        following = schedules.next_slot(fire.cron, fire.timezone, now)
        return fire, schedules.Claim(schedule_id, due, slot, following, lease)

    async def _refire(self, schedule_id: str, slot: int) -> None:
        (raw,) = await schedules.read(self.redis, [schedule_id])
        if isinstance(raw, Exception):
            raise raw
        if not raw:  # deleted meanwhile: nothing to deliver
            await schedules.drop_lease(self.redis, schedule_id, slot)
            return
        self._versions[schedule_id] = schedules.version(raw)
        workspace_id = field(raw, "workspace_id")
        workspace_raws = dict(zip([workspace_id], await workspaces.read(self.redis, [workspace_id]), strict=True))
        self.redelivered += 1
        self._start(self._validated(schedule_id, raw, workspace_raws), slot)

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
        schedules.validate_cron(fields["cron"], fields["timezone"], time.time())
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

    def _start(self, fire: Fire, slot: int) -> None:
        task = asyncio.get_running_loop().create_task(self._fire(fire, slot))
        self._fires.add(task)
        task.add_done_callback(self._fires.discard)

    async def _fire(self, fire: Fire, slot: int) -> None:
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
            await schedules.complete(
                self.redis,
                schedule_id,
                slot,
                tenant_id=fire.tenant_id,
                workspace_id=fire.workspace_id,
                error=None if outcome.ok else outcome.error or "unknown error",
                max_len=self.settings.events_max_per_tenant,
            )
        except TRANSIENT_ERRORS as exc:
            # The lease stays: the slot is delivered again (same messageId) when it expires.
            log.warning("could not record fire of %s: %s", message_id, exc)
            return
        except Exception as exc:  # e.g. a corrupt record Redis refuses: drop the lease, never loop on it
            log.error("could not record fire of %s; lease dropped", message_id, exc_info=exc)
            try:
                await schedules.drop_lease(self.redis, schedule_id, slot)
            except TRANSIENT_ERRORS:
                pass
            return
        self.fired += 1

    async def _record_error(self, schedule_id: str, error: str | None, now: float) -> None:
        """Record the failure and let the others go first: the next try is a second later."""
        if schedule_id in self._versions:
            await schedules.record_error(self.redis, schedule_id, self._versions[schedule_id], error, now)

    async def on_quarantine(self, schedule_id: Hashable, error: str) -> None:
        """Take the schedule out of the due index until a PATCH fixes it; tell its tenant."""
        schedule_id = str(schedule_id)
        await schedules.quarantine(
            self.redis,
            schedule_id,
            self._versions.get(schedule_id, ""),
            error,
            max_len=self.settings.events_max_per_tenant,
        )
        # Quarantine lives in Redis from now on (record, index); the guard need not remember it.
        self.items.release(schedule_id)
        self._quarantined = await schedules.quarantined_count(self.redis)

    def quarantined(self) -> int:
        return self._quarantined
