"""WebSocket subscribers for tests: real `websockets` clients of WS /ws, and an event writer."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import websockets
from redis.cluster import RedisCluster
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from store import events, keys
from tests.support import sync_redis


def ws_url(http_url: str, **params: str) -> str:
    query = f"?{urlencode(params)}" if params else ""
    return http_url.replace("http://", "ws://", 1) + "/ws" + query


def id_key(stream_id: str) -> tuple[int, int]:
    ms, seq = stream_id.split("-")
    return int(ms), int(seq)


@dataclass
class Subscriber:
    """Reads WS /ws until it holds `expect` events; with `reconnect`, resumes from its last id after a close."""

    url: str
    token: str
    reconnect: bool = False
    last_event_id: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)
    closes: list[tuple[int | None, str]] = field(default_factory=list)
    connections: int = 0
    connected_at: list[float] = field(default_factory=list)  # when each connection opened (time.time())
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ids(self) -> list[str]:
        return [e["id"] for e in self.events]

    async def connect(self) -> ClientConnection:
        params = {"last_event_id": self.last_event_id} if self.last_event_id else {}
        connection = await connect(
            ws_url(self.url, **params), additional_headers={"Authorization": f"Bearer {self.token}"}, open_timeout=5
        )
        self.connections += 1
        self.connected_at.append(time.time())
        self.opened.set()
        return connection

    async def run(self, expect: int, timeout_s: float) -> Subscriber:
        deadline = time.monotonic() + timeout_s
        while len(self.events) < expect:
            try:
                connection = await asyncio.wait_for(self.connect(), max(0.1, deadline - time.monotonic()))
            except (OSError, websockets.InvalidHandshake, TimeoutError):
                if not self.reconnect or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)  # the API is restarting
                continue
            try:
                await asyncio.wait_for(self._read(connection, expect), max(0.1, deadline - time.monotonic()))
            except websockets.ConnectionClosed as closed:
                self.closes.append(
                    (closed.rcvd.code if closed.rcvd else None, closed.rcvd.reason if closed.rcvd else "")
                )
                if not self.reconnect:
                    raise
            finally:
                await connection.close()
        return self

    async def _read(self, connection: ClientConnection, expect: int) -> None:
        while len(self.events) < expect:
            event = json.loads(await connection.recv())
            self.events.append(event)
            self.received_at.append(time.time())
            self.last_event_id = event["id"]


async def refused(
    url: str, *, headers: dict[str, str] | None = None, query: str = "", **params: str
) -> tuple[int | None, str, list[str]]:
    """Connect, read until closed; the close code, reason and any messages received first."""
    received: list[str] = []
    target = ws_url(url, **params) + (f"?{query}" if query else "")
    async with connect(target, additional_headers=headers or {}, open_timeout=5) as connection:
        try:
            while True:
                received.append(str(await asyncio.wait_for(connection.recv(), 10)))
        except websockets.ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
            return code, closed.rcvd.reason if closed.rcvd else "", received
    raise AssertionError("unreachable")


MAX_LEN = 100_000  # the platform's default EVENTS_MAX_PER_TENANT


class Writer:
    """Appends events straight to tenant streams (as the platform's writers do), pipelined."""

    def __init__(self, redis_url: str) -> None:
        self.redis = sync_redis(redis_url)
        self.cluster = isinstance(self.redis, RedisCluster)
        self.append = self.redis.register_script(events.APPEND.source)

    def write(self, tenant_id: str, count: int, *, start: int = 0, pad: int = 0) -> list[str]:
        return self.write_all([tenant_id], count, start=start, pad=pad)

    def write_all(self, tenant_ids: list[str], count: int, *, start: int = 0, pad: int = 0) -> list[str]:
        """`count` events for each tenant, interleaved, in one round trip; their ids in write order."""
        with self.redis.pipeline(transaction=False) as pipe:
            for n in range(start, start + count):
                payload = {"n": n, "pad": "x" * pad} if pad else {"n": n}
                for tenant_id in tenant_ids:
                    fields = events.flat(events.entry("TEST_EVENT", tenant_id, None, payload))
                    stream_keys = [keys.events(tenant_id), keys.events_size(tenant_id)]
                    if self.cluster:  # (a Cluster pipeline takes scripts as EVAL only)
                        pipe.execute_command("EVAL", events.APPEND.source, 2, *stream_keys, MAX_LEN, *fields)
                    else:
                        self.append(keys=stream_keys, args=[MAX_LEN, *fields], client=pipe)
            return [raw.decode() for raw in pipe.execute()]

    async def paced(self, tenant_ids: list[str], total: int, batch: int, pause_s: float, **kw: Any) -> list[list[str]]:
        """`total` events per tenant in interleaved batches; returns each tenant's ids in order."""
        written: list[list[str]] = [[] for _ in tenant_ids]
        for start in range(0, total, batch):
            for i, tenant_id in enumerate(tenant_ids):
                n = min(batch, total - start)
                written[i] += await asyncio.to_thread(self.write, tenant_id, n, start=start, **kw)
            await asyncio.sleep(pause_s)
        return written


class StalledClient:
    """A WebSocket client that stops reading its socket, then reads again.

    The framing is websockets' own sans-I/O protocol; the socket is a plain blocking one with
    a 16 KiB receive buffer, so not reading really does stop the bytes (asyncio clients keep
    draining their socket into user space, and the kernel would grow the buffer to 32 MiB).
    """

    def __init__(self, http_url: str, token: str, **params: str) -> None:
        self.protocol = ClientProtocol(parse_uri(ws_url(http_url, **params)))
        request = self.protocol.connect()
        request.headers["Authorization"] = f"Bearer {token}"
        self.protocol.send_request(request)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        self.sock.settimeout(10)
        host, port = urlsplit(http_url).hostname, urlsplit(http_url).port
        self.sock.connect((host, port))
        self.sock.sendall(b"".join(self.protocol.data_to_send()))
        self.messages: list[str] = []
        self._opened = False
        while not self._opened:
            self._pump()

    def _pump(self) -> None:
        data = self.sock.recv(65536)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                if event.status_code != 101:
                    raise AssertionError(f"handshake answered {event.status_code}")
                self._opened = True
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self.messages.append(event.data.decode())
        pending = self.protocol.data_to_send()
        if pending and self.protocol.state is not State.CLOSED:
            try:
                self.sock.sendall(b"".join(pending))  # pongs, and the reply to a close
            except OSError:
                pass  # the server has already gone; what it sent is still read

    def read(self, count: int) -> list[str]:
        """Read until `count` messages have arrived in all (raises if the connection ends first)."""
        while len(self.messages) < count:
            if self.protocol.state is not State.OPEN:
                raise AssertionError(f"closed after {len(self.messages)} messages: {self.protocol.close_rcvd}")
            self._pump()
        return self.messages

    def read_until_closed(self) -> tuple[int | None, str]:
        """Read everything the server sent, then its close code and reason (None: no close frame)."""
        try:
            while self.protocol.state not in (State.CLOSING, State.CLOSED):
                self._pump()
        except ConnectionResetError:
            pass  # reset by the server's kernel: no close frame
        finally:
            self.sock.close()
        received = self.protocol.close_rcvd
        return (received.code, received.reason) if received is not None else (None, "")
