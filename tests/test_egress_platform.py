"""The egress on a running platform: refused at registration, rebinding, redirects, bombs, bearer tokens."""

from __future__ import annotations

import ipaddress
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
import redis
from aiohttp import web
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.channels.manager import NO_ANSWER, ChannelManager
from actors.egress import EgressPolicy
from actors.health_sweep import HealthSweep
from actors.scheduler import Scheduler
from store import keys
from tests.a2a_agent import A2AAgent
from tests.chat_apis import ChatApis
from tests.dns_server import DnsServer
from tests.http_server import HttpServer
from tests.support import Platform, start_platform, wait_for
from tests.test_channels import replied

PUBLIC = "http://93.184.215.14/a2a"  # a global address: allowed, and never connected to at registration
# Acceptance (a): refused as `url` and as `restart_url` when EGRESS_ALLOW_CIDRS is empty.
REFUSED_HOSTS = [
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "[fe80::1]",
    "[64:ff9b::a00:1]",
    "localhost",
]
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def closed(ray_session: dict, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """EGRESS_ALLOW_CIDRS empty: only globally routable addresses."""
    deployed = start_platform(redis_url, tmp_path_factory.mktemp("closed"), egress_allow_cidrs=())
    yield deployed
    deployed.close()


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    server = DnsServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def guarded(
    ray_session: dict, fresh_redis: Any, dns: DnsServer, apis: ChatApis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    """Only 127.0.0.1 allowed (127.0.0.2 is refused, and still reachable on this machine); names via `dns`."""
    deployed = start_platform(
        fresh_redis(),
        tmp_path_factory.mktemp("guarded"),
        subsystems=[Scheduler, ChannelManager, HealthSweep],
        egress_allow_cidrs=("127.0.0.1/32",),
        egress_nameserver=dns.nameserver,
        fire_timeout_s=5.0,
        health_sweep_interval_s=1.0,
        telegram_api_base=apis.telegram_base,
        telegram_poll_timeout_s=2.0,
    )
    yield deployed
    deployed.close()


def workspace(platform: Platform, tenant: dict, url: str, **extra: Any) -> tuple[int, Any]:
    return platform.tenant_post(tenant, "/workspaces", {"name": "w", "url": url, **extra})


def every_2_s(platform: Platform, tenant: dict, workspace_id: str) -> dict[str, Any]:
    body = {"workspace_id": workspace_id, "name": "s", "cron": "*/2 * * * * *", "prompt": "hello"}
    status, created = platform.tenant_post(tenant, "/schedules", body)
    assert status == 201, created
    return created


def failed_with(platform: Platform, tenant: dict, schedule_id: str, text: str) -> dict[str, Any]:
    def failed() -> dict[str, Any] | None:
        found = platform.tenant_get(tenant, f"/schedules/{schedule_id}")[1]
        return found if found["last_status"] == "error" and text in (found["last_error"] or "") else None

    return wait_for(failed, 30, what=f"a fire failing with {text!r}")


@pytest.mark.parametrize("field", ["url", "restart_url"])
@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_a_url_the_egress_refuses_is_422_naming_the_field_and_the_setting(
    closed: Platform, host: str, field: str
) -> None:
    tenant = closed.new_tenant("prober")
    body = {"url": PUBLIC, field: f"http://{host}:9200/x"}
    status, reply = workspace(closed, tenant, **body)  # type: ignore[arg-type]
    assert status == 422, reply
    assert reply["error"].startswith(f"{field}: address not allowed") and "EGRESS_ALLOW_CIDRS" in reply["error"]
    status, created = workspace(closed, tenant, PUBLIC)
    assert status == 201, created
    status, reply = closed.tenant_patch(tenant, f"/workspaces/{created['id']}", {field: f"http://{host}:9200/x"})
    assert status == 422 and reply["error"].startswith(f"{field}: address not allowed"), reply
    assert closed.tenant_get(tenant, f"/workspaces/{created['id']}")[1]["url"] == PUBLIC  # unchanged


def test_a_name_rebound_to_a_refused_address_reaches_nothing(guarded: Platform, dns: DnsServer) -> None:
    inside = HttpServer({"/": lambda r: web.json_response({})}, host="127.0.0.2")
    try:
        tenant = guarded.new_tenant("rebinder")
        dns.answers["rebind.test"] = ["127.0.0.1"]  # what registration sees: allowed
        status, ws = workspace(guarded, tenant, f"http://rebind.test:{inside.port}/")
        assert status == 201, ws
        dns.answers["rebind.test"] = ["127.0.0.2"]  # then the name moves inside
        created = every_2_s(guarded, tenant, ws["id"])
        failed = failed_with(guarded, tenant, created["id"], "address not allowed")
        assert "127.0.0.2 is loopback" in failed["last_error"] and "EGRESS_ALLOW_CIDRS" in failed["last_error"]
        assert dns.queries["rebind.test"] >= 2  # asked again at the fire: no address was cached
        assert inside.connections == 0
    finally:
        inside.stop()


@pytest.mark.parametrize("status", [302, 307])
def test_a_redirect_is_the_fires_error_and_its_target_gets_nothing(guarded: Platform, status: int) -> None:
    second = HttpServer({"/{tail:.*}": lambda r: web.json_response({})})

    async def bounce(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": f"{second.url}/inside"})

    first = HttpServer({"/": bounce})
    try:
        tenant = guarded.new_tenant(f"bouncer-{status}")
        _, ws = workspace(guarded, tenant, first.url + "/")
        created = every_2_s(guarded, tenant, ws["id"])
        failed = failed_with(guarded, tenant, created["id"], "redirect not followed")
        assert failed["last_error"] == f"redirect not followed (HTTP {status})"
        assert first.connections >= 1 and second.connections == 0
    finally:
        first.stop()
        second.stop()


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """A gzip body of about 1 MiB that expands to 1 GiB and a bit of zeros, made without holding 1 GiB."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = b"\0" * MIB
    return b"".join(compressor.compress(zeros) for _ in range(1025)) + compressor.flush()


def test_a_bomb_or_a_deep_reply_is_one_items_error_and_costs_no_memory(
    guarded: Platform, apis: ChatApis, gzip_bomb: bytes
) -> None:
    async def bomb(request: web.Request) -> web.Response:
        return web.Response(body=gzip_bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    async def deep(request: web.Request) -> web.Response:
        return web.Response(body=b"[" * 100_000 + b"]" * 100_000, content_type="application/json")

    server = HttpServer({"/bomb": bomb, "/deep": deep})
    try:
        actors = ("scheduler", "channel-manager")
        before = {name: psutil.Process(guarded.pid_of(name)).memory_info().rss for name in actors}
        tenant = guarded.new_tenant("bomber")
        checks = []
        for path, error in (("/bomb", "response too large"), ("/deep", "JSON nested too deep")):
            _, ws = workspace(guarded, tenant, server.url + path)
            checks.append((every_2_s(guarded, tenant, ws["id"]), error))
            token = f"{700 + len(checks)}:AAH{'z' * 30}"
            apis.bot(token)
            channel = {"workspace_id": ws["id"], "type": "telegram", "config": {"bot_token": token}}
            status, created = guarded.tenant_post(tenant, "/channels", channel)
            assert status == 201, created
            wait_for(lambda c=created: guarded.tenant_get(tenant, f"/channels/{c['id']}")[1]["status"] == "running", 30)
            asked = apis.send(token, 5, "are you there?")
            wait_for(lambda t=token, m=asked: replied(apis, t, 5, [m]), 60, what="the chat told no answer came")
            assert apis.replies(token, 5)[0]["text"] == NO_ANSWER
        for created, error in checks:
            failed_with(guarded, tenant, created["id"], error)
        for created, _ in checks:  # and again: each fire stays one item's error
            runs = guarded.tenant_get(tenant, f"/schedules/{created['id']}")[1]["run_count"]
            wait_for(
                lambda c=created, r=runs: guarded.tenant_get(tenant, f"/schedules/{c['id']}")[1]["run_count"] > r, 30
            )
        for name in actors:
            sub = guarded.subsystem(name)
            assert sub["state"] == "RUNNING" and sub["restarts"] == {"exception": 0, "process": 0, "stalled": 0}
            grown = psutil.Process(sub["pid"]).memory_info().rss - before[name]
            assert grown < 64 * MIB, (name, grown)
    finally:
        server.stop()


def test_a_workspace_bearer_token_goes_with_every_request_and_never_comes_back(
    guarded: Platform, apis: ChatApis
) -> None:
    secret = "ws-bearer-7f3a9c1e5d"
    agent = A2AAgent(token=secret).start()
    try:
        tenant = guarded.new_tenant("guarded-agent")
        status, ws = workspace(guarded, tenant, agent.url, auth_token=secret)
        assert status == 201 and ws["auth_token"] == "redacted", ws
        assert guarded.tenant_get(tenant, f"/workspaces/{ws['id']}")[1]["auth_token"] == "redacted"
        assert guarded.tenant_get(tenant, "/workspaces")[1]["workspaces"][0]["auth_token"] == "redacted"
        stored = redis.Redis.from_url(guarded.settings.redis_url).hgetall(keys.workspace(ws["id"]))
        assert secret.encode() not in b"".join(stored.values()) and stored[b"auth_token"]  # sealed, not absent
        created = every_2_s(guarded, tenant, ws["id"])
        wait_for(lambda: guarded.tenant_get(tenant, f"/schedules/{created['id']}")[1]["last_status"] == "ok", 30)
        token = "808:AAH" + "k" * 30
        apis.bot(token)
        channel = {"workspace_id": ws["id"], "type": "telegram", "config": {"bot_token": token}}
        assert guarded.tenant_post(tenant, "/channels", channel)[0] == 201
        asked = apis.send(token, 9, "hello agent")
        wait_for(lambda: replied(apis, token, 9, [asked]), 60, what="the relayed message answered")
        assert apis.replies(token, 9)[0]["text"] == "echo: hello agent"
        assert guarded.post(f"/workspaces/{ws['id']}/heartbeat", token=tenant["token"])[0] == 204
        wait_for(lambda: agent.probes, 30, what="a health probe")
        fires = agent.bodies_for(f"cron-{created['id']}-")
        relays = agent.bodies_for("channel-telegram-")
        assert fires and relays
        for request in [*fires, *relays]:
            assert request["headers"]["authorization"] == f"Bearer {secret}"
        assert all(p["authorization"] == f"Bearer {secret}" for p in agent.probes)
        assert agent.refused == 0
        # Cleared with a PATCH: the agent refuses what comes next.
        status, patched = guarded.tenant_patch(tenant, f"/workspaces/{ws['id']}", {"auth_token": None})
        assert status == 200 and patched["auth_token"] is None
        failed_with(guarded, tenant, created["id"], "HTTP 401")
    finally:
        agent.stop()


def test_a_new_key_seals_and_the_old_one_still_opens(
    ray_session: dict, fresh_redis: Any, tmp_path: Path, apis: ChatApis
) -> None:
    """CHANNEL_SECRET_KEY=<new>,<old>: secrets sealed with the old key keep working; new ones use the new key."""
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    url = fresh_redis()
    secret = "rotated-bearer-2b6e"
    agent = A2AAgent(token=secret).start()
    try:
        first = start_platform(url, tmp_path / "one", subsystems=[Scheduler], channel_secret_key=old)
        tenant = first.new_tenant("rotation")
        _, ws = workspace(first, tenant, agent.url, auth_token=secret)
        first.close()
        second = start_platform(url, tmp_path / "two", subsystems=[Scheduler], channel_secret_key=f"{new},{old}")
        try:
            created = every_2_s(second, tenant, ws["id"])
            wait_for(lambda: second.tenant_get(tenant, f"/schedules/{created['id']}")[1]["last_status"] == "ok", 30)
            _, fresh = workspace(second, tenant, agent.url, auth_token=secret)
            sealed = redis.Redis.from_url(url).hget(keys.workspace(fresh["id"]), "auth_token")
            assert Fernet(new.encode()).decrypt(sealed).decode() == secret  # sealed with the first key
        finally:
            second.close()
    finally:
        agent.stop()


hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
    st.sampled_from(["localhost", "LOCALHOST.", "[::ffff:10.0.0.1]", "[64:ff9b::7f00:1]", "[2002:a00:1::]"]),
    st.from_regex(r"[a-z][a-z0-9-]{0,12}\.(test|invalid)", fullmatch=True),
)
urls = st.builds(
    lambda scheme, userinfo, host, port, path: f"{scheme}://{userinfo}{host}{port}{path}",
    st.sampled_from(["http", "https", "ftp", "HTTP"]),
    st.sampled_from(["", "user@", "user:pass@", "@", "a:b:c@"]),
    hosts,
    st.sampled_from(["", ":80", ":0", ":65535", ":99999", ":x"]),
    st.sampled_from(["", "/", "/a2a?x=1", "/#f", "/%00"]),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(url=urls, field=st.sampled_from(["url", "restart_url"]))
def test_arbitrary_urls_never_5xx_and_never_register_a_refused_address(closed: Platform, url: str, field: str) -> None:
    tenant = _fuzzer(closed)
    status, reply = workspace(closed, tenant, **{"url": PUBLIC, field: url})  # type: ignore[arg-type]
    assert status < 500, (url, status, reply)
    if status == 201:
        host = urlsplit(reply[field]).hostname or ""
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return  # a name: checked by resolving it, and at every request
        assert EgressPolicy().check(literal) is None, (url, reply)
    else:
        assert isinstance(reply, dict) and isinstance(reply.get("error"), str), reply


_FUZZERS: dict[str, dict] = {}


def _fuzzer(platform: Platform) -> dict:
    return _FUZZERS.setdefault(platform.url, platform.new_tenant("url-fuzz"))
