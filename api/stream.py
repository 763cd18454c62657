"""`WS /ws`: a tenant's events, replayed from its stream after `last_event_id`, then live.

The connection registers with the hub before it reads the stream, so every event is either
read from the stream or queued by the hub; ids at or below the last one sent are dropped,
which removes the overlap at the seam and any redelivery. Close codes: 4400 bad request,
4401 no valid token (before any event, or later once the token is replaced or the tenant
deleted), 4429 over the tenant's `ws_connections` quota (counted in Redis over every API),
1013 fell behind (reconnect with `last_event_id`), storage down or full, or the broadcaster
not started yet, 1011 internal error.
"""

from __future__ import annotations

import asyncio
import hmac
import logging

import redis.asyncio as aioredis
import redis.exceptions
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from api.auth import bearer_token
from api.context import context
from api.hub import Client, Hub
from store import broadcast, connections, events, tenants
from store.connections import Admission
from store.events import EventKey
from store.quotas import QuotaExceeded

log = logging.getLogger(__name__)

PARAMETERS = ("token", "last_event_id")
REPLAY_PAGE = 500  # entries of a replay page at most ...
REPLAY_PAGE_BYTES = 1024 * 1024  # ... and about this many bytes, from the stream's mean entry
BAD_REQUEST, UNAUTHORIZED, OVER_QUOTA, TRY_AGAIN, INTERNAL = 4400, 4401, 4429, 1013, 1011
STORAGE_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
MAX_REASON_BYTES = 123  # the WebSocket limit for a close frame's reason


class Refused(Exception):
    """The connection is closed with `code` and `reason` before any event is sent."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Cursor:
    """The last stream id sent on one connection."""

    def __init__(self, key: EventKey) -> None:
        self.key = key

    @property
    def id(self) -> str:
        return f"{self.key[0]}-{self.key[1]}"

    def advance(self, key: EventKey) -> bool:
        """Move past `key`; False if it is not newer (already sent)."""
        if key <= self.key:
            return False
        self.key = key
        return True


async def needs_upgrade(request: HTTPConnection) -> JSONResponse:
    return JSONResponse({"error": "/ws is a WebSocket endpoint: connect with an Upgrade: websocket request"}, 426)


async def subscribe(websocket: WebSocket) -> None:
    hub = context(websocket).hub
    hub.connections += 1
    try:
        await _serve(websocket, hub)
    finally:
        hub.connections -= 1


async def _serve(websocket: WebSocket, hub: Hub) -> None:
    client: Client | None = None
    admitted: tuple[str, str] | None = None  # (tenant, member) counted in Redis
    code, reason = 0, ""
    store = context(websocket).redis
    try:
        tenant_id, digest, last_event_id = await _admit(websocket)
        limit = (await context(websocket).share(tenant_id))["ws_connections"]
        # Counted in Redis, so the quota holds over every API a tenant's clients reach.
        member = hub.new_member()
        admitted = tenant_id, member  # released even if the answer is lost: a release is harmless
        admission = await connections.admit(store, tenant_id, digest, member, limit)
        if admission is Admission.REFUSED_TOKEN:
            raise Refused(UNAUTHORIZED, "invalid token")
        if admission is Admission.OVER_QUOTA:
            raise Refused(OVER_QUOTA, str(QuotaExceeded("ws_connections", limit)))
        # The start is fixed before the handshake completes: whatever is appended after the
        # client sees it open reaches the client (read by the replay below, or queued by the hub
        # from the moment it registers, which is before the replay starts).
        cursor = Cursor(last_event_id or await _newest(websocket, tenant_id))
        client = hub.register(tenant_id, cursor.key, member, digest)
        await websocket.accept()
        code, reason = await _until_closed(websocket, client, cursor)
    except Refused as refused:
        code, reason = refused.code, refused.reason
    except STORAGE_ERRORS as exc:
        log.warning("event stream unavailable: %s", exc)
        code, reason = TRY_AGAIN, "event store unavailable; reconnect later"
    except redis.exceptions.OutOfMemoryError:
        code, reason = TRY_AGAIN, "the store is full; reconnect later"
    except (WebSocketDisconnect, OSError):
        return
    except Exception:
        log.exception("WebSocket stream failed")
        code, reason = INTERNAL, "internal error"
    finally:
        if client is not None:
            hub.close(client)
        if admitted is not None:
            await _release(hub, store, *admitted)
    if code:
        await _close(websocket, code, reason)


async def _release(hub: Hub, store: aioredis.Redis, tenant_id: str, member: str) -> None:
    try:
        async with hub.counting:
            await connections.release(store, tenant_id, member)
    except redis.exceptions.RedisError as exc:  # it stops counting when its lease runs out
        log.warning("could not release a WebSocket's count: %s", exc)


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    """Close with a code the client can read (a refusal is accepted first, so it is a close, not a 403).

    Against a client that has stopped reading this waits for its socket; the kernel ends
    that wait (TCP_USER_TIMEOUT on the API's socket), and the hub no longer holds its events.
    """
    reason = reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore")
    try:
        if websocket.client_state is WebSocketState.CONNECTING:
            await websocket.accept()
        await websocket.close(code, reason)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass  # the client left first


async def _admit(websocket: WebSocket) -> tuple[str, str, EventKey | None]:
    """The tenant the token is filed under, the token's digest and the parsed `last_event_id`;
    raises Refused otherwise. The tenant's own record confirms the token as the connection is
    counted (store.connections.admit)."""
    params = websocket.query_params
    for name in params:
        if name not in PARAMETERS:
            raise Refused(BAD_REQUEST, f"unknown query parameter {name[:40]!r}; allowed: {', '.join(PARAMETERS)}")
        if len(params.getlist(name)) > 1:
            raise Refused(BAD_REQUEST, f"query parameter {name!r} given more than once")
    header, query = bearer_token(websocket), params.get("token")
    if header is not None and query is not None and not hmac.compare_digest(header.encode(), query.encode()):
        raise Refused(UNAUTHORIZED, "the header and query tokens differ")
    token = header or query
    if token is None:
        raise Refused(UNAUTHORIZED, "missing or invalid tenant token")
    digest = tenants.token_digest(token)
    tenant_id = await tenants.claimed_tenant(context(websocket).redis, digest)
    if tenant_id is None:
        raise Refused(UNAUTHORIZED, "invalid token")
    raw = params.get("last_event_id")
    last = events.parse_id(raw) if raw is not None else None
    if raw is not None and last is None:
        raise Refused(BAD_REQUEST, "last_event_id must be a stream id such as 1700000000000-0")
    # Until the broadcaster has its positions, events appended now might never be delivered live.
    ctx = context(websocket)
    if not ctx.own_reader and not await broadcast.started(ctx.redis, ctx.namespace):
        raise Refused(TRY_AGAIN, "the broadcaster is starting; reconnect shortly")
    return tenant_id, digest, last


async def _newest(websocket: WebSocket, tenant_id: str) -> EventKey:
    """Where a live-only connection starts: after the newest event there is now."""
    newest = await events.head(context(websocket).redis, tenant_id)
    return (events.parse_id(newest) if newest else None) or (0, 0)


async def _until_closed(websocket: WebSocket, client: Client, cursor: Cursor) -> tuple[int, str]:
    """Stream until the client leaves (0, "") or the stream must close it (code, reason)."""
    sending = asyncio.ensure_future(_send(websocket, client, cursor))
    listening = asyncio.ensure_future(_until_disconnect(websocket))
    try:
        done, _ = await asyncio.wait((sending, listening), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sending, listening):
            task.cancel()
        await asyncio.gather(sending, listening, return_exceptions=True)
    if sending in done:
        return sending.result()
    return 0, ""


async def _until_disconnect(websocket: WebSocket) -> None:
    """Clients send nothing; read (and drop) frames until the connection ends."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return


async def _send(websocket: WebSocket, client: Client, cursor: Cursor) -> tuple[int, str]:
    await _replay(websocket, client, cursor)
    hub = context(websocket).hub
    while True:
        await client.ready.wait()
        if client.revoked is not None:
            return UNAUTHORIZED, client.revoked
        if client.overflowed:
            return TRY_AGAIN, f"more than {client.limit} events behind; reconnect with last_event_id={cursor.id}"
        for key, text in client.take():
            if cursor.advance(key):
                await websocket.send_text(text)
                hub.delivered += 1


async def _replay(websocket: WebSocket, client: Client, cursor: Cursor) -> None:
    """Send what the stream holds after the cursor, until a page ends short with no overflow.

    An overflow while replaying loses nothing: the dropped events are in the stream, and the
    next page reads them.
    """
    ctx = context(websocket)
    count = await events.page_size(ctx.redis, client.tenant_id, REPLAY_PAGE_BYTES, REPLAY_PAGE)
    while client.revoked is None:  # a revoked client closes (see _send) instead of reading on
        page = await events.after(ctx.redis, client.tenant_id, cursor.id, count)
        for stream_id, fields in page:
            key = events.parse_id(stream_id)
            if key is None or not cursor.advance(key):
                continue
            client.newest = max(client.newest, key)  # the hub need not queue what replay sent
            text = events.envelope(client.tenant_id, stream_id, fields)
            if text is not None:
                await websocket.send_text(text)
                ctx.hub.delivered += 1
        if len(page) < count:
            if not client.overflowed:
                return
            ctx.hub.readmit(client)
