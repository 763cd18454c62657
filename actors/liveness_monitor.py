"""Liveness monitor: workspaces whose heartbeat key expired go offline, once, and get one restart request.

Two ways in, one transition: a helper loop listens to Redis expired-key notifications, and
the tick runs a reconciliation scan of the online index (at every start and every
`LIVENESS_SCAN_INTERVAL_S`) that catches any expiry missed while Redis or the monitor was
down. Both call the same compare-and-set (`store.workspaces.MARK_OFFLINE`), which queues
the restart request in Redis; the tick then sends queued requests, debounced per workspace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import aiohttp
import ray
import redis.exceptions

from actors.runtime.handles import ACTOR_OPTIONS
from actors.runtime.subsystem import Subsystem, SubsystemSpec
from settings import Settings
from store import events, keys, workspaces
from store.client import connect
from store.records import is_id

log = logging.getLogger(__name__)

LIVENESS_SPEC = SubsystemSpec("liveness-monitor", interval_s=1.0)
RESTARTS_PER_TICK = 32
RESTART_TIMEOUT_S = 5.0
RESTART_ATTEMPTS = 5  # then the request is given up, and the event says so
EXPIRED_CHANNEL = "__keyevent@{db}__:expired"


class LivenessMonitor(Subsystem):
    spec = LIVENESS_SPEC

    def __init__(self, settings: Settings, spec: SubsystemSpec | None = None) -> None:
        self.redis = connect(settings.redis_url, timeout_s=5.0)
        self._mark_offline = self.redis.register_script(workspaces.MARK_OFFLINE)
        self._scan_due = 0.0
        self._session: aiohttp.ClientSession | None = None
        self.watched = 0
        self.offline_transitions = 0
        self.notifications = 0
        self.restart_requests = 0
        self.restarts_debounced = 0
        super().__init__(settings, spec)
        self.supervise(f"{self.name}.expired", self._listen)

    def progress(self) -> dict[str, Any]:
        return {
            "watched": self.watched,
            "offline_transitions": self.offline_transitions,
            "expired_notifications": self.notifications,
            "restart_requests": self.restart_requests,
            "restarts_debounced": self.restarts_debounced,
        }

    async def setup(self) -> None:
        self._scan_due = 0.0  # every (re)start begins with a full reconciliation scan

    async def tick(self) -> None:
        # Deadlines first: each heartbeat records when its key expires, so a quiet workspace is
        # found within a tick of its expiry, whenever Redis gets round to expiring the key.
        for workspace_id in await workspaces.due(self.redis, time.time()):
            await self._offline(workspace_id)
        if time.monotonic() >= self._scan_due:
            await self._reconcile()
            self._scan_due = time.monotonic() + self.settings.liveness_scan_interval_s
        await self._send_restarts()

    # -- the offline transition --------------------------------------------------------------

    async def _reconcile(self) -> None:
        """Every online workspace whose liveness key is gone goes offline."""
        scan = workspaces.OnlineScan(self.redis)
        async for workspace_id in scan.expired():
            await self._offline(workspace_id)
        self.watched = scan.watched

    async def _listen(self) -> None:
        """Expired-key notifications for liveness keys (fast path; the scan catches what this misses)."""
        db = self.redis.connection_pool.connection_kwargs.get("db", 0)
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(EXPIRED_CHANNEL.format(db=db))
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                key = message["data"].decode(errors="replace")
                workspace_id = key.removeprefix("workspace:").removesuffix(":alive")
                if key.endswith(":alive") and is_id(workspace_id):
                    self.notifications += 1
                    await self._offline(workspace_id)
        finally:
            await pubsub.aclose()

    async def _offline(self, workspace_id: str, reason: str = "heartbeat expired") -> None:
        try:
            raw = await self.redis.hgetall(keys.workspace(workspace_id))
        except redis.exceptions.ResponseError as exc:  # not a hash: this workspace's failure only
            error = str(exc)
            await self.items.run(workspace_id, lambda: _fail(error), version=error)
            return
        version = json.dumps(sorted((k.decode(errors="replace"), v.decode(errors="replace")) for k, v in raw.items()))
        outcome = await self.items.run(
            workspace_id, lambda: self._transition(workspace_id, raw, reason), version=version
        )
        if outcome.ok and outcome.value:
            self.offline_transitions += 1

    async def _transition(self, workspace_id: str, raw: dict[bytes, bytes], reason: str) -> bool:
        changed = await workspaces.mark_offline(
            self._mark_offline,
            workspace_id,
            raw,
            reason,
            max_len=self.settings.events_max_per_tenant,
            require_expired=True,
        )
        if changed:
            log.info("workspace %s is offline (%s)", workspace_id, reason)
        return changed

    # -- restart requests ----------------------------------------------------------------------

    async def _send_restarts(self) -> None:
        due = await self.redis.zrangebyscore(
            keys.WORKSPACES_RESTARTS, "-inf", time.time(), start=0, num=RESTARTS_PER_TICK
        )
        if not due:
            return
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=RESTART_TIMEOUT_S))
        await asyncio.gather(*(self._restart(raw.decode()) for raw in due))

    async def _restart(self, workspace_id: str) -> None:
        raw = await self.redis.hgetall(keys.workspace(workspace_id))
        fields = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()}
        tenant_id = fields.get("tenant_id", "")
        if not raw or not is_id(tenant_id):
            await self.redis.zrem(keys.WORKSPACES_RESTARTS, workspace_id)
            return
        stored_attempt = fields.get("restart_attempt", "")
        attempt = int(stored_attempt) if stored_attempt.isdigit() else 0
        if attempt == 0:
            debounce_ms = int(self.settings.restart_debounce_s * 1000)
            if not await self.redis.set(keys.workspace_restart_debounce(workspace_id), "1", nx=True, px=debounce_ms):
                self.restarts_debounced += 1
                await self.redis.zrem(keys.WORKSPACES_RESTARTS, workspace_id)
                return
        url = fields.get("restart_url") or None
        delivered = url is None or await self._post(url, workspace_id)
        if not delivered and attempt + 1 < RESTART_ATTEMPTS:
            await self.redis.hset(keys.workspace(workspace_id), "restart_attempt", attempt + 1)
            await self.redis.zadd(keys.WORKSPACES_RESTARTS, {workspace_id: time.time() + 2**attempt}, xx=True)
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.workspace(workspace_id), "restart_attempt")
            pipe.zrem(keys.WORKSPACES_RESTARTS, workspace_id)
            payload = {"workspace_id": workspace_id, "restart_url": url, "delivered": bool(url and delivered)}
            pipe.xadd(
                keys.events(tenant_id),
                events.entry("WORKSPACE_RESTART_REQUESTED", tenant_id, workspace_id, payload),
                maxlen=self.settings.events_max_per_tenant,
                approximate=True,
            )
            await pipe.execute()
        self.restart_requests += 1

    async def _post(self, url: str, workspace_id: str) -> bool:
        assert self._session is not None
        try:
            async with self._session.post(url, json={"workspace_id": workspace_id, "reason": "offline"}) as response:
                return 200 <= response.status < 300
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("restart request for workspace %s to %s failed: %s", workspace_id, url, exc)
            return False


async def _fail(error: str) -> None:
    raise TypeError(error)


LivenessMonitorActor = ray.remote(LivenessMonitor)


def liveness_monitor_actor(settings: Settings) -> Any:
    """Create or attach to the liveness monitor of `settings.ray_namespace`."""
    return LivenessMonitorActor.options(
        name=LIVENESS_SPEC.name, namespace=settings.ray_namespace, **ACTOR_OPTIONS
    ).remote(settings)
