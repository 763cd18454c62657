"""Liveness monitor: workspaces whose heartbeat key expired go offline, once, and get one restart request.

Two ways in, one transition: a helper loop listens to Redis expired-key notifications, and
the tick runs a reconciliation scan of the online index (at every start and every
`LIVENESS_SCAN_INTERVAL_S`) that catches any expiry missed while Redis or the monitor was
down. Both call the same compare-and-set (`store.workspaces.mark_offline`), which queues
the restart request in Redis; the tick then sends queued requests, debounced per workspace.

With LIVENESS_REPLICAS, each replica watches the workspaces of the shards it holds
(ShardOwner): their deadlines, their scan and their restart requests. A notification for
another replica's workspace is left to it. The transition is a compare-and-set and the
restart request is debounced in Redis, so a replica that lost a shard and has not noticed
yet can neither take a workspace offline twice nor send its restart twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from actors.egress import EgressError, egress_for, public_url
from actors.runtime import metrics
from actors.runtime.shards import ShardOwner
from actors.runtime.subsystem import Every, Subsystem, SubsystemSpec
from settings import Settings
from store import workspaces
from store.client import connect
from store.keys import shard_of
from store.records import decode_lenient, is_id
from store.secrets import SecretBox

log = logging.getLogger(__name__)

LIVENESS_SPEC = SubsystemSpec("liveness-monitor", interval_s=1.0)
RESTARTS_PER_TICK = 32
RESTART_TIMEOUT_S = 5.0
RESTART_ATTEMPTS = 5  # then the request is given up, and the event says so


class LivenessMonitor(Subsystem):
    spec = LIVENESS_SPEC

    @classmethod
    def replicas(cls, settings: Settings) -> int:
        return settings.liveness_replicas

    def __init__(self, settings: Settings, **runtime: Any) -> None:
        super().__init__(settings, **runtime)
        self.redis = self.own(connect(settings.redis_url, timeout_s=5.0))
        self._scan_every = Every(settings.liveness_scan_interval_s, self.clock)
        self.egress = self.own(egress_for(settings))
        self.box = SecretBox(settings.channel_secret_key or "")
        self.watched = 0
        self.offline_transitions = 0
        self.notifications = 0
        self.restart_requests = 0
        self.restarts_debounced = 0
        self.shards = ShardOwner(
            self.redis, settings.ray_namespace, self.spec.group_name, self.name, lease_s=settings.shard_lease_s
        )
        self.supervise(f"{self.name}.expired", self._listen)

    async def open(self) -> None:
        await self.egress.open()

    async def close(self) -> None:
        await self.shards.leave()

    def progress(self) -> dict[str, Any]:
        return {
            "watched": self.watched,
            "offline_transitions": self.offline_transitions,
            "expired_notifications": self.notifications,
            "restart_requests": self.restart_requests,
            "restarts_debounced": self.restarts_debounced,
            "shards": len(self.shards.held()),
        }

    async def setup(self) -> None:
        self._scan_every.reset()  # every (re)start begins with a full reconciliation scan

    async def tick(self) -> None:
        await self.shards.refresh()
        owned = self.shards.owned()
        # Deadlines first: each heartbeat records when its key expires, so a quiet workspace is
        # found within a tick of its expiry, whenever Redis gets round to expiring the key.
        for workspace_id in await workspaces.due(self.redis, time.time(), shards=owned):
            await self._offline(workspace_id)
        if self._scan_every.due():
            await self._reconcile(owned)
        await self._send_restarts(owned)

    # -- the offline transition --------------------------------------------------------------

    async def _reconcile(self, owned: list[int]) -> None:
        """Every online workspace (of the shards it holds) whose liveness key is gone goes offline."""
        scan = workspaces.OnlineScan(self.redis, shards=owned)
        async for workspace_id in scan.expired():
            await self._offline(workspace_id)
        self.watched = scan.watched

    async def _listen(self) -> None:
        """Expired-key notifications for liveness keys (fast path; the scan catches what this misses)."""
        async for workspace_id in workspaces.expired(self.redis):
            if shard_of(workspace_id) not in self.shards.owned():
                continue  # another replica's: it finds the deadline on its own tick
            self.notifications += 1
            await self._offline(workspace_id)

    async def _offline(self, workspace_id: str, reason: str = "heartbeat expired") -> None:
        (raw,) = await workspaces.read(self.redis, [workspace_id])
        outcome = await self.items.run_on(
            workspace_id, raw, lambda r: self._transition(workspace_id, r, reason), version=workspaces.version
        )
        if outcome.ok and outcome.value:
            self.offline_transitions += 1
            metrics.work().offline_transitions.inc(tags={"subsystem": self.name})

    async def _transition(self, workspace_id: str, raw: dict[bytes, bytes], reason: str) -> bool:
        changed = await workspaces.mark_offline(
            self.redis, workspace_id, raw, reason, max_len=self.settings.events_max_per_tenant, require_expired=True
        )
        if changed:
            log.info("workspace %s is offline (%s)", workspace_id, reason)
        return changed

    # -- restart requests ----------------------------------------------------------------------

    async def _send_restarts(self, owned: list[int]) -> None:
        due = await workspaces.restarts_due(self.redis, time.time(), RESTARTS_PER_TICK, shards=owned)
        await asyncio.gather(*(self._restart(workspace_id) for workspace_id in due))

    async def _restart(self, workspace_id: str) -> None:
        (raw,) = await workspaces.read(self.redis, [workspace_id])
        fields = decode_lenient(raw) if isinstance(raw, dict) else {}
        tenant_id = fields.get("tenant_id", "")
        if not is_id(tenant_id):
            await workspaces.drop_restart(self.redis, workspace_id)
            return
        stored_attempt = fields.get("restart_attempt", "")
        attempt = int(stored_attempt) if stored_attempt.isdigit() else 0
        if attempt == 0 and not await workspaces.debounce_restart(
            self.redis, workspace_id, self.settings.restart_debounce_s
        ):
            self.restarts_debounced += 1
            return
        url = fields.get("restart_url") or None
        delivered = url is None or await self._post(url, workspace_id, raw)
        if not delivered and attempt + 1 < RESTART_ATTEMPTS:
            await workspaces.retry_restart(self.redis, workspace_id, attempt + 1, time.time() + 2**attempt)
            return
        await workspaces.restart_requested(
            self.redis,
            workspace_id,
            tenant_id,
            url,
            bool(url and delivered),
            max_len=self.settings.events_max_per_tenant,
        )
        self.restart_requests += 1

    async def _post(self, url: str, workspace_id: str, raw: dict[bytes, bytes]) -> bool:
        """POST the restart request (with the workspace's bearer token); whether it was taken (2xx)."""
        try:
            token = workspaces.target(workspace_id, raw, self.box).auth_token
        except ValueError as exc:  # a corrupt record: the request cannot be made as it should
            log.warning("restart request for workspace %s not sent: %s", workspace_id, exc)
            return False
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = {"workspace_id": workspace_id, "reason": "offline"}
        try:
            reply = await self.egress.request("POST", url, json_body=body, headers=headers, timeout_s=RESTART_TIMEOUT_S)
        except EgressError as exc:
            log.warning("restart request for workspace %s to %s failed: %s", workspace_id, public_url(url), exc)
            return False
        return reply.ok
