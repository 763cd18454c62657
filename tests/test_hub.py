"""The WebSocket hub on its own: routing by tenant, bounded queues, overflow, re-deliveries."""

from __future__ import annotations

import pytest

from api.hub import Hub


def events(*ns: int) -> list[tuple[str, str]]:
    return [(f"{n}-0", f'{{"n":{n}}}') for n in ns]


def queued(*ns: int) -> list[tuple[tuple[int, int], str]]:
    return [((n, 0), f'{{"n":{n}}}') for n in ns]


async def test_events_go_to_their_tenants_clients_only_in_order() -> None:
    hub = Hub(queue_size=10)
    a1, a2, b = hub.register("a"), hub.register("a"), hub.register("b")
    hub.publish({"a": events(1, 2), "c": events(9)})
    hub.publish({"a": events(3), "b": events(4)})
    assert a1.take() == a2.take() == queued(1, 2, 3)
    assert b.take() == queued(4)
    assert not a1.ready.is_set() and a1.take() == []
    assert hub.clients == 3


async def test_redeliveries_take_no_queue_space() -> None:
    hub = Hub(queue_size=3)
    client = hub.register("a")
    hub.publish({"a": events(1, 2)})
    hub.publish({"a": events(1, 2)})  # a broadcaster restarted after delivering, before saving
    hub.publish({"a": events(3)})
    assert not client.overflowed  # 3 queued, not 5
    assert client.take() == queued(1, 2, 3)


async def test_a_client_more_than_its_queue_behind_overflows_alone_and_is_let_go() -> None:
    hub = Hub(queue_size=3)
    slow, fast = hub.register("a"), hub.register("a")
    hub.publish({"a": events(1, 2)})
    assert fast.take() == queued(1, 2)
    hub.publish({"a": events(3, 4)})  # slow now holds 4 > 3
    assert slow.overflowed and slow.take() == []
    assert not fast.overflowed and fast.take() == queued(3, 4)
    assert hub.clients == 1 and hub.overflows == 1  # the hub holds nothing for it any more
    hub.readmit(slow)
    slow.newest = (4, 0)  # its connection re-read the stream up to 4
    hub.publish({"a": events(4, 5)})
    assert slow.take() == queued(5) and hub.clients == 2


async def test_unregistered_clients_get_nothing() -> None:
    hub = Hub(queue_size=3)
    client = hub.register("a")
    hub.unregister(client)
    hub.unregister(client)  # twice is harmless
    hub.publish({"a": events(1)})
    assert client.take() == [] and hub.clients == 0


def test_queue_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="queue_size"):
        Hub(queue_size=0)


async def test_a_revocation_reaches_the_named_connections_overflowed_or_not_and_close_lets_go() -> None:
    hub = Hub(queue_size=1)
    old, behind, new = (hub.register("a", member=m, digest=d) for m, d in (("m1", "x"), ("m2", "x"), ("m3", "y")))
    hub.publish({"a": events(1)})
    hub.publish({"a": events(2)})  # every one of them is behind now: none is queued for
    assert old.overflowed and behind.overflowed and hub.clients == 0
    assert hub.held() == {"a": {"m1": "x", "m2": "x", "m3": "y"}}  # held until their connections end
    assert hub.revoke("a", "replaced", {"m1", "m2"}) == 2
    assert old.revoked == behind.revoked == "replaced" and new.revoked is None
    hub.readmit(behind)  # it had re-read the stream: it closes instead of being queued for
    assert behind.ready.is_set() and hub.clients == 0
    hub.readmit(new)
    assert hub.clients == 1
    for client in (old, behind, new):
        hub.close(client)
    assert hub.held() == {} and hub.clients == 0
    assert len({hub.new_member(), hub.new_member()}) == 2
