"""Health sweep: probe every online workspace's `GET <url>/health`; 3 failures in a row take it offline.

Every `HEALTH_SWEEP_INTERVAL_S` a round of probes starts for each tenant whose previous
round has finished: each tenant's workspaces are probed in a lane of its own, at most
TENANT_PROBES at once, inside PROBE_CONCURRENCY over all tenants, each probe with its own
PROBE_TIMEOUT_S. So a tenant with thousands of workspaces that hang makes only its own
rounds long: other tenants' rounds keep their pace, and the tick (which only starts
rounds) returns at once and beats, however long any round takes. Failures in a row are
counted in Redis, so a restart of the sweep keeps them. The offline transition is the
liveness monitor's compare-and-set, so a workspace goes offline once whoever notices first.
With LIVENESS_REPLICAS, each replica probes the workspaces of the shards it holds (ShardOwner).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any

from actors.egress import EgressError, egress_for
from actors.runtime import metrics
from actors.runtime.shards import ShardOwner
from actors.runtime.subsystem import Every, Subsystem, SubsystemSpec
from settings import Settings
from store import workspaces
from store.client import connect
from store.records import field
from store.secrets import SecretBox

log = logging.getLogger(__name__)

# The tick checks once a second whether a sweep is due, starts its rounds and returns.
HEALTH_SWEEP_SPEC = SubsystemSpec("health-sweep", interval_s=1.0, stale_after_s=15.0)
PROBE_TIMEOUT_S = 2.0
PROBE_CONCURRENCY = 100
TENANT_PROBES = 16
FAILURES_TO_OFFLINE = 3


class HealthSweep(Subsystem):
    spec = HEALTH_SWEEP_SPEC

    @classmethod
    def replicas(cls, settings: Settings) -> int:
        return settings.liveness_replicas

    def __init__(self, settings: Settings, **runtime: Any) -> None:
        super().__init__(settings, **runtime)
        self.redis = self.own(connect(settings.redis_url, timeout_s=5.0))
        self.egress = self.own(egress_for(settings, limit=PROBE_CONCURRENCY, force_close=True))
        self.box = SecretBox(settings.channel_secret_key or "")
        self._sweep_every = Every(settings.health_sweep_interval_s, self.clock)
        self._slots = asyncio.Semaphore(PROBE_CONCURRENCY)
        self._lanes: dict[str, asyncio.Task[None]] = {}  # tenant id -> its round in progress
        self.watched = 0
        self.failing = 0
        self.probe_failures = 0
        self.offline_transitions = 0
        self.last_sweep_s: float | None = None
        self.sweeps = 0
        self.rounds = 0
        self.rounds_skipped = 0
        self.shards = ShardOwner(
            self.redis, settings.ray_namespace, self.spec.group_name, self.name, lease_s=settings.shard_lease_s
        )

    async def open(self) -> None:
        await self.egress.open()

    async def close(self) -> None:
        for task in self._lanes.values():
            task.cancel()
        await asyncio.gather(*self._lanes.values(), return_exceptions=True)
        await self.shards.leave()

    def progress(self) -> dict[str, Any]:
        return {
            "sweeps": self.sweeps,
            "rounds": self.rounds,
            "rounds_in_progress": len(self._lanes),
            "rounds_skipped": self.rounds_skipped,  # a tenant's previous round was still going
            "watched": self.watched,
            "probe_failures": self.probe_failures,
            "failing": self.failing,
            "offline_transitions": self.offline_transitions,
            "last_sweep_s": None if self.last_sweep_s is None else round(self.last_sweep_s, 3),
            "shards": len(self.shards.held()),
        }

    async def tick(self) -> None:
        await self.shards.refresh()
        if not self._sweep_every.due():
            return
        started = time.monotonic()
        owned = self.shards.owned()
        ids = await workspaces.online(self.redis, owned)
        records = await workspaces.read(self.redis, ids)
        self.watched = len(ids)
        await workspaces.forget_probe_failures(self.redis, set(ids), owned)
        self.failing = await workspaces.probe_failures(self.redis, owned)
        by_tenant: dict[str, list[tuple[str, Any]]] = defaultdict(list)
        for workspace_id, raw in zip(ids, records, strict=True):
            tenant_id = field(raw, "tenant_id") if isinstance(raw, dict) else ""
            by_tenant[tenant_id].append((workspace_id, raw))
        for tenant_id, members in by_tenant.items():
            if tenant_id in self._lanes:
                self.rounds_skipped += 1
                continue
            task = asyncio.get_running_loop().create_task(self._round(members), name=f"sweep {tenant_id}")
            self._lanes[tenant_id] = task
            task.add_done_callback(lambda _, t=tenant_id: self._lanes.pop(t, None))
        self.sweeps += 1
        self.last_sweep_s = time.monotonic() - started

    async def _round(self, members: list[tuple[str, Any]]) -> None:
        """One tenant's round: each of its workspaces probed once, at most TENANT_PROBES at once."""
        lane = asyncio.Semaphore(TENANT_PROBES)
        try:
            await asyncio.gather(*(self._check(w, raw, lane) for w, raw in members))
        except Exception:  # a round has no caller: an error (say, Redis down) ends it; the next one retries
            log.warning("a sweep round ended early", exc_info=True)
        self.rounds += 1

    async def _check(self, workspace_id: str, raw: Any, lane: asyncio.Semaphore) -> None:
        outcome = await self.items.run_on(
            workspace_id, raw, lambda r: self._probe_once(workspace_id, r, lane), version=workspaces.version
        )
        if outcome.ok and outcome.value:
            self.offline_transitions += 1
            metrics.work().offline_transitions.inc(tags={"subsystem": self.name})

    async def _probe_once(self, workspace_id: str, raw: dict[bytes, bytes], lane: asyncio.Semaphore) -> bool:
        if not raw:
            return False  # deleted meanwhile
        target = workspaces.target(workspace_id, raw, self.box)
        async with lane, self._slots:
            healthy = await self._probe(target.url.rstrip("/") + "/health", target.auth_token)
        if healthy:
            await workspaces.probe_passed(self.redis, workspace_id)
            return False
        self.probe_failures += 1
        if await workspaces.probe_failed(self.redis, workspace_id) < FAILURES_TO_OFFLINE:
            return False
        await workspaces.probe_passed(self.redis, workspace_id)  # counted from zero if it comes back
        # A mass offline waits for pooled connections (store.client.connect) rather than failing.
        return await workspaces.mark_offline(
            self.redis,
            workspace_id,
            raw,
            f"{FAILURES_TO_OFFLINE} health probes failed",
            max_len=self.settings.events_max_per_tenant,
            require_expired=False,
        )

    async def _probe(self, url: str, auth_token: str | None) -> bool:
        headers = {"Authorization": f"Bearer {auth_token}"} if auth_token else {}
        try:
            return (await self.egress.request("GET", url, headers=headers, timeout_s=PROBE_TIMEOUT_S)).ok
        except EgressError:
            return False
