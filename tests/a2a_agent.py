"""A real A2A agent for tests: the official a2a-sdk server (1.0, with 0.3 compatibility) on loopback.

It records every raw request (headers and JSON body) and every message it handled.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import uvicorn
from a2a.helpers import get_message_text, new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from store.embedded import free_port


class _Recorder(AgentExecutor):
    def __init__(self, agent: A2AAgent) -> None:
        self.agent = agent

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        if self.agent.delay_s:
            await asyncio.sleep(self.agent.delay_s)
        if (outage_s := self.agent.outage_until - time.time()) > 0:
            await asyncio.sleep(outage_s)  # down for a while: no answer until it is over
        message = context.message
        text = get_message_text(message)
        if self.agent.hold_prefix is not None and text.startswith(self.agent.hold_prefix):
            await asyncio.to_thread(self.agent.released.wait)  # a wedged agent, for this one message
        with self.agent.lock:
            self.agent.messages.append({"messageId": message.message_id, "text": text, "at": time.time()})
        await event_queue.enqueue_event(new_text_message(f"echo: {text}", context_id=context.context_id))

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        raise NotImplementedError


class A2AAgent:
    """Start with `start()`, stop with `stop()`; `url` is its JSON-RPC endpoint."""

    def __init__(self, delay_s: float = 0.0, hold_prefix: str | None = None, token: str | None = None) -> None:
        """`hold_prefix`: a message whose text starts with it gets no answer until `released` is set.

        `token`: every request (A2A and `GET /health`) must carry `Authorization: Bearer <token>`,
        as an agent card's bearer security scheme asks; others get 401 and are counted in `refused`.
        """
        self.delay_s = delay_s
        self.outage_until = 0.0  # until then (a time.time()), every message waits for its answer
        self.hold_prefix = hold_prefix
        self.token = token
        self.refused = 0
        self.probes: list[dict[str, str]] = []
        self.released = threading.Event()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.lock = threading.Lock()
        self.messages: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        card = AgentCard(
            name="recorder",
            description="records messages",
            version="1.0.0",
            supported_interfaces=[AgentInterface(url=self.url, protocol_binding="JSONRPC", protocol_version="1.0")],
            capabilities=AgentCapabilities(streaming=False),
            default_input_modes=["text/plain"],
            default_output_modes=["text/plain"],
            skills=[AgentSkill(id="echo", name="echo", description="echo", tags=["echo"])],
        )
        handler = DefaultRequestHandler(agent_executor=_Recorder(self), task_store=InMemoryTaskStore(), agent_card=card)
        routes = create_agent_card_routes(card) + create_jsonrpc_routes(handler, rpc_url="/", enable_v0_3_compat=True)
        routes.append(Route("/health", self._health, methods=["GET"]))
        self.app = Starlette(routes=routes)
        self.server = uvicorn.Server(
            uvicorn.Config(self._recording(self.app), host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def _health(self, request: Request) -> PlainTextResponse:
        with self.lock:
            self.probes.append(dict(request.headers))
        return PlainTextResponse("ok")

    def _recording(self, app: Any) -> Any:
        async def asgi(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and self.token is not None:
                headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
                if headers.get("authorization") != f"Bearer {self.token}":
                    with self.lock:
                        self.refused += 1
                    await PlainTextResponse("unauthorized", status_code=401)(scope, receive, send)
                    return
            if scope["type"] != "http" or scope["method"] != "POST":
                await app(scope, receive, send)
                return
            chunks = []
            more = True
            while more:
                message = await receive()
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            body = b"".join(chunks)
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            with self.lock:
                self.requests.append({"headers": headers, "body": json.loads(body), "at": time.time()})
            replayed = False

            async def replay() -> dict:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await app(scope, replay, send)

        return asgi

    def start(self) -> A2AAgent:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("A2A agent did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)

    def bodies_for(self, message_prefix: str) -> list[dict[str, Any]]:
        with self.lock:
            return [
                r
                for r in self.requests
                if r["body"].get("params", {}).get("message", {}).get("messageId", "").startswith(message_prefix)
            ]


class BlackHole:
    """A TCP server that accepts connections and never answers (a wedged workspace).

    `connections` counts every one accepted, `open` those the client has not closed, and
    `peak` the most open at once.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.connections = 0
        self.open = 0
        self.peak = 0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            while await reader.read(65536):  # until the client closes
                pass
        finally:
            self.open -= 1
        writer.close()  # the client closed first (not when the test's loop is stopped under it)

    def start(self) -> BlackHole:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(asyncio.start_server(self._accept, "127.0.0.1", self.port), self.loop).result(
            5
        )
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
