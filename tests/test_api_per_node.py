"""API_PER_NODE on one node: the API reads its own clients' streams (no broadcaster runs), and
every client gets its tenant's events once, in order, across replay and live reads."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from actors.broadcaster import Broadcaster
from store import keys
from tests.support import Platform, start_platform, sync_redis, wait_for
from tests.ws_client import Subscriber, Writer


@pytest.fixture(scope="module")
def per_node(ray_session: dict, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    deployed = start_platform(
        redis_url, tmp_path_factory.mktemp("per-node"), subsystems=[Broadcaster], api_per_node=True
    )
    yield deployed
    deployed.close()


async def test_clients_get_their_tenants_events_in_order_from_the_apis_own_reader(per_node: Platform) -> None:
    platform = per_node
    assert "broadcaster" not in platform.liveness()["subsystems"]  # its reads are the API's now
    a, b = platform.new_tenant("own-a"), platform.new_tenant("own-b")
    clients = {t["id"]: [Subscriber(platform.url, t["token"]) for _ in range(3)] for t in (a, b)}
    per_tenant = 3_000
    readers = [asyncio.create_task(c.run(per_tenant, timeout_s=120)) for cs in clients.values() for c in cs]
    await asyncio.wait_for(asyncio.gather(*(c.opened.wait() for cs in clients.values() for c in cs)), 10)
    written = await Writer(platform.settings.redis_url).paced([a["id"], b["id"]], per_tenant, batch=100, pause_s=0.01)
    await asyncio.gather(*readers)
    for tenant_id, ids in zip((a["id"], b["id"]), written, strict=True):
        for client in clients[tenant_id]:
            assert client.ids == ids  # all of them, in order, once: nothing else
            assert {e["tenant_id"] for e in client.events} == {tenant_id}
    # What it read reaches /admin/liveness with its next beats.
    await asyncio.to_thread(
        wait_for, lambda: platform.subsystem("api")["progress"]["events_read"] >= 2 * per_tenant, 15
    )


async def test_a_new_tenants_first_client_misses_nothing_between_its_replay_and_live_reads(per_node: Platform) -> None:
    """Tenants whose first client comes while others stream: each is read from its client's start."""
    platform = per_node
    writer = Writer(platform.settings.redis_url)
    busy = platform.new_tenant("busy")
    steady = Subscriber(platform.url, busy["token"])
    steady_reader = asyncio.create_task(steady.run(1_500, timeout_s=60))
    await asyncio.wait_for(steady.opened.wait(), 10)
    background = asyncio.create_task(writer.paced([busy["id"]], 1_500, batch=50, pause_s=0.01))
    late = []
    for n in range(5):
        tenant = platform.new_tenant(f"late-{n}")
        history = writer.write(tenant["id"], 300)
        client = Subscriber(platform.url, tenant["token"], last_event_id=history[99])
        live = asyncio.create_task(writer.paced([tenant["id"]], 300, batch=30, pause_s=0.005))
        late.append((client, history[100:], live, asyncio.create_task(client.run(200 + 300, timeout_s=60))))
    for client, replayed, live, running in late:
        await running
        assert client.ids == replayed + (await live)[0]
    await steady_reader
    assert steady.ids == (await background)[0]


async def test_a_corrupt_stream_is_left_out_and_the_other_tenants_flow(per_node: Platform) -> None:
    platform = per_node
    bad, good = platform.new_tenant("own-corrupt"), platform.new_tenant("own-healthy")
    store = sync_redis(platform.settings.redis_url)
    writer = Writer(platform.settings.redis_url)
    victim = Subscriber(platform.url, bad["token"])
    client = Subscriber(platform.url, good["token"])
    reader = asyncio.create_task(client.run(4, timeout_s=60))
    bad_reader = asyncio.create_task(victim.run(1, timeout_s=60))
    await asyncio.wait_for(asyncio.gather(client.opened.wait(), victim.opened.wait()), 10)
    try:
        first = writer.write(good["id"], 2)
        store.set(keys.events(bad["id"]), "not a stream")  # XREAD over it fails
        later = writer.write(good["id"], 2, start=2)
        await reader
        assert client.ids == first + later
        assert platform.subsystem("api")["state"] == "RUNNING"
    finally:
        store.delete(keys.events(bad["id"]))
        bad_reader.cancel()
        await asyncio.gather(bad_reader, return_exceptions=True)
    # Repaired: its live events flow again (the key is looked at again within a screening
    # period), and the API never restarted for it.
    again = Subscriber(platform.url, bad["token"])
    reading = asyncio.create_task(again.run(3, timeout_s=30))
    await asyncio.wait_for(again.opened.wait(), 10)
    written = writer.write(bad["id"], 3)
    await reading
    assert again.ids == written
    assert platform.subsystem("api")["restarts"] == {"exception": 0, "process": 0, "stalled": 0}
