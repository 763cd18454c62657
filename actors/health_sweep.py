"""Health sweep: probe every online workspace's `GET <url>/health`; 3 failures in a row take it offline.

A sweep starts every `HEALTH_SWEEP_INTERVAL_S`. Probes run concurrently (at most
PROBE_CONCURRENCY at once), each with its own PROBE_TIMEOUT_S, so a hanging workspace
costs one probe slot for at most that long and never delays the others. The offline
transition is the liveness monitor's compare-and-set, so a workspace goes offline once
whoever notices first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from actors.egress import EgressError, egress_for
from actors.runtime.subsystem import Every, Subsystem, SubsystemSpec
from settings import Settings
from store import workspaces
from store.client import connect
from store.secrets import SecretBox

log = logging.getLogger(__name__)

# The tick checks once a second whether a sweep is due; a sweep takes up to a few probe timeouts.
HEALTH_SWEEP_SPEC = SubsystemSpec("health-sweep", interval_s=1.0, stale_after_s=15.0)
PROBE_TIMEOUT_S = 2.0
PROBE_CONCURRENCY = 100
FAILURES_TO_OFFLINE = 3


class HealthSweep(Subsystem):
    spec = HEALTH_SWEEP_SPEC

    def __init__(self, settings: Settings, **runtime: Any) -> None:
        super().__init__(settings, **runtime)
        self.redis = self.own(connect(settings.redis_url, timeout_s=5.0))
        self.egress = self.own(egress_for(settings, limit=PROBE_CONCURRENCY, force_close=True))
        self.box = SecretBox(settings.channel_secret_key or "")
        self._sweep_every = Every(settings.health_sweep_interval_s, self.clock)
        self.failures: dict[str, int] = {}  # consecutive failed probes per workspace
        self.watched = 0
        self.probe_failures = 0
        self.offline_transitions = 0
        self.last_sweep_s: float | None = None
        self.sweeps = 0

    async def open(self) -> None:
        await self.egress.open()

    def progress(self) -> dict[str, Any]:
        return {
            "sweeps": self.sweeps,
            "watched": self.watched,
            "probe_failures": self.probe_failures,
            "failing": sum(1 for n in self.failures.values() if n),
            "offline_transitions": self.offline_transitions,
            "last_sweep_s": None if self.last_sweep_s is None else round(self.last_sweep_s, 3),
        }

    async def tick(self) -> None:
        if not self._sweep_every.due():
            return
        started = time.monotonic()
        await self._sweep()
        self.last_sweep_s = time.monotonic() - started
        self.sweeps += 1

    async def _sweep(self) -> None:
        ids = await workspaces.online(self.redis)
        records = await workspaces.read(self.redis, ids)
        slots = asyncio.Semaphore(PROBE_CONCURRENCY)
        self.watched = len(ids)
        online = set(ids)
        self.failures = {w: n for w, n in self.failures.items() if w in online}
        await asyncio.gather(*(self._check(w, raw, slots) for w, raw in zip(ids, records, strict=True)))

    async def _check(self, workspace_id: str, raw: Any, slots: asyncio.Semaphore) -> None:
        outcome = await self.items.run_on(
            workspace_id, raw, lambda r: self._probe_once(workspace_id, r, slots), version=workspaces.version
        )
        if outcome.ok and outcome.value:
            self.offline_transitions += 1

    async def _probe_once(self, workspace_id: str, raw: dict[bytes, bytes], slots: asyncio.Semaphore) -> bool:
        if not raw:
            return False  # deleted meanwhile
        target = workspaces.target(workspace_id, raw, self.box)
        async with slots:
            healthy = await self._probe(target.url.rstrip("/") + "/health", target.auth_token)
        if healthy:
            self.failures.pop(workspace_id, None)
            return False
        self.probe_failures += 1
        failed = self.failures[workspace_id] = self.failures.get(workspace_id, 0) + 1
        if failed < FAILURES_TO_OFFLINE:
            return False
        self.failures.pop(workspace_id, None)
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
