"""The broadcaster and WS /ws: every tenant's events reach that tenant's clients only, in order, once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from actors.broadcaster import Broadcaster
from actors.runtime.handles import API_ACTOR, HEALTH_ACTOR, NamedActor
from store import keys
from store.client import connect as redis_connect
from store.events import parse_id
from store.records import new_id
from store.tenants import index_existing
from tests.support import Platform, http, start_platform, sync_redis, wait_for
from tests.ws_client import Subscriber, Writer, refused, ws_url

BROADCASTER = [Broadcaster]


@pytest.fixture(scope="module")
def relay(ray_session: dict, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    deployed = start_platform(redis_url, tmp_path_factory.mktemp("relay"), subsystems=BROADCASTER)
    yield deployed
    deployed.close()


def subscribers(platform: Platform, tenant: dict, n: int, **kw: object) -> list[Subscriber]:
    return [Subscriber(platform.url, tenant["token"], **kw) for _ in range(n)]  # type: ignore[arg-type]


async def test_each_client_gets_exactly_its_tenants_events_in_order(relay: Platform) -> None:
    a, b = relay.new_tenant("iso-a"), relay.new_tenant("iso-b")
    clients = {"a": subscribers(relay, a, 3), "b": subscribers(relay, b, 3)}
    per_tenant = 5_000  # 10,000 events in all, interleaved between the two tenants
    readers = [asyncio.create_task(c.run(per_tenant, timeout_s=120)) for cs in clients.values() for c in cs]
    await asyncio.wait_for(asyncio.gather(*(c.opened.wait() for cs in clients.values() for c in cs)), 10)
    written = await Writer(relay.settings.redis_url).paced([a["id"], b["id"]], per_tenant, batch=250, pause_s=0.01)
    await asyncio.gather(*readers)
    for tenant, ids, group in ((a, written[0], clients["a"]), (b, written[1], clients["b"])):
        for client in group:
            assert client.ids == ids  # all of them, in order, once: nothing else
            assert {e["tenant_id"] for e in client.events} == {tenant["id"]}
            assert [e["payload"]["n"] for e in client.events] == list(range(per_tenant))
            assert client.connections == 1
    event = clients["a"][0].events[0]
    assert set(event) == {"id", "event", "tenant_id", "workspace_id", "timestamp", "payload"}
    assert event["event"] == "TEST_EVENT" and event["workspace_id"] is None and event["timestamp"].endswith("Z")


async def test_replay_after_last_event_id_meets_live_events_with_no_gap_or_duplicate(relay: Platform) -> None:
    tenant = relay.new_tenant("seam")
    writer = Writer(relay.settings.redis_url)
    history = writer.write(tenant["id"], 1_200)
    resume_from = history[199]  # 1,000 to replay, across two replay pages, while more arrive
    live = asyncio.create_task(writer.paced([tenant["id"]], 2_000, batch=50, pause_s=0.005))
    client = Subscriber(relay.url, tenant["token"], last_event_id=resume_from)
    await client.run(1_000 + 2_000, timeout_s=60)
    later = (await live)[0]
    assert client.ids == history[200:] + later


async def test_published_events_arrive_with_the_envelope(relay: Platform) -> None:
    tenant = relay.new_tenant("published")
    _, ws = relay.tenant_post(tenant, "/workspaces", {"name": "w", "url": "http://127.0.0.1:1/"})
    client = Subscriber(relay.url, tenant["token"])
    reader = asyncio.create_task(client.run(2, timeout_s=30))
    await asyncio.wait_for(client.opened.wait(), 10)
    body = {"event": "BUILD_DONE", "workspace_id": ws["id"], "payload": {"ok": True, "text": "héllo"}}
    replies = [await asyncio.to_thread(relay.tenant_post, tenant, "/events", body) for _ in range(2)]
    await reader
    assert [r[0] for r in replies] == [202, 202]
    assert client.ids == [r[1]["id"] for r in replies]
    assert client.events[0]["workspace_id"] == ws["id"] and client.events[0]["payload"] == body["payload"]


async def test_a_websocket_is_served_with_nodelay(relay: Platform) -> None:
    """Without TCP_NODELAY, frames sent back to back wait for the client's delayed ACK."""
    tenant = relay.new_tenant("nodelay")
    async with connect(ws_url(relay.url, token=tenant["token"])) as ws:
        port = ws.local_address[1]
        api = NamedActor(API_ACTOR, relay.settings.ray_namespace)
        served = [c for c in await api.call("connections", timeout_s=10) if c["peer"][1] == port]
    assert [(c["nodelay"], c["user_timeout_ms"]) for c in served] == [(1, 40_000)]


async def test_bad_or_missing_token_is_closed_4401_before_any_event(relay: Platform) -> None:
    a, b = relay.new_tenant("auth-a"), relay.new_tenant("auth-b")
    Writer(relay.settings.redis_url).write(a["id"], 5)
    Writer(relay.settings.redis_url).write(b["id"], 5)
    cases = [
        ({}, {}),
        ({}, {"token": "not-a-token"}),
        ({"Authorization": "Bearer not-a-token"}, {}),
        ({"Authorization": f"Basic {a['token']}"}, {}),
        ({"Authorization": f"Bearer {a['token']}"}, {"token": b["token"]}),  # two tenants' tokens at once
    ]
    for headers, params in cases:
        code, reason, received = await refused(relay.url, headers=headers, last_event_id="0-0", **params)
        assert (code, received) == (4401, []), (headers, params, reason)
        assert reason


async def test_no_parameter_reaches_another_tenants_stream(relay: Platform) -> None:
    a, b = relay.new_tenant("peek-a"), relay.new_tenant("peek-b")
    Writer(relay.settings.redis_url).write(b["id"], 5)
    auth = {"Authorization": f"Bearer {a['token']}"}
    for params in ({"tenant_id": b["id"]}, {"tenant": b["id"]}, {"stream": keys.events(b["id"])}):
        code, reason, received = await refused(relay.url, headers=auth, last_event_id="0-0", **params)
        assert (code, received) == (4400, []) and "unknown query parameter" in reason
    # With only its own token and last_event_id=0-0, A replays A's (empty) stream and nothing of B's.
    client = Subscriber(relay.url, a["token"], last_event_id="0-0")
    Writer(relay.settings.redis_url).write(a["id"], 1)
    await client.run(1, timeout_s=10)
    assert [e["tenant_id"] for e in client.events] == [a["id"]]


async def test_malformed_subscriptions_get_4400_with_a_reason(relay: Platform) -> None:
    tenant = relay.new_tenant("malformed")
    auth = {"Authorization": f"Bearer {tenant['token']}"}
    for bad in ("abc", "1-", "-1", "1-2-3", "1.5-0", "99999999999999999999999-0", "1700000000000"):
        code, reason, received = await refused(relay.url, headers=auth, last_event_id=bad)
        assert (code, received) == (4400, []) and "last_event_id" in reason, bad
    code, reason, received = await refused(relay.url, headers=auth, query="last_event_id=1-0&last_event_id=2-0")
    assert (code, received) == (4400, []) and "more than once" in reason
    status, body = http("GET", relay.url + "/ws")
    assert status == 426 and "WebSocket" in body["error"]
    assert relay.subsystem("broadcaster")["state"] == "RUNNING" and relay.subsystem("api")["state"] == "RUNNING"


async def test_progress_shows_clients_and_lag(relay: Platform) -> None:
    tenant = relay.new_tenant("progress")
    client = Subscriber(relay.url, tenant["token"], reconnect=True)
    reader = asyncio.create_task(client.run(200, timeout_s=60))
    await asyncio.wait_for(client.opened.wait(), 10)
    # Progress is read from the registry itself: the API's /admin/liveness may be a second old,
    # and while the API actor is blocked (below) it serves nothing.
    health = NamedActor(HEALTH_ACTOR, relay.settings.ray_namespace)
    every_tenant = len(relay.get("/admin/tenants?limit=1000")[1]["tenants"])

    def serving() -> dict | None:  # the client connected, and every tenant's stream read (this one's too)
        p = health.call_sync("snapshot", timeout_s=5)["subsystems"]["broadcaster"]["progress"]
        return p if p["clients"] >= 1 and p["tenants"] >= every_tenant else None

    progress = await asyncio.to_thread(wait_for, serving, 10)
    assert progress["lag_events"] == 0 and progress["api_reachable"] is True
    # While the API actor does not take deliveries, the lag shows.
    relay.fault("api", "block", seconds=6)
    written = Writer(relay.settings.redis_url).write(tenant["id"], 200)

    def lagging() -> dict | None:
        p = health.call_sync("snapshot", timeout_s=5)["subsystems"]["broadcaster"]["progress"]
        return p if p["lag_events"] >= 200 and p["api_reachable"] is False else None

    behind = await asyncio.to_thread(wait_for, lagging, 30)
    assert behind["lag_s"] > 0
    await reader  # and once the API is back, nothing is missing
    assert client.ids == written
    await asyncio.to_thread(wait_for, lambda: relay.subsystem("broadcaster")["progress"]["lag_events"] == 0, 30)


async def test_one_tenants_corrupt_stream_never_stops_the_others(relay: Platform) -> None:
    bad, good = relay.new_tenant("corrupt"), relay.new_tenant("healthy")
    store = sync_redis(relay.settings.redis_url)
    writer = Writer(relay.settings.redis_url)
    client = Subscriber(relay.url, good["token"])
    reader = asyncio.create_task(client.run(4, timeout_s=60))
    await asyncio.wait_for(client.opened.wait(), 10)
    try:
        # An entry this platform did not write, between two good ones: skipped, counted.
        first = writer.write(good["id"], 2)
        store.xadd(keys.events(good["id"]), {"junk": "\xff not an event"})
        # The other tenant's events key is not a stream at all: XREAD over it fails.
        store.set(keys.events(bad["id"]), "not a stream")
        # Reads go on with the bad key in the tenant list (it is screened out, not fatal).
        await asyncio.to_thread(wait_for, lambda: relay.subsystem("broadcaster")["quarantined"] >= 1, 30)
        later = writer.write(good["id"], 2, start=2)
        await reader
        assert client.ids == first + later
        sub = await asyncio.to_thread(
            wait_for, lambda: (s := relay.subsystem("broadcaster"))["quarantined"] >= 1 and s, 30
        )
        assert sub["state"] == "RUNNING" and sub["progress"]["malformed"] >= 1
        # Repaired (the key becomes a stream again): released, and its events flow.
        store.delete(keys.events(bad["id"]))
        late = Subscriber(relay.url, bad["token"], last_event_id="0-0")
        written = writer.write(bad["id"], 3)
        await late.run(3, timeout_s=30)
        assert late.ids == written
        await asyncio.to_thread(wait_for, lambda: relay.subsystem("broadcaster")["quarantined"] == 0, 30)
    finally:
        store.delete(keys.events(bad["id"]))


@pytest.fixture(scope="module")
def fuzz_tenant(relay: Platform) -> dict:
    return relay.new_tenant("fuzz")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(value=f"{2**64 - 1}-{2**64 - 1}")  # the largest id: nothing can follow it
@example(value=f"{2**64}-0")
@example(value="0-0")
@given(value=st.one_of(st.text(max_size=60), st.from_regex(r"[0-9]{1,21}-[0-9]{1,21}", fullmatch=True)))
def test_any_last_event_id_is_a_stream_or_a_4400(relay: Platform, fuzz_tenant: dict, value: str) -> None:
    auth = {"Authorization": f"Bearer {fuzz_tenant['token']}"}

    async def attempt() -> tuple[int | None, str]:
        """A pong means the stream is open; otherwise the close code and reason."""
        async with connect(ws_url(relay.url, last_event_id=value), additional_headers=auth) as ws:
            try:
                await asyncio.wait_for(await ws.ping(), 10)
                return None, "open"
            except ConnectionClosed as closed:
                return (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else (None, "no close frame")

    code, reason = asyncio.run(attempt())
    if parse_id(value) is not None:
        assert (code, reason) == (None, "open"), value
    else:
        assert code == 4400 and "last_event_id" in reason, (value, code, reason)


async def test_tenants_stored_before_the_index_existed_are_indexed(redis_url: str) -> None:
    store = redis_connect(redis_url)
    old = new_id()
    await store.hset(keys.tenant(old), mapping={"id": old, "name": "older", "token_sha256": "x"})
    await store.sadd(keys.tenant_workspaces(old), new_id())  # a set under the same prefix: not a tenant
    index = keys.tenants(keys.shard_of(old))
    assert not await store.sismember(index, old)
    assert await index_existing(store) >= 1
    assert await store.sismember(index, old)
    assert not await store.sismember(index, f"{old}:workspaces")
    await store.aclose()
