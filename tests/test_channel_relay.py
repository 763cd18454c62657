"""ChatQueues: in order per chat, chats at once, a failing item retried in place; and A2A reply texts."""

from __future__ import annotations

import asyncio

from actors.a2a_client import reply_texts
from actors.channels.relay import ChatQueues


async def until(condition, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async def poll() -> None:
        while not condition():  # noqa: ASYNC110 (the condition is the queues' tasks' progress)
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout_s)


async def test_each_chat_in_order_and_the_chats_at_once() -> None:
    done: list[tuple[str, int]] = []
    running = 0
    peak = 0

    async def handle(item: tuple[str, int]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001 * (item[1] % 3))
        done.append(item)
        running -= 1

    queues = ChatQueues(handle, room=1000)
    for i in range(20):
        for chat in "abcdef":
            queues.add(chat, (chat, i))
    await until(lambda: queues.backlog == 0)
    assert peak == 6  # one per chat
    for chat in "abcdef":
        assert [i for c, i in done if c == chat] == list(range(20))
    assert queues.handled == 120 and queues.in_flight == 0


async def test_a_blocked_chat_holds_only_its_own_queue() -> None:
    gate = asyncio.Event()
    done: list[str] = []

    async def handle(item: str) -> None:
        if item == "a1":
            await gate.wait()
        done.append(item)

    queues = ChatQueues(handle, room=1000)
    for item in ("a1", "a2", "b1", "b2", "c1"):
        queues.add(item[0], item)
    await until(lambda: len(done) >= 3)
    assert done == ["b1", "b2", "c1"]  # a2 waits behind a1; b and c are not held up
    gate.set()
    await until(lambda: queues.backlog == 0)
    assert done[3:] == ["a1", "a2"]


async def test_a_failing_item_is_retried_in_place_and_order_kept() -> None:
    failures = {"x1": 2}
    delays: list[float] = []
    done: list[str] = []

    async def handle(item: str) -> None:
        if failures.get(item, 0):
            failures[item] -= 1
            raise ConnectionError("redis down")
        done.append(item)

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    queues = ChatQueues(handle, room=1000, sleep=sleep)
    for item in ("x1", "x2", "x3"):
        queues.add("x", item)
    await until(lambda: queues.backlog == 0)
    assert done == ["x1", "x2", "x3"] and delays == [1.0, 2.0] and queues.retries == 2


async def test_room_blocks_at_the_bound_and_opens_as_items_finish() -> None:
    gate = asyncio.Event()

    async def handle(item: int) -> None:
        await gate.wait()

    queues = ChatQueues(handle, room=3)
    for i in range(3):
        queues.add(str(i), i)
    waiter = asyncio.create_task(queues.room())
    for _ in range(10):  # let every task run; nothing may open the room while the handler waits
        await asyncio.sleep(0)
    assert not waiter.done()
    gate.set()
    await asyncio.wait_for(waiter, 5)
    await queues.close()


def test_reply_texts_of_both_protocol_versions() -> None:
    v10_message = {"message": {"role": "ROLE_AGENT", "parts": [{"text": "a"}, {"data": {}}, {"text": "b"}]}}
    v03_message = {"kind": "message", "role": "agent", "parts": [{"kind": "text", "text": "c"}]}
    v10_task = {
        "task": {
            "status": {"state": "TASK_STATE_COMPLETED", "message": {"parts": [{"text": "status"}]}},
            "artifacts": [{"parts": [{"text": "d"}]}, {"parts": [{"text": "e"}]}],
        }
    }
    v03_task = {"kind": "task", "status": {"state": "completed", "message": {"parts": [{"kind": "text", "text": "f"}]}}}
    assert reply_texts(v10_message) == ["a", "b"]
    assert reply_texts(v03_message) == ["c"]
    assert reply_texts(v10_task) == ["d", "e"]  # artifacts first; the status message only without them
    assert reply_texts(v03_task) == ["f"]
    assert reply_texts(None) == [] and reply_texts({"message": "x"}) == []
