"""Broadcaster: every tenant's new events, read from Redis and delivered to the API actor.

Each tick is one blocking XREAD over all tenant streams from the broadcaster's positions.
What it reads goes to the API actor in batches; a tenant's position advances, in Redis,
only after the API has taken its batch. A broadcaster killed at any point resumes from the
last acknowledged position: events after it are delivered again, never skipped, and the
WebSocket connections drop ids they have already sent.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis.exceptions

from actors.runtime import metrics
from actors.runtime.handles import ACTOR_UNAVAILABLE, API_ACTOR, NamedActor
from actors.runtime.subsystem import Subsystem, SubsystemSpec
from settings import Settings
from store import broadcast, events
from store import tenants as tenants_store
from store.client import connect

log = logging.getLogger(__name__)

# A tick blocks in XREAD for up to BLOCK_S, then delivers (deadline DELIVER_TIMEOUT_S).
BROADCASTER_SPEC = SubsystemSpec("broadcaster", interval_s=1.0, stale_after_s=6.0)
BLOCK_S = 1.0
READ_COUNT = 1000  # per tenant per read, and at most a quarter of a client's queue (WS_QUEUE_SIZE)
DELIVER_MAX = 5000  # events per call to the API actor
DELIVER_TIMEOUT_S = 2.0
RETRY_PAUSE_S = 0.5  # between attempts while the API actor does not take deliveries
LAG_MEASURE_S = 2.0
TENANTS_REFRESH_S = 1.0  # new tenants are picked up within this (their streams are read from the start)
SAVE_EVERY_S = 0.2  # positions are written at most this often: a crash re-delivers at most this much


class Broadcaster(Subsystem):
    spec = BROADCASTER_SPEC

    def __init__(self, settings: Settings, **runtime: Any) -> None:
        super().__init__(settings, **runtime)
        self.redis = self.own(connect(settings.redis_url, timeout_s=BLOCK_S + 2.0))
        self.reader = events.StreamReader(self.redis)
        self.api = NamedActor(API_ACTOR, settings.ray_namespace)
        self.positions: dict[str, str] = {}
        # One delivery never fills more than a quarter of a client's queue, so a burst alone
        # does not close a client that reads.
        self.read_count = max(1, min(READ_COUNT, settings.ws_queue_size // 4))
        self.bad_streams: set[str] = set()  # tenants whose events key is not a stream
        self.tenants = 0
        self.delivered = 0
        self.malformed = 0
        self.clients: int | None = None
        self.api_reachable: bool | None = None
        self.lag_events = 0
        self.lag_s = 0.0
        self._lag_measured_at = 0.0
        # Per tenant: its count of appended events when it was last seen at its head, and the
        # entries read since. The lag in events is the difference of counts: nothing is read.
        self._base: dict[str, tuple[int, int]] = {}
        self._read: dict[str, int] = {}
        self._tenant_list: list[str] = []
        self._tenants_read_at = 0.0
        self._unsaved: dict[str, str] = {}
        self._undelivered: set[str] = set()  # tenants read and not yet taken by the API
        self._undelivered_ms: float | None = None  # the oldest such event's time (ms)
        self._saved_at = 0.0
        self._pause = 0.0

    def progress(self) -> dict[str, Any]:
        return {
            "tenants": self.tenants,
            "clients": self.clients,
            "delivered": self.delivered,
            "lag_events": self.lag_events,
            "lag_s": round(self.lag_s, 3),
            "api_reachable": self.api_reachable,
            "malformed": self.malformed,
        }

    def _export_lag(self) -> None:
        tags = {"subsystem": self.name}
        metrics.work().broadcaster_lag_events.set(float(self.lag_events), tags=tags)
        metrics.work().broadcaster_lag_seconds.set(self.lag_s, tags=tags)

    def item_tenant(self, key: str) -> str | None:
        return key  # its items are tenants' streams

    def pause_s(self) -> float:
        return self._pause  # a tick already waits in XREAD; it pauses only to retry a delivery

    async def setup(self) -> None:
        namespace = self.settings.ray_namespace
        saved = await broadcast.load(self.redis, namespace)
        if saved is not None or self.positions:
            # After a loop restart, keep what the API acknowledged; if Redis lost the hash, write it back.
            self.positions = {**(saved or {}), **self.positions}
            if saved is None:
                await broadcast.start(self.redis, namespace, self.positions)
            return
        # A new deployment: no WebSocket is admitted before its positions exist, so history
        # need not be sent again.
        if added := await tenants_store.index_existing(self.redis):
            log.info("indexed %d tenants created before the tenants index", added)
        self.positions = await events.heads(self.redis, await tenants_store.ids(self.redis))
        await broadcast.start(self.redis, namespace, self.positions)
        log.info("new deployment: broadcasting from the heads of %d tenant streams", len(self.positions))

    async def tick(self) -> bool:
        now = time.monotonic()
        if now - self._tenants_read_at >= TENANTS_REFRESH_S:
            self._tenant_list, self._tenants_read_at = await tenants_store.ids(self.redis), now
            gone = set(self.positions) - set(self._tenant_list)  # deleted tenants: forget them
            for tenant_id in gone:
                self.positions.pop(tenant_id, None)
                self._unsaved.pop(tenant_id, None)
        tenants = self._tenant_list
        self.tenants = len(tenants)
        if self.bad_streams:
            await self._screen(sorted(self.bad_streams))
        positions = {t: self.positions.get(t, "0-0") for t in tenants if t not in self.bad_streams}
        try:
            reply = await self.reader.read(positions, count=self.read_count, block_ms=int(BLOCK_S * 1000))
        except redis.exceptions.ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            await self._screen(tenants)  # one tenant's bad key must not stop everyone's events
            return True
        batch, newest, oldest_ms, full = self._decode(reply)
        self._read = {tenant_id: len(entries) for tenant_id, entries in reply}
        delivered = await self._deliver(batch, newest)
        # A tenant whose events were read but not taken stays behind until a delivery of its own
        # succeeds: a read need not return every tenant (on a Redis Cluster each shard's read
        # ends on its own), so not being in this one says nothing.
        if delivered:
            self._undelivered -= set(newest)
        elif newest:
            self._undelivered |= set(newest)
            self._undelivered_ms = min(m for m in (oldest_ms, self._undelivered_ms) if m is not None)
        if not self._undelivered:
            self._undelivered_ms = None
        if self._unsaved and (not reply or time.monotonic() - self._saved_at >= SAVE_EVERY_S):
            await self._save()
        behind = sorted(set(newest if full else ()) | (self._undelivered & set(positions)))
        first_ms = min((m for m in (oldest_ms, self._undelivered_ms) if m is not None), default=None)
        await self._measure_lag(behind, first_ms, positions)
        self._export_lag()
        self._pause = 0.0 if delivered else RETRY_PAUSE_S
        return delivered and full

    def _decode(self, reply: Any) -> tuple[dict[str, list[tuple[str, str]]], dict[str, str], float | None, bool]:
        """The read as per-tenant (id, JSON) lists, each tenant's newest id, the oldest event's ms, any full read."""
        batch: dict[str, list[tuple[str, str]]] = {}
        newest: dict[str, str] = {}
        oldest_ms: float | None = None
        full = False
        for tenant_id, entries in reply:
            full = full or len(entries) >= self.read_count
            batch[tenant_id], malformed = events.envelopes(tenant_id, entries)
            self.malformed += len(malformed)
            for stream_id in malformed:
                log.warning("skipping malformed entry %s of %s", stream_id, events.stream_name(tenant_id))
            if entries:
                newest[tenant_id] = entries[-1][0].decode()
                first_ms = float(entries[0][0].split(b"-")[0])
                oldest_ms = first_ms if oldest_ms is None else min(oldest_ms, first_ms)
        return batch, newest, oldest_ms, full

    async def _deliver(self, batch: dict[str, list[tuple[str, str]]], newest: dict[str, str]) -> bool:
        """Hand the batch to the API actor in calls of at most DELIVER_MAX events; advance after each."""
        chunks: list[list[str]] = [[]]
        size = 0
        for tenant_id, out in batch.items():
            if size and size + len(out) > DELIVER_MAX:
                chunks.append([])
                size = 0
            chunks[-1].append(tenant_id)
            size += len(out)
        for chunk in chunks:
            try:
                self.clients = await self.api.call("deliver", {t: batch[t] for t in chunk}, timeout_s=DELIVER_TIMEOUT_S)
            except ACTOR_UNAVAILABLE as exc:
                if self.api_reachable is not False:
                    log.warning("API actor does not take deliveries (%s); retrying", type(exc).__name__)
                self.api_reachable = False
                return False
            self.api_reachable = True
            advanced = {t: newest[t] for t in chunk}
            self.positions.update(advanced)
            self._unsaved.update(advanced)
            for t in chunk:
                if t in self._base:
                    base, read = self._base[t]
                    self._base[t] = (base, read + self._read.get(t, 0))
            self.delivered += sum(len(batch[t]) for t in chunk)
        return True

    async def _save(self) -> None:
        """Write the positions delivered since the last save (a crash before it only re-delivers)."""
        unsaved, self._unsaved = self._unsaved, {}
        try:
            await broadcast.save(self.redis, self.settings.ray_namespace, unsaved)
        except BaseException:
            self._unsaved = {**unsaved, **self._unsaved}
            raise
        self._saved_at = time.monotonic()

    async def close(self) -> None:
        self.reader.cancel()
        if self._unsaved:
            try:
                await self._save()
            except Exception as exc:  # the positions saved before are still valid: events are re-delivered
                log.warning("could not save broadcast positions: %s", exc)

    async def _measure_lag(self, behind: list[str], oldest_ms: float | None, positions: dict[str, str]) -> None:
        """Seconds (from the stream ids) and events (from each stream's count of appends) from the
        positions of the tenants `behind` to their heads; the counts are read every LAG_MEASURE_S.

        A tenant's count at its position is learned whenever it is at its head (or, read from the
        start, from what its stream holds), then moved by what is read: so the lag of a tenant
        that was behind a saved position since this process started is not counted until it has
        caught up once (`lag_s` still shows it).
        """
        now = time.time()
        self.lag_s = max(0.0, now - oldest_ms / 1000) if behind and oldest_ms is not None else 0.0
        if now - self._lag_measured_at < LAG_MEASURE_S:
            if not behind:
                self.lag_events = 0
            return
        self._lag_measured_at = now
        counts = await events.counts(self.redis, list(positions))
        lag = 0
        for tenant_id, (added, held) in counts.items():
            if tenant_id not in behind:
                self._base[tenant_id] = (added, 0)
                continue
            if tenant_id not in self._base and positions[tenant_id] == "0-0":
                self._base[tenant_id] = (added - held, 0)  # nothing delivered yet: all it holds is ahead
            if tenant_id in self._base:
                base, read = self._base[tenant_id]
                lag += max(0, added - base - read)
        self._base = {t: b for t, b in self._base.items() if t in counts}
        self.lag_events = lag

    async def _screen(self, tenants: list[str]) -> None:
        """Find tenants whose events key holds something other than a stream; leave them out."""
        for tenant_id, kind in (await events.kinds(self.redis, tenants)).items():
            if kind in ("stream", "none"):
                if tenant_id in self.bad_streams:
                    self.bad_streams.discard(tenant_id)
                    self.items.release(tenant_id)
                continue
            self.bad_streams.add(tenant_id)
            error = TypeError(f"{events.stream_name(tenant_id)} is a {kind}, not a stream; its events cannot be read")
            await self.items.fail(tenant_id, error, version=kind)
