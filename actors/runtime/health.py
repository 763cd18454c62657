"""HealthActor: the registry's home; persists it, runs the watchdog, exports metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

from ray.util.metrics import Gauge

from actors.runtime.handles import NamedActor
from actors.runtime.registry import RESTART_REASONS, Expectation, Record, Registry
from actors.runtime.supervised import RecoverLoop, RestartPolicy
from settings import Settings
from store import health as health_store
from store.client import connect

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 0.5
PERSIST_INTERVAL_S = 1.0
# The API actor restarts the HealthActor after this long without an answer.
HEALTH_KILL_AFTER_S = 10.0
# Calls that need the registry wait this long for its load from Redis, then fail.
LOAD_WAIT_S = 2.0
# Redis outages retry at most this far apart; once loaded, the watchdog does not need Redis.
PERSIST_POLICY = RestartPolicy(max_backoff_s=5.0)


class HealthService:
    """The HealthActor's logic, usable without Ray: ingest, verdicts, persistence, watchdog.

    Reports and registrations wait until the persisted registry is loaded, so a restarted
    HealthActor never serves an empty registry as if nothing were expected.
    """

    def __init__(self, settings: Settings, *, clock: Any = time.time) -> None:
        assert settings.redis_url is not None, "the HealthActor needs REDIS_URL"
        self._clock = clock
        self.registry = Registry(booted_at=clock())
        self.redis = connect(settings.redis_url)
        self.namespace = settings.ray_namespace
        self.loaded = asyncio.Event()

    async def load(self) -> None:
        """Read registrations and records persisted by an earlier incarnation."""
        expected, records = await health_store.load(self.redis, self.namespace)
        for raw in expected.values():
            try:
                self.registry.register(Expectation.from_json(raw))
            except (ValueError, TypeError) as exc:
                log.error("dropping unreadable registration %r: %s", raw, exc)
        for name, raw in records.items():
            try:
                self.registry.records[name] = Record.from_json(raw)
            except (ValueError, TypeError) as exc:
                log.error("dropping unreadable record of %r: %s", name, exc)
        self.registry.dirty.clear()
        self.loaded.set()
        log.info("registry loaded: %d expected, %d records", len(expected), len(records))

    async def persist(self) -> None:
        """Write changed registrations and records; on failure they stay dirty."""
        dirty, self.registry.dirty = self.registry.dirty, set()
        if not dirty:
            return
        registry = self.registry
        changed = {
            name: (
                None if (e := registry.expected.get(name)) is None else e.to_json(),
                None if (r := registry.records.get(name)) is None else r.to_json(),
            )
            for name in dirty
        }
        try:
            await health_store.save(self.redis, self.namespace, changed)
        except BaseException:
            self.registry.dirty |= dirty
            raise

    def watchdog(self) -> None:
        """Kill (for Ray to restart) every subsystem silent past its kill_after_s."""
        now = self._clock()
        for expectation in self.registry.due_for_kill(now):
            target = NamedActor(expectation.actor or expectation.name, expectation.namespace or "")
            try:
                found = target.kill(restart=True)
            except Exception as exc:  # one failed kill must not stop the sweep for the others
                log.error("watchdog could not kill %s: %s", expectation.name, exc)
                continue
            if not found:
                log.error("watchdog: actor %s of %s not found", expectation.actor, expectation.name)
                self.registry.kill_failed(expectation.name, now)
                continue
            log.error("watchdog: %s silent past %.1f s; killed for restart", expectation.name, expectation.kill_after_s)
            self.registry.killed(expectation.name, now)


class HealthActor:
    """Detached singleton named `health`: registry of expected subsystems and their verdicts."""

    def __init__(self, settings: Settings) -> None:
        self.service = HealthService(settings)
        self.incarnation = f"{os.getpid()}-{time.time_ns()}"
        self._healthy = Gauge("subsystem_healthy", "1 if the subsystem is healthy, else 0", tag_keys=("subsystem",))
        self._age = Gauge(
            "subsystem_seconds_since_tick", "Seconds since the subsystem's last tick", tag_keys=("subsystem",)
        )
        self._restarts = Gauge(
            "subsystem_restarts", "Restarts of the subsystem by reason", tag_keys=("subsystem", "reason")
        )
        self._quarantined = Gauge(
            "subsystem_quarantined_items", "Items the subsystem holds in quarantine", tag_keys=("subsystem",)
        )
        self._loops = [
            RecoverLoop("health.persist", self._persist_forever, PERSIST_POLICY),
            RecoverLoop("health.sweep", self._sweep_forever),
        ]
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(r.run(), name=r.name) for r in self._loops]

    async def _persist_forever(self) -> None:
        if not self.service.loaded.is_set():
            await self.service.load()
        while True:
            await self.service.persist()
            await asyncio.sleep(PERSIST_INTERVAL_S)

    async def _sweep_forever(self) -> None:
        while True:
            await self.service.loaded.wait()
            self.service.watchdog()
            self._export_metrics()
            await asyncio.sleep(SWEEP_INTERVAL_S)

    def _export_metrics(self) -> None:
        # Ray drops gauges not set within two report intervals: set all of them every sweep.
        now = time.time()
        registry = self.service.registry
        for name in registry.expected:
            verdict = registry.verdict(name, now)
            self._healthy.set(1.0 if verdict.healthy else 0.0, tags={"subsystem": name})
            last = registry.last_tick(name)
            self._age.set(-1.0 if last is None else max(0.0, now - last), tags={"subsystem": name})
            record = registry.records.get(name)
            self._quarantined.set(float(record.quarantined if record else 0), tags={"subsystem": name})
            for reason in RESTART_REASONS:
                count = record.restarts[reason] if record else 0
                self._restarts.set(float(count), tags={"subsystem": name, "reason": reason})

    # -- remote methods --------------------------------------------------------------------

    async def ping(self) -> dict[str, Any]:
        return {"loaded": self.service.loaded.is_set(), "pid": os.getpid()}

    async def _until_loaded(self) -> None:
        try:
            await asyncio.wait_for(self.service.loaded.wait(), LOAD_WAIT_S)
        except TimeoutError:
            raise RuntimeError("health registry not yet loaded from Redis") from None

    async def report(self, batch: dict[str, Any]) -> str:
        """Ingest a heartbeat batch; returns this incarnation's id (see Heartbeats)."""
        received = time.time()
        await self._until_loaded()
        self.service.registry.ingest(batch, received)
        return self.incarnation

    async def register(self, expectations: list[dict[str, Any]], replace: bool = False) -> None:
        """Add expected subsystems; with `replace`, forget expected ones not listed."""
        await self._until_loaded()
        now = time.time()
        registry = self.service.registry
        parsed = [Expectation(**{**e, "registered_at": e.get("registered_at") or now}) for e in expectations]
        if replace:
            for name in set(registry.expected) - {e.name for e in parsed}:
                registry.unregister(name)
        for expectation in parsed:
            previous = registry.expected.get(expectation.name)
            if previous is not None:
                # Re-registration keeps the original time, so silence is not forgiven.
                expectation = Expectation(**{**expectation.__dict__, "registered_at": previous.registered_at})
            registry.register(expectation)

    async def unregister(self, name: str) -> None:
        await self._until_loaded()
        self.service.registry.unregister(name)

    async def expectation(self, name: str) -> dict[str, Any] | None:
        await self._until_loaded()
        expectation = self.service.registry.expected.get(name)
        return None if expectation is None else dict(expectation.__dict__)

    async def snapshot(self) -> dict[str, Any]:
        snapshot = self.service.registry.snapshot(time.time())
        snapshot["loaded"] = self.service.loaded.is_set()
        if not snapshot["loaded"]:
            snapshot["healthy"] = False
        return snapshot

    async def snapshot_json(self) -> bytes | None:
        """The snapshot encoded here, so its reader only passes the bytes on; None until loaded."""
        if not self.service.loaded.is_set():
            return None
        return json.dumps(self.service.registry.snapshot(time.time()), separators=(",", ":")).encode()

    async def quarantine_holders(self) -> list[dict[str, Any]]:
        """The expected subsystems that last reported quarantined items: name, actor, namespace."""
        await self._until_loaded()
        registry = self.service.registry
        return [
            {"name": name, "actor": e.actor, "namespace": e.namespace}
            for name, e in sorted(registry.expected.items())
            if e.actor and (record := registry.records.get(name)) is not None and record.quarantined > 0
        ]

    async def readiness(self) -> dict[str, Any]:
        if not self.service.loaded.is_set():
            return {"ready": False, "unhealthy": [], "error": "health registry not yet loaded from Redis"}
        unhealthy = self.service.registry.unhealthy(time.time())
        return {"ready": not unhealthy, "unhealthy": unhealthy}

    async def flush(self) -> None:
        """Persist now (the driver calls this before it stops Redis)."""
        await self.service.persist()
