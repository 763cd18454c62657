"""A2A client outcomes against real HTTP servers on loopback: ok only for a JSON-RPC result."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from actors.a2a_client import request, send
from actors.egress import Egress, EgressPolicy


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def ok(req: web.Request) -> web.Response:
        body = await req.json()
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": {"ok": True}, "error": None})

    async def rpc_error(req: web.Request) -> web.Response:
        return web.json_response({"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "nope"}})

    async def http_500(req: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    async def not_json(req: web.Request) -> web.Response:
        return web.Response(text="<html>")

    async def no_result(req: web.Request) -> web.Response:
        return web.json_response({"jsonrpc": "2.0", "id": 1})

    async def slow(req: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    async def auth(req: web.Request) -> web.Response:
        return web.json_response(
            {"jsonrpc": "2.0", "id": 1, "result": {"authorization": req.headers.get("Authorization")}}
        )

    app = web.Application()
    for path, handler in [
        ("/ok", ok),
        ("/err", rpc_error),
        ("/500", http_500),
        ("/html", not_json),
        ("/none", no_result),
        ("/slow", slow),
        ("/auth", auth),
    ]:
        app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize(
    "path, ok, error",
    [
        ("/ok", True, None),
        ("/err", False, "JSON-RPC error -32601: nope"),
        ("/500", False, "HTTP 500"),
        ("/html", False, "invalid JSON-RPC response"),
        ("/none", False, "invalid JSON-RPC response: no result"),
        ("/slow", False, "no answer within 0.3 s"),
    ],
)
async def test_outcomes(server: str, path: str, ok: bool, error: str | None) -> None:
    async with loopback_egress() as egress:
        outcome = await send(egress, server + path, "1.0", "m-1", "hi", 0.3)
    assert outcome.ok is ok
    if error is None:
        assert outcome.error is None
    else:
        assert outcome.error is not None and outcome.error.startswith(error)


async def test_refused_connection_is_an_error_not_an_exception() -> None:
    async with loopback_egress() as egress:
        outcome = await send(egress, "http://127.0.0.1:9/", "0.3", "m-2", "hi", 1.0)
    assert not outcome.ok and "Connect" in outcome.error


@contextlib.asynccontextmanager
async def loopback_egress() -> AsyncIterator[Egress]:
    egress = Egress(EgressPolicy((ipaddress.ip_network("127.0.0.0/8"),)), max_response_bytes=1024 * 1024)
    await egress.open()
    try:
        yield egress
    finally:
        await egress.close()


async def test_the_workspace_token_is_sent_as_a_bearer_header(server: str) -> None:
    async with loopback_egress() as egress:
        outcome = await send(egress, server + "/auth", "1.0", "m-3", "hi", 1.0, auth_token="s3cret")
    assert outcome.ok and outcome.result == {"authorization": "Bearer s3cret"}


def test_bodies_per_version() -> None:
    headers, body = request("1.0", "m", "t")
    assert headers == {"A2A-Version": "1.0"} and body["method"] == "SendMessage"
    assert body["params"] == {"message": {"messageId": "m", "role": "ROLE_USER", "parts": [{"text": "t"}]}}
    headers, body = request("0.3", "m", "t")
    assert headers == {} and body["method"] == "message/send"
    assert body["params"]["message"]["parts"] == [{"kind": "text", "text": "t"}]
    with pytest.raises(ValueError, match=r"2\.0"):
        request("2.0", "m", "t")
