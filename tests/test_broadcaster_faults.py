"""The broadcaster and WS /ws under faults: SIGKILL, API restart, a client that stops reading, Redis restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed

from actors.runtime.handles import API_ACTOR, NamedActor
from store.embedded import EmbeddedRedis, free_port
from tests.support import Platform, start_platform, wait_for
from tests.test_broadcaster import BROADCASTER
from tests.ws_client import StalledClient, Subscriber, Writer


@pytest.fixture(scope="module")
def relay(ray_session: dict, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    deployed = start_platform(redis_url, tmp_path_factory.mktemp("relay-faults"), subsystems=BROADCASTER)
    yield deployed
    deployed.close()


def restarted(platform: Platform, name: str) -> bool:
    sub = platform.subsystem(name)
    return sub["state"] == "RUNNING" and sub["restarts"]["process"] >= 1


async def when(condition, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    async def poll() -> None:
        while not condition():  # noqa: ASYNC110 (the condition is another task's progress)
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout_s)


async def test_sigkill_mid_stream_loses_nothing_for_connected_clients(relay: Platform) -> None:
    tenant = relay.new_tenant("sigkill")
    clients = [Subscriber(relay.url, tenant["token"]) for _ in range(3)]
    total = 10_000
    readers = [asyncio.create_task(c.run(total, timeout_s=120)) for c in clients]
    await asyncio.wait_for(asyncio.gather(*(c.opened.wait() for c in clients)), 10)
    writing = asyncio.create_task(
        Writer(relay.settings.redis_url).paced([tenant["id"]], total, batch=100, pause_s=0.02)
    )
    await when(lambda: len(clients[0].events) >= 3_000, 60)
    os.kill(relay.pid_of("broadcaster"), signal.SIGKILL)
    written = (await writing)[0]
    await asyncio.gather(*readers)
    for client in clients:
        assert client.ids == written  # all 10,000, in order, exactly once
        assert client.connections == 1  # on the connection they already had
    await asyncio.to_thread(wait_for, lambda: restarted(relay, "broadcaster"), 30, what="broadcaster restarted")
    # Caught up: its progress says so once the next idle tick reports.
    await asyncio.to_thread(wait_for, lambda: relay.subsystem("broadcaster")["progress"]["lag_events"] == 0, 30)


async def test_api_restart_clients_resume_from_last_event_id(relay: Platform) -> None:
    tenant = relay.new_tenant("api-restart")
    clients = [Subscriber(relay.url, tenant["token"], reconnect=True) for _ in range(3)]
    total = 6_000
    readers = [asyncio.create_task(c.run(total, timeout_s=120)) for c in clients]
    await asyncio.wait_for(asyncio.gather(*(c.opened.wait() for c in clients)), 10)
    writing = asyncio.create_task(Writer(relay.settings.redis_url).paced([tenant["id"]], total, batch=50, pause_s=0.02))
    await when(lambda: len(clients[0].events) >= 1_000, 60)
    os.kill(relay.pid_of(API_ACTOR), signal.SIGKILL)
    written = (await writing)[0]
    await asyncio.gather(*readers)
    for client in clients:
        assert client.ids == written
        assert client.connections >= 2  # they did lose the connection, and resumed
    await asyncio.to_thread(wait_for, lambda: restarted(relay, "api"), 30, what="api restarted")


@pytest.fixture
def small_queues(ray_session: dict, redis_url: str, tmp_path) -> Iterator[Platform]:
    deployed = start_platform(redis_url, tmp_path / "data", subsystems=BROADCASTER, ws_queue_size=100)
    yield deployed
    deployed.close()


async def test_a_client_that_stops_reading_is_closed_1013_and_catches_up(small_queues: Platform) -> None:
    platform = small_queues
    tenant = platform.new_tenant("slow")
    readers = [Subscriber(platform.url, tenant["token"]) for _ in range(2)]
    total = 1_500
    running = [asyncio.create_task(c.run(total, timeout_s=120)) for c in readers]
    stalled = await asyncio.to_thread(StalledClient, platform.url, tenant["token"])  # and reads nothing
    await asyncio.wait_for(asyncio.gather(*(c.opened.wait() for c in readers)), 10)
    # 16 KiB events: the socket buffers between the two fill after a few hundred of them.
    written = (
        await Writer(platform.settings.redis_url).paced([tenant["id"]], total, batch=10, pause_s=0.02, pad=16_384)
    )[0]
    await asyncio.gather(*running)
    for client in readers:
        assert client.ids == written and client.connections == 1  # the readers were not held back or dropped
    # The readers have closed; the stalled client, still not reading, is no longer held by the hub.
    await asyncio.to_thread(wait_for, lambda: platform.subsystem("api")["progress"]["ws_clients"] == 0, 30)

    # The stalled client reads again: what it was sent, in order, then the close.
    code, reason = await asyncio.to_thread(stalled.read_until_closed)
    got = [json.loads(m)["id"] for m in stalled.messages]
    assert code == 1013 and "last_event_id=" in reason
    assert 0 < len(got) < total and got == written[: len(got)]
    # It reconnects with its last id and gets the rest, exactly once.
    resumed = Subscriber(platform.url, tenant["token"], last_event_id=got[-1])
    await resumed.run(total - len(got), timeout_s=60)
    assert got + resumed.ids == written
    assert platform.subsystem("api")["progress"]["ws_overflows"] >= 1


@pytest.fixture
def own_redis(tmp_path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis", port=free_port())
    server.start()
    yield server
    server.stop()


async def test_redis_restart_backoff_then_recovery_with_no_event_lost(
    ray_session: dict, own_redis: EmbeddedRedis, tmp_path
) -> None:
    platform = start_platform(own_redis.url, tmp_path / "data", subsystems=BROADCASTER)
    try:
        tenant = platform.new_tenant("outage")
        client = Subscriber(platform.url, tenant["token"])
        reader = asyncio.create_task(client.run(600, timeout_s=120))
        await asyncio.wait_for(client.opened.wait(), 10)
        writer = Writer(own_redis.url)
        before = writer.write(tenant["id"], 300)
        own_redis.stop()  # a restart: redis-server persists its AOF on the way down
        await asyncio.to_thread(platform.wait_state, "broadcaster", "BACKOFF", 30)
        own_redis.start()
        after = writer.write(tenant["id"], 300, start=300)
        await reader
        assert client.ids == before + after and client.connections == 1
        await asyncio.to_thread(platform.wait_state, "broadcaster", "RUNNING", 60)
    finally:
        platform.close()


async def test_peers_that_never_answer_pings_are_let_go(ray_session: dict, redis_url: str, tmp_path) -> None:
    platform = start_platform(
        redis_url, tmp_path / "data", subsystems=BROADCASTER, ws_ping_interval_s=1.0, ws_ping_timeout_s=3.0
    )
    try:
        tenant = platform.new_tenant("pings")
        reader = Subscriber(platform.url, tenant["token"])
        # Few, small events: the silent peers' receive buffers never fill, so the server's close reaches them.
        running = asyncio.create_task(reader.run(20, timeout_s=60))
        silent = [await asyncio.to_thread(StalledClient, platform.url, tenant["token"]) for _ in range(3)]
        ports = {peer.sock.getsockname()[1] for peer in silent}
        await asyncio.wait_for(reader.opened.wait(), 10)
        written = Writer(platform.settings.redis_url).write(tenant["id"], 20)
        await running
        assert reader.ids == written  # the client that answers its pings is served
        api = NamedActor(API_ACTOR, platform.settings.ray_namespace)

        def released() -> bool:  # on the server's side: no socket of theirs is left
            return not ports & {c["peer"][1] for c in api.call_sync("connections", timeout_s=5)}

        await asyncio.to_thread(wait_for, released, 60, what="the silent peers' connections closed")
        for peer in silent:  # what the server sent them: the events, then a close with 1011
            code, reason = await asyncio.to_thread(peer.read_until_closed)
            assert (code, reason) == (1011, "keepalive ping timeout")
            assert [json.loads(m)["id"] for m in peer.messages] == written
        hub_empty = lambda: platform.subsystem("api")["progress"]["ws_clients"] == 0  # noqa: E731
        await asyncio.to_thread(wait_for, hub_empty, 10, what="the hub released them")
    finally:
        platform.close()


async def test_an_overflow_while_replaying_re_reads_the_stream_and_keeps_the_connection(
    small_queues: Platform,
) -> None:
    platform = small_queues
    tenant = platform.new_tenant("replay-overflow")
    writer = Writer(platform.settings.redis_url)
    history = writer.write(tenant["id"], 1_000, pad=16_384)
    # Not reading yet: the replay stalls on the full socket while live events queue up past 100.
    client = await asyncio.to_thread(StalledClient, platform.url, tenant["token"], last_event_id="0-0")
    live = writer.write(tenant["id"], 300)
    await asyncio.to_thread(
        wait_for, lambda: platform.subsystem("api")["progress"]["ws_overflows"] >= 1, 30, what="overflow in replay"
    )
    messages = await asyncio.to_thread(client.read, 1_300)
    assert [json.loads(m)["id"] for m in messages] == history + live  # no gap, no duplicate, no close
    client.sock.close()


async def test_a_draining_api_closes_its_websockets_with_1012(ray_session: dict, redis_url: str, tmp_path) -> None:
    platform = start_platform(redis_url, tmp_path / "data", subsystems=BROADCASTER)
    drained = False
    try:
        tenant = platform.new_tenant("drained")
        client = Subscriber(platform.url, tenant["token"])
        reader = asyncio.create_task(client.run(1, timeout_s=60))
        await asyncio.wait_for(client.opened.wait(), 10)
        await asyncio.to_thread(platform.close)
        drained = True
        with pytest.raises(ConnectionClosed):
            await reader
        assert [code for code, _ in client.closes] == [1012]  # "service restart": reconnect with last_event_id
    finally:
        if not drained:
            platform.close()
