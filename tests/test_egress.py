"""The egress: which addresses it refuses, rebinding, redirects, and replies too large or too deep."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ipaddress
import re
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web

from actors.egress import Egress, EgressError, EgressPolicy, embedded_ipv4, nameserver_lookup, refusal
from tests.dns_server import DnsServer

MIB = 1024 * 1024
# Acceptance (a): every one of these is refused when nothing is allowed.
REFUSED = [
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "::1",
    "::ffff:127.0.0.1",
    "fe80::1",
    "64:ff9b::a00:1",
    "224.0.0.1",
    "240.0.0.1",
    "2002:a00:1::1",
]


@pytest.mark.parametrize("address", REFUSED)
def test_addresses_inside_or_reserved_are_refused_with_the_setting_named(address: str) -> None:
    why = EgressPolicy().check(ipaddress.ip_address(address))
    assert why is not None and why.startswith("address not allowed") and "EGRESS_ALLOW_CIDRS" in why


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert EgressPolicy().check(ipaddress.ip_address(address)) is None


def test_an_embedded_ipv4_address_is_judged_as_itself() -> None:
    assert embedded_ipv4(ipaddress.ip_address("::ffff:10.0.0.1")) == ipaddress.ip_address("10.0.0.1")
    assert embedded_ipv4(ipaddress.ip_address("2002:a00:1::1")) == ipaddress.ip_address("10.0.0.1")
    assert embedded_ipv4(ipaddress.ip_address("64:ff9b::a00:1")) == ipaddress.ip_address("10.0.0.1")
    assert refusal(ipaddress.ip_address("64:ff9b::a00:1")) == "private, embedded in 64:ff9b::a00:1"


def test_the_allow_list_opens_what_it_names_and_no_more() -> None:
    policy = EgressPolicy((ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.5.0.0/16")))
    assert policy.check(ipaddress.ip_address("127.0.0.1")) is None
    assert policy.check(ipaddress.ip_address("::ffff:127.0.0.1")) is None  # the same address, embedded
    assert policy.check(ipaddress.ip_address("10.5.9.9")) is None
    assert policy.check(ipaddress.ip_address("10.6.0.1")) is not None
    assert policy.check(ipaddress.ip_address("::1")) is not None
    everything = EgressPolicy((ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")))
    assert everything.allows_all and everything.check(ipaddress.ip_address("169.254.169.254")) is None


class Listener:
    """An HTTP server on a loopback address that counts the connections it accepts."""

    def __init__(self, host: str, app: web.Application) -> None:
        self.host, self.app, self.connections, self.url = host, app, 0, ""

    async def __aenter__(self) -> Listener:
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        handlers = self.runner.server

        def accepted() -> asyncio.Protocol:
            self.connections += 1
            return handlers()  # type: ignore[return-value]

        self.server = await asyncio.get_running_loop().create_server(accepted, self.host, 0)
        self.url = f"http://{self.host}:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.runner.cleanup()


def app_with(**routes: object) -> web.Application:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*", "/" + path, handler)  # type: ignore[arg-type]
    return app


@contextlib.asynccontextmanager
async def egress(allow: tuple[str, ...] = ("127.0.0.1/32",), **kwargs: object) -> AsyncIterator[Egress]:
    policy = EgressPolicy(tuple(ipaddress.ip_network(a) for a in allow))
    client = Egress(policy, max_response_bytes=kwargs.pop("max_response_bytes", MIB), **kwargs)  # type: ignore[arg-type]
    await client.open()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    server = DnsServer()
    yield server
    server.stop()


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def test_a_refused_literal_address_gets_nothing_sent() -> None:
    async with Listener("127.0.0.2", app_with(x=ok)) as inside, egress() as client:
        with pytest.raises(EgressError, match=r"address not allowed: 127\.0\.0\.2 is loopback"):
            await client.request("POST", inside.url + "/x", json_body={}, timeout_s=2)
        assert inside.connections == 0 and client.refused == 1


async def test_a_name_that_rebinds_to_a_refused_address_reaches_nothing(dns: DnsServer) -> None:
    """Checked at registration (allowed), asked again at request time (refused): no connection."""
    async with (
        Listener("127.0.0.1", app_with(x=ok)) as allowed,
        Listener("127.0.0.2", app_with(x=ok)) as refused,
        egress(lookup=nameserver_lookup(dns.nameserver)) as client,
    ):
        dns.answers["agent.example"] = ["127.0.0.1"]
        url = f"http://agent.example:{refused.url.rsplit(':', 1)[1]}/x"
        assert await client.check_url(url) is None  # what registration sees
        dns.answers["agent.example"] = ["127.0.0.2"]  # rebound
        with pytest.raises(EgressError, match="address not allowed"):
            await client.request("POST", url, json_body={}, timeout_s=2)
        assert refused.connections == 0 and allowed.connections == 0
        dns.answers["agent.example"] = ["127.0.0.2", "127.0.0.1"]  # only the allowed one is tried
        reply = await client.request("GET", f"http://agent.example:{allowed.url.rsplit(':', 1)[1]}/x", timeout_s=2)
        assert reply.ok and allowed.connections == 1 and refused.connections == 0


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_never_followed(status: int) -> None:
    async with Listener("127.0.0.1", app_with(x=ok)) as second:

        async def bounce(request: web.Request) -> web.Response:
            return web.Response(status=status, headers={"Location": second.url + "/x"})

        async with Listener("127.0.0.1", app_with(bounce=bounce)) as first, egress() as client:
            with pytest.raises(EgressError, match=rf"redirect not followed \(HTTP {status}\)"):
                await client.request("POST", first.url + "/bounce", json_body={"secret": 1}, timeout_s=2)
        assert second.connections == 0


async def test_a_gzip_bomb_stops_at_the_byte_limit() -> None:
    bomb = gzip.compress(b"\0" * (64 * MIB), compresslevel=9)  # 64 MiB of zeros in about 64 KiB

    async def gzipped(request: web.Request) -> web.Response:
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    async with Listener("127.0.0.1", app_with(bomb=gzipped)) as server, egress() as client:
        with pytest.raises(EgressError, match="response too large"):
            await client.request("GET", server.url + "/bomb", timeout_s=10)


async def test_json_nested_too_deep_is_a_value_error_not_a_crash() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000

    async def nested(request: web.Request) -> web.Response:
        return web.Response(body=deep, content_type="application/json")

    async with Listener("127.0.0.1", app_with(deep=nested)) as server, egress() as client:
        reply = await client.request("GET", server.url + "/deep", timeout_s=5)
        with pytest.raises(ValueError, match="nested too deep"):
            reply.json()


async def test_errors_never_carry_credentials_or_queries() -> None:
    async with egress(allow=("127.0.0.0/8",)) as client:
        with pytest.raises(EgressError) as failed:
            await client.request("GET", "http://user:hunter2@127.0.0.1:9/x?key=topsecret", timeout_s=2)
    assert "hunter2" not in str(failed.value) and "topsecret" not in str(failed.value)


async def test_a_request_on_a_connection_the_server_closed_goes_again_once_on_a_new_one() -> None:
    """A server that drops connections it is done with (its keep-alive timeout) as a request
    arrives on one: the request goes again, once, on a fresh connection."""
    drop_next = [2]  # the first two connections are dropped without an answer
    requests = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
        requests.append(await reader.readexactly(length))
        if drop_next[0] > 0:
            drop_next[0] -= 1
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    try:
        async with egress() as client:
            with pytest.raises(EgressError, match="ServerDisconnectedError"):  # dropped twice: given up
                await client.request("POST", url, json_body={"n": 1}, timeout_s=5)
            assert client.stale_retries == 1 and len(requests) == 2
            drop_next[0] = 1
            reply = await client.request("POST", url, json_body={"n": 2}, timeout_s=5)
            assert reply.status == 200 and client.stale_retries == 2 and requests[-2:] == [b'{"n": 2}'] * 2
    finally:
        server.close()
        await server.wait_closed()
