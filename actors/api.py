"""API actor: uvicorn serving the Starlette app inside an async actor, itself supervised."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import Any

import aiohttp
import ray
import redis.exceptions
import uvicorn

from actors.channels import telegram
from actors.channels.chat import ChatApiError
from actors.egress import egress_for
from actors.runtime import metrics
from actors.runtime.handles import ACTOR_UNAVAILABLE, API_ACTOR, HEALTH_ACTOR, NamedActor, RemoteError
from actors.runtime.health import HEALTH_KILL_AFTER_S
from actors.runtime.subsystem import Subsystem, SubsystemSpec
from api.app import create_app
from api.backend import (
    LIVENESS_DEADLINE_S,
    Encoded,
    FaultRefused,
    NotQuarantined,
    Unavailable,
    UnknownSubsystem,
)
from api.context import ApiContext
from api.listener import listening_socket, tcp_options
from api.recent import Recent
from settings import NODE_HOST, Settings
from store import connections, events
from store.client import connect, memory

log = logging.getLogger(__name__)

# A 2 s interval leaves room for a slow self-probe (2 s deadline) on a loaded machine.
API_SPEC = SubsystemSpec("api", interval_s=2.0, actor=API_ACTOR)
SELF_PROBE_TIMEOUT_S = 2.0
WS_MAX_FRAME_BYTES = 64 * 1024  # clients only send control frames
HEALTH_WATCH_INTERVAL_S = 1.0
# /admin/liveness: fetched at most this often; never served older than LIVENESS_MAX_AGE_S.
LIVENESS_FRESH_S = 0.25
LIVENESS_MAX_AGE_S = 1.0
STORE_DEADLINE_S = 1.0
# API_PER_NODE: each API reads its clients' tenants' streams, blocking up to READ_BLOCK_S;
# a tick finds the reader stuck if one read has not returned for READER_STALE_S.
READ_BLOCK_S = 1.0
READ_COUNT = 1000
READER_STALE_S = 10.0
NEW_TENANTS_S = 0.005  # new tenants' first clients gathered before a read is cut short for them
SCREEN_EVERY_S = 5.0  # a tenant whose events key is not a stream is looked at again this often
# How often this API's WebSockets count again for their tenants, and their tokens are checked.
RENEW_S = 2.0


class PlatformBackend:
    """The HTTP layer's view of the platform: registry calls with deadlines, fault routing."""

    def __init__(self, settings: Settings, api: ApiActor) -> None:
        self.settings = settings
        self.health = NamedActor(HEALTH_ACTOR, settings.ray_namespace)
        self.egress = egress_for(settings)
        self._api = api
        self._actors: dict[tuple[str, str], NamedActor] = {}
        # The liveness body is built and encoded at most every LIVENESS_FRESH_S, however many poll it.
        self._liveness = Recent(self._fetch_liveness, fresh_s=LIVENESS_FRESH_S, max_age_s=LIVENESS_MAX_AGE_S)
        self._quarantine = Recent(self._fetch_quarantine, fresh_s=LIVENESS_MAX_AGE_S, max_age_s=2 * LIVENESS_MAX_AGE_S)

    async def refuse_url(self, url: str) -> str | None:
        return await self.egress.check_url(url)

    async def verify_bot(self, token: str) -> str | None:
        session = self._api.chat_session
        assert session is not None
        try:
            await telegram.get_me(session, self.settings.telegram_api_base, token, LIVENESS_DEADLINE_S)
        except ChatApiError as exc:
            if exc.revoked or not exc.transient:
                return f"Telegram refused this bot token ({exc})"
            raise Unavailable(f"Telegram did not answer getMe: {exc}") from None
        return None

    @property
    def draining(self) -> bool:
        return self._api.is_draining

    async def _health(self, method: str, *args: Any) -> Any:
        try:
            return await self.health.call(method, *args, timeout_s=LIVENESS_DEADLINE_S)
        except ACTOR_UNAVAILABLE as exc:
            raise Unavailable(f"health registry did not answer within {LIVENESS_DEADLINE_S:g} s") from exc
        except RemoteError as exc:  # for example, still loading its state from Redis
            raise Unavailable(f"health registry: {exc.cause}") from None

    def _actor(self, name: str, namespace: str | None) -> NamedActor:
        """One handle per actor, kept: looking a name up asks Ray's control service, synchronously."""
        key = (name, namespace or self.settings.ray_namespace)
        if key not in self._actors:
            self._actors[key] = NamedActor(*key)
        return self._actors[key]

    async def liveness(self) -> Encoded:
        """The encoded /admin/liveness body, at most LIVENESS_MAX_AGE_S old (its `checked_at` says when)."""
        return await self._liveness.get()

    async def _fetch_liveness(self) -> Encoded:
        # The HealthActor encodes its snapshot: this process, which serves every request, only splices.
        snapshot, store = await asyncio.gather(self._health("snapshot_json"), self._store())
        if snapshot is None:
            # An empty, unloaded registry must not read as "nothing expected".
            raise Unavailable("health registry is still loading its state from Redis")
        head = json.dumps({"store": store, "draining": self.draining}, separators=(",", ":")).encode()
        return Encoded.of(head[:-1] + b"," + snapshot[1:])

    async def _store(self) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(memory(self._api.redis), STORE_DEADLINE_S)
        except (TimeoutError, redis.exceptions.RedisError, OSError) as exc:
            return {"reachable": False, "error": type(exc).__name__}

    async def readiness(self) -> dict[str, Any]:
        return await self._health("readiness")

    async def quarantine(self) -> dict[str, Any]:
        return await self._quarantine.get()

    async def _fetch_quarantine(self) -> dict[str, Any]:
        """Ask each subsystem that reports quarantined items for them, all at once, each with a deadline."""
        holders = await self._health("quarantine_holders")

        async def items_of(holder: dict[str, Any]) -> list[dict[str, Any]]:
            if holder["name"] == self._api.name:
                return await self._api.quarantine_items()
            target = self._actor(holder["actor"], holder.get("namespace"))
            return await target.call("quarantine_items", timeout_s=LIVENESS_DEADLINE_S)

        answers = await asyncio.gather(*(items_of(h) for h in holders), return_exceptions=True)
        items, unreachable = [], []
        for holder, answer in zip(holders, answers, strict=True):
            if isinstance(answer, BaseException):
                log.warning("quarantine of %s not read: %s", holder["name"], answer)
                unreachable.append(holder["name"])
                continue
            items += [{"subsystem": holder["name"], **item} for item in answer]
        return {"items": items, "unreachable": unreachable}

    async def release(self, subsystem: str, key: str) -> None:
        if subsystem == self._api.name:
            released = await self._api.release_item(key)
        else:
            expectation = await self._health("expectation", subsystem)
            if expectation is None or not expectation.get("actor"):
                raise UnknownSubsystem(subsystem)
            target = self._actor(expectation["actor"], expectation.get("namespace"))
            try:
                released = await target.call("release_item", key, timeout_s=LIVENESS_DEADLINE_S)
            except RemoteError as exc:
                raise FaultRefused(str(exc.cause) or "refused") from None
            except ACTOR_UNAVAILABLE as exc:
                raise Unavailable(f"subsystem {subsystem} did not answer within {LIVENESS_DEADLINE_S:g} s") from exc
        self._quarantine.forget()
        if not released:
            raise NotQuarantined(key)

    async def inject_fault(self, subsystem: str, fault: str, seconds: float | None) -> None:
        if subsystem == self._api.name:
            try:
                await self._api.inject_fault(fault, seconds)
            except (PermissionError, ValueError) as exc:
                raise FaultRefused(str(exc)) from None
            return
        expectation = await self._health("expectation", subsystem)
        if expectation is None or not expectation.get("actor"):
            raise UnknownSubsystem(subsystem)
        target = self._actor(expectation["actor"], expectation.get("namespace"))
        try:
            # A `block` or `exit` fault may take the target down before it answers.
            await target.call("inject_fault", fault, seconds, timeout_s=LIVENESS_DEADLINE_S)
        except RemoteError as exc:
            raise FaultRefused(str(exc.cause) or "refused") from None
        except ACTOR_UNAVAILABLE as exc:
            if fault in ("raise", "hang"):
                raise Unavailable(f"subsystem {subsystem} did not answer within {LIVENESS_DEADLINE_S:g} s") from exc


class ApiActor(Subsystem):
    """Serves the API; its tick is a real request through its own HTTP stack.

    It also watches the HealthActor: silent for HEALTH_KILL_AFTER_S, it is killed for Ray to
    restart, at most once per that period.

    With API_PER_NODE there is one on every node, each listening on API_HOST:API_PORT of its
    own node (SO_REUSEPORT, so several nodes on one machine share the port), and each reads
    the streams of the tenants its own WebSocket clients follow: no broadcaster, and no one
    process carries every tenant's events. Its tick also checks that this reader comes round.
    """

    spec = API_SPEC

    def __init__(self, settings: Settings, admin_token: str, **runtime: Any) -> None:
        super().__init__(settings, **runtime)
        self.is_draining = False
        self.backend = PlatformBackend(settings, self)
        self.redis = self.own(connect(settings.redis_url))
        context = ApiContext.build(settings, backend=self.backend, redis=self.redis, admin_token=admin_token)
        self.app = create_app(context)
        self.hub = context.hub
        self.host = ray.util.get_node_ip_address() if settings.api_host == NODE_HOST else settings.api_host
        self.base_url = settings.api_url_on(self.host)
        self.health_kills = 0
        self._exported = metrics.Exported()
        self._session: aiohttp.ClientSession | None = None
        self.chat_session: aiohttp.ClientSession | None = None
        self._server: uvicorn.Server | None = None
        self._probe_url = self.base_url
        self.events_read = 0
        self.renewals_failed = 0  # WebSocket count renewals failed in a row (see _renew_connections)
        self.malformed = 0
        self._reading_since: float | None = None  # when its read under way began
        self.supervise(f"{self.name}.http", self._serve)
        self.supervise(f"{self.name}.health-watch", self._watch_health)
        self.supervise(f"{self.name}.ws-count", self._renew_connections)
        if settings.api_per_node:
            self.stream_redis = self.own(connect(settings.redis_url, timeout_s=READ_BLOCK_S + 2.0))
            self.read_count = max(1, min(READ_COUNT, settings.ws_queue_size // 4))
            self.supervise(f"{self.name}.events", self._read_events)

    async def open(self) -> None:
        self._session = self.own(aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SELF_PROBE_TIMEOUT_S)))
        self.chat_session = self.own(aiohttp.ClientSession())  # Telegram's getMe when a bot is bound

    async def _serve(self) -> None:
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
            # The sans-I/O implementation waits for the socket to drain on every send (so a
            # client that stops reading fills its queue) and closes peers that miss a pong.
            ws="websockets-sansio",
            ws_max_size=WS_MAX_FRAME_BYTES,
            ws_ping_interval=self.settings.ws_ping_interval_s,
            ws_ping_timeout=self.settings.ws_ping_timeout_s,
        )
        server = self._server = uvicorn.Server(config)
        sockets = [self._listen()]
        if self.settings.api_per_node:
            # Its own self-probe must reach this process, not whichever shares the port.
            sockets.append(listening_socket("127.0.0.1", 0, user_timeout_s=SELF_PROBE_TIMEOUT_S))
            self._probe_url = f"http://127.0.0.1:{sockets[1].getsockname()[1]}"
        try:
            await server.serve(sockets=sockets)
        except asyncio.CancelledError:
            if server.started:  # stopping: WebSocket clients get 1012 (service restart), open requests end
                await server.shutdown(sockets=sockets)
            raise
        finally:
            for sock in sockets:
                sock.close()
        raise RuntimeError("HTTP server stopped")

    def _listen(self) -> socket.socket:
        settings = self.settings
        # A peer that has not taken our data for a ping interval plus its timeout is gone.
        user_timeout_s = settings.ws_ping_interval_s + settings.ws_ping_timeout_s
        try:
            return listening_socket(
                self.host, settings.api_port, user_timeout_s=user_timeout_s, reuse_port=settings.api_per_node
            )
        except OSError as exc:
            raise RuntimeError(f"cannot serve on {self.base_url} (API_HOST/API_PORT): {exc}") from None

    async def setup(self) -> None:
        # The first self-probe waits for the server to listen, instead of failing on a race.
        deadline = time.monotonic() + SELF_PROBE_TIMEOUT_S * 5
        while not (self._server is not None and self._server.started):
            if time.monotonic() > deadline:
                raise RuntimeError(f"HTTP server not listening on {self.base_url}")
            await asyncio.sleep(0.05)

    async def tick(self) -> None:
        assert self._session is not None
        async with self._session.get(f"{self._probe_url}/livez") as response:
            if response.status != 200:
                raise RuntimeError(f"self-probe GET /livez answered {response.status}")
        # A read stuck past its block and its socket timeout is a wedged reader (a reader backing
        # off because Redis is down is not: that is Redis's state, shown by the store's).
        if self._reading_since is not None and (stuck := time.monotonic() - self._reading_since) > READER_STALE_S:
            raise RuntimeError(f"the event reader's read has not returned for {stuck:.0f} s")
        self._export_metrics()

    def _export_metrics(self) -> None:
        """The HTTP layer counts in plain numbers; its metrics go out from here, every tick."""
        work, tags, hub = metrics.work(), {"subsystem": self.name}, self.hub
        work.websocket_clients.set(float(hub.clients), tags=tags)
        if grown := self._exported.increase("delivered", hub.delivered):
            work.events_delivered.inc(grown, tags=tags)
        if grown := self._exported.increase("appended", hub.appended):
            work.events_appended.inc(grown, tags=tags)

    def progress(self) -> dict[str, Any]:
        return {
            "url": self.base_url,
            "draining": self.is_draining,
            "health_kills": self.health_kills,
            "ws_clients": self.hub.clients,
            "ws_connections": self.hub.connections,
            "ws_overflows": self.hub.overflows,
            "ws_count_renewals_failed": self.renewals_failed,
            **({"events_read": self.events_read, "malformed": self.malformed} if self.settings.api_per_node else {}),
        }

    async def _watch_health(self) -> None:
        health = self.backend.health
        last_answer = time.monotonic()
        last_kill = 0.0
        while True:
            await asyncio.sleep(HEALTH_WATCH_INTERVAL_S)
            try:
                await health.call("ping", timeout_s=LIVENESS_DEADLINE_S)
                last_answer = time.monotonic()
                continue
            except ACTOR_UNAVAILABLE as exc:
                log.warning("health registry did not answer: %s", type(exc).__name__)
            now = time.monotonic()
            if now - last_answer > HEALTH_KILL_AFTER_S and now - last_kill > HEALTH_KILL_AFTER_S:
                if health.kill(restart=True):
                    self.health_kills += 1
                    last_kill = now
                    log.error("health registry silent for %.0f s; killed for restart", now - last_answer)

    async def _renew_connections(self) -> None:
        """Every RENEW_S this API's WebSockets count for another lease in Redis (their tenant's
        `ws_connections` quota holds over every API), and those whose token no longer opens
        their tenant (replaced, or the tenant deleted, through any API) are closed 4401."""
        while True:
            await asyncio.sleep(RENEW_S)
            try:
                async with self.hub.counting:
                    revoked, failed = await connections.renew(self.redis, self.hub.held())
            except redis.exceptions.RedisError as exc:  # tried again next round; liveness shows the count
                self.renewals_failed += 1
                log.warning("%s: WebSocket counts not renewed: %s", self.name, exc)
                continue
            self.renewals_failed = self.renewals_failed + 1 if failed else 0
            for tenant_id, error in failed.items():
                log.warning("%s: WebSocket counts of tenant %s not renewed: %s", self.name, tenant_id, error)
            for tenant_id, found in revoked.items():
                reason = "the tenant was deleted" if found.deleted else "the tenant's token was replaced"
                self.hub.revoke(tenant_id, reason, found.members)

    async def connections(self) -> list[dict[str, Any]]:
        """Each open HTTP or WebSocket connection: its peer and TCP options (see api.listener)."""
        server = self._server
        if server is None:
            return []
        found = []
        for protocol in list(server.server_state.connections):
            transport = getattr(protocol, "transport", None)
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is None or transport.is_closing():
                continue
            found.append({"peer": list(transport.get_extra_info("peername") or ()), **tcp_options(sock)})
        return found

    async def _read_events(self) -> None:
        """API_PER_NODE: read the streams of the tenants this API's clients follow and queue what
        comes on them. A tenant is read from the oldest point any of its clients has when it is
        first followed (the hub drops, per client, what it already has), but never from beyond
        its stream's newest event (a client's `last_event_id` may name one that does not exist
        yet), so a client misses nothing between its replay and the live events. A tenant that
        gets its first client cuts a read short (after NEW_TENANTS_S, so that a burst of new
        clients costs one) so that it is read at once. A tenant whose events key is not a
        stream is left out (and looked at again every SCREEN_EVERY_S): it must not stop the others.
        """
        reader = events.StreamReader(self.stream_redis)
        hub = self.hub
        positions: dict[str, str] = {}
        bad: set[str] = set()
        screened_at = time.monotonic()
        reading: asyncio.Future[list[tuple[str, events.Entries]]] | None = None
        changed: asyncio.Future[bool] | None = None
        try:
            while True:
                hub.followed_changed.clear()
                if bad and time.monotonic() - screened_at > SCREEN_EVERY_S:
                    bad, screened_at = set(), time.monotonic()
                followed = {t: key for t, key in hub.followed().items() if t not in bad}
                positions = {t: p for t, p in positions.items() if t in followed}
                if new := [t for t in followed if t not in positions]:
                    heads = await events.heads(self.stream_redis, new)
                    for tenant_id in new:
                        start = min(followed[tenant_id], events.parse_id(heads[tenant_id]) or (0, 0))
                        positions[tenant_id] = f"{start[0]}-{start[1]}"
                reading = asyncio.ensure_future(
                    reader.read(positions, count=self.read_count, block_ms=int(READ_BLOCK_S * 1000))
                )
                changed = asyncio.ensure_future(hub.followed_changed.wait())
                self._reading_since = time.monotonic()
                await asyncio.wait((reading, changed), return_when=asyncio.FIRST_COMPLETED)
                self._reading_since = None
                if not reading.done():  # a new tenant to read: read again with it
                    await asyncio.sleep(NEW_TENANTS_S)
                    reading.cancel()
                    reader.cancel()
                    await asyncio.gather(reading, return_exceptions=True)
                    continue
                changed.cancel()
                try:
                    found = reading.result()
                except redis.exceptions.ResponseError as exc:
                    if "WRONGTYPE" not in str(exc):
                        raise
                    kinds = await events.kinds(self.stream_redis, sorted(positions))
                    bad |= {t for t, kind in kinds.items() if kind not in ("stream", "none")}
                    log.warning("%s: events keys that are not streams left out: %s", self.name, sorted(bad))
                    continue
                self._publish(found, positions)
        finally:
            self._reading_since = None
            for task in (reading, changed):
                if task is not None:
                    task.cancel()
            reader.cancel()

    def _publish(self, found: list[tuple[str, events.Entries]], positions: dict[str, str]) -> None:
        batch: dict[str, list[tuple[str, str]]] = {}
        for tenant_id, entries in found:
            if tenant_id not in positions or not entries:
                continue
            batch[tenant_id], malformed = events.envelopes(tenant_id, entries)
            self.malformed += len(malformed)
            positions[tenant_id] = entries[-1][0].decode()
            self.events_read += len(entries)
        self.hub.publish(batch)

    async def deliver(self, batch: dict[str, list[tuple[str, str]]]) -> int:
        """The broadcaster's delivery: queue each tenant's events on its clients; returns the client count."""
        self.hub.publish(batch)
        return self.hub.clients

    async def set_draining(self, draining: bool) -> None:
        self.is_draining = draining
