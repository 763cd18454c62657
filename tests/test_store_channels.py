"""store.channels against a real Redis: bot bindings, inboxes with their events, status and quarantine."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis
from cryptography.fernet import Fernet

from store import channels, keys, shards
from store.channels import BotTaken, Channel, Conflict, FencedOut, Inbound
from store.records import new_id
from store.secrets import SecretBox

BOX = SecretBox(Fernet.generate_key().decode())
NOW = 1_800_000_000.0


def token(bot: int) -> str:
    return f"{bot}:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


async def created(store: aioredis.Redis, tenant_id: str, bot: int, **extra: object) -> Channel:
    body = {"workspace_id": new_id(), "type": "telegram", "config": {"bot_token": token(bot)}}
    made = await channels.create(store, BOX, tenant_id, {"allowed_chats": None, "enabled": True, **body, **extra}, NOW)
    raw = await channels.read_one(store, made["id"])
    return Channel.parse(made["id"], raw, BOX)


async def events_of(store: aioredis.Redis, tenant_id: str) -> list[dict]:
    entries = await store.xrange(keys.events(tenant_id))
    return [{"event": f[b"event"].decode(), **json.loads(f[b"payload"])} for _, f in entries]


async def test_a_bot_is_bound_to_one_channel_even_when_two_are_created_at_once(store: aioredis.Redis) -> None:
    tenant_id = new_id()
    results = await asyncio.gather(*(created(store, tenant_id, 111) for _ in range(4)), return_exceptions=True)
    assert sum(isinstance(r, Channel) for r in results) == 1
    assert all(isinstance(r, BotTaken) for r in results if not isinstance(r, Channel))
    (winner,) = [r for r in results if isinstance(r, Channel)]
    assert await store.hget(keys.telegram_bot("111"), "channel") == winner.id.encode()
    assert await channels.ids(store) == [winner.id]


async def test_a_patch_moves_the_binding_and_resets_the_offset(store: aioredis.Redis) -> None:
    tenant_id = new_id()
    first, second = await created(store, tenant_id, 111), await created(store, tenant_id, 222)
    await store.set(keys.channel_offset(first.id), 42)
    with pytest.raises(BotTaken):
        await channels.patch(store, BOX, tenant_id, first.id, {"config": {"bot_token": token(222)}}, NOW)
    patched = await channels.patch(store, BOX, tenant_id, first.id, {"config": {"bot_token": token(333)}}, NOW)
    assert patched is not None and patched["status"] == "starting"
    assert await channels.offset(store, first.id) == 0
    assert await channels.bot_owners(store, ["111", "222", "333"]) == {"111": "", "222": second.id, "333": first.id}
    raw = await channels.read_one(store, first.id)
    assert raw is not None and raw[b"revision"] == b"2"
    assert await channels.patch(store, BOX, new_id(), first.id, {"enabled": False}, NOW) is None
    await channels.delete(store, tenant_id, second.id, "222")
    assert await channels.bot_owners(store, ["222", "333"]) == {"222": "", "333": first.id}
    assert await channels.read_one(store, second.id) is None


async def test_a_polled_batch_goes_in_with_its_events_and_offset_or_not_at_all(store: aioredis.Redis) -> None:
    tenant_id = new_id()
    channel = await created(store, tenant_id, 111, allowed_chats=["1"])
    batch = [Inbound("1", "10", "hello", "ann"), Inbound("2", "11", "not allowed")]
    kept = await channels.accept_batch(store, channel, batch, offset=0, next_offset=12, max_len=100, now=NOW)
    assert kept == 1 and await channels.offset(store, channel.id) == 12
    page = (await channels.inbox_after(store, {channel.id: "0-0"}, 10))[channel.id]
    assert [Inbound.from_fields(fields) for _, fields in page] == [Inbound("1", "10", "hello", "ann")]
    assert [e["event"] for e in await events_of(store, tenant_id)] == ["CHANNEL_MESSAGE"]
    # A second poller with the old offset records nothing.
    with pytest.raises(Conflict):
        await channels.accept_batch(store, channel, batch, offset=0, next_offset=12, max_len=100, now=NOW)
    assert len((await channels.inbox_after(store, {channel.id: "0-0"}, 10))[channel.id]) == 1


async def test_a_pushed_message_is_accepted_once(store: aioredis.Redis) -> None:
    tenant_id = new_id()
    channel = await created(store, tenant_id, 111)
    message = Inbound("C1", "1700000000.000100", "hi", "U1")
    assert await channels.accept_once(store, channel, message, "Ev1", max_len=100, now=NOW) == 1
    assert await channels.accept_once(store, channel, message, "Ev1", max_len=100, now=NOW) == 0  # retried
    assert await channels.accept_once(store, channel, message, "Ev2", max_len=100, now=NOW) == 0  # same message
    assert [e["event_id"] for e in await events_of(store, tenant_id)] == ["Ev1"]
    await store.delete(keys.channel(channel.id))
    assert await channels.accept_once(store, channel, Inbound("C1", "2", "x"), "Ev3", max_len=100, now=NOW) == -1


async def test_a_full_inbox_refuses_a_pushed_message(store: aioredis.Redis) -> None:
    channel = await created(store, new_id(), 111)
    async with store.pipeline(transaction=False) as pipe:
        for n in range(channels.INBOX_MAX):
            pipe.xadd(keys.channel_inbox(channel.id), Inbound("C", str(n), "x").fields())
        await pipe.execute()
    assert await channels.accept_once(store, channel, Inbound("C", "new", "x"), "Ev", max_len=10, now=NOW) == -2


async def test_an_answer_is_recorded_once_and_takes_the_message_out(store: aioredis.Redis) -> None:
    tenant_id = new_id()
    channel = await created(store, tenant_id, 111)
    await channels.accept_batch(
        store, channel, [Inbound("1", "10", "q")], offset=0, next_offset=11, max_len=10, now=NOW
    )
    ((entry_id, _),) = (await channels.inbox_after(store, {channel.id: "0-0"}, 10))[channel.id]
    payload = {"chat_id": "1", "in_reply_to": "10", "text": "a", "status": "ok", "error": None}
    assert await channels.finish(store, channel, entry_id.decode(), payload, max_len=10) is True
    assert await channels.finish(store, channel, entry_id.decode(), payload, max_len=10) is False
    assert (await channels.inbox_after(store, {channel.id: "0-0"}, 10))[channel.id] == []
    out = [e for e in await events_of(store, tenant_id) if e["direction"] == "out"]
    assert len(out) == 1 and out[0]["text"] == "a"


async def test_status_is_written_at_its_revision_and_a_quarantine_sticks_until_a_patch(store: aioredis.Redis) -> None:
    tenant_id = new_id()
    channel = await created(store, tenant_id, 111)
    assert await channels.set_status(store, channel.id, "1", "running", "") is True
    assert await channels.set_status(store, channel.id, "0", "backoff", "old") is False  # a stale revision
    assert await channels.quarantine(store, channel, "token revoked", max_len=10) is True
    assert await channels.quarantine(store, channel, "token revoked", max_len=10) is False  # announced once
    assert await channels.set_status(store, channel.id, "1", "running", "") is False
    raw = await channels.read_one(store, channel.id)
    assert raw is not None and (raw[b"status"], raw[b"last_error"]) == (b"quarantined", b"token revoked")
    assert [e["event"] for e in await events_of(store, tenant_id)] == ["CHANNEL_QUARANTINED"]
    await channels.patch(store, BOX, tenant_id, channel.id, {"enabled": True}, NOW)
    assert await channels.set_status(store, channel.id, "2", "running", "") is True


async def test_a_record_that_cannot_run_is_quarantined_as_stored(store: aioredis.Redis) -> None:
    tenant_id = new_id()
    channel = await created(store, tenant_id, 111)
    await store.hset(keys.channel(channel.id), "config", "garbage")
    assert await channels.quarantine_record(store, channel.id, "config cannot be decrypted", max_len=10) is True
    assert await channels.quarantine_record(store, channel.id, "again", max_len=10) is False
    assert [e["error"] for e in await events_of(store, tenant_id)] == ["config cannot be decrypted"]
    nameless = await created(store, new_id(), 222)
    await store.hset(keys.channel(nameless.id), "tenant_id", "not-an-id")
    assert await channels.quarantine_record(store, nameless.id, "bad tenant", max_len=10) is True  # no event: no tenant
    await store.set(keys.channel(new_id()), "not a hash")
    assert await channels.quarantine_record(store, new_id(), "gone", max_len=10) is False


async def test_entries_are_read_per_channel_and_foreign_ones_dropped(store: aioredis.Redis) -> None:
    a, b = await created(store, new_id(), 111), await created(store, new_id(), 222)
    first = (await store.xadd(keys.channel_inbox(a.id), {"junk": "1"})).decode()
    second = (await store.xadd(keys.channel_inbox(a.id), Inbound("1", "2", "x").fields())).decode()
    pages = await channels.inbox_after(store, {a.id: "0-0", b.id: "0-0"}, 10)
    assert [e[0].decode() for e in pages[a.id]] == [first, second] and pages[b.id] == []
    assert [e[0].decode() for e in (await channels.inbox_after(store, {a.id: first}, 10))[a.id]] == [second]
    await channels.drop_entry(store, a.id, first)
    assert [e[0].decode() for e in (await channels.inbox_after(store, {a.id: "0-0"}, 10))[a.id]] == [second]


async def test_a_wake_reaches_a_listener(store: aioredis.Redis) -> None:
    heard: list[str] = []

    async def listen() -> None:
        async for channel_id in channels.woken(store):
            heard.append(channel_id)

    listener = asyncio.create_task(listen())
    for _ in range(50):
        await channels.wake(store, "c1")
        if heard:
            break
        await asyncio.sleep(0.05)
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    assert heard and set(heard) == {"c1"}


async def test_a_quarantined_channel_lets_go_of_its_bot_and_a_patch_takes_it_back(store: aioredis.Redis) -> None:
    tenant_id = new_id()
    channel = await created(store, tenant_id, 111)
    assert await store.hget(keys.telegram_bot("111"), "channel") == channel.id.encode()
    await channels.quarantine(store, channel, "token revoked", max_len=10)
    assert await store.hget(keys.telegram_bot("111"), "channel") is None  # its owner may bind it again
    patched = await channels.patch(store, BOX, tenant_id, channel.id, {"enabled": True}, NOW)
    assert patched is not None and await store.hget(keys.telegram_bot("111"), "channel") == channel.id.encode()
    other = await created(store, tenant_id, 222)
    await store.hset(keys.channel(other.id), "config", "garbage")
    await channels.quarantine_record(store, other.id, "config cannot be decrypted", max_len=10)
    assert await store.hget(keys.telegram_bot("222"), "channel") is None


async def test_an_operator_lists_and_releases_quarantined_channels(store: aioredis.Redis) -> None:
    tenant_id = new_id()
    revoked, damaged, running = [await created(store, tenant_id, bot) for bot in (311, 312, 313)]
    assert await channels.quarantine(store, revoked, "token revoked", max_len=10)
    await store.hset(keys.channel(damaged.id), mapping={"tenant_id": "", "revision": "x"})
    assert await channels.quarantine_record(store, damaged.id, "bad ids", max_len=10)
    items = {item["key"]: item for item in await channels.quarantined(store)}
    assert set(items) == {revoked.id, damaged.id}
    assert items[revoked.id]["tenant_id"] == tenant_id and items[revoked.id]["error"] == "token revoked"
    assert items[revoked.id]["since"].endswith("Z") and items[damaged.id]["tenant_id"] is None
    assert await channels.release(store, BOX, running.id, NOW) is False  # not quarantined
    assert await channels.release(store, BOX, revoked.id, NOW) is True
    raw = await channels.read_one(store, revoked.id)
    assert raw is not None and (raw[b"status"], raw[b"revision"]) == (b"starting", b"2")  # as after a PATCH
    assert await store.hget(keys.telegram_bot("311"), "channel") == revoked.id.encode()  # its bot bound again
    assert await channels.release(store, BOX, damaged.id, NOW) is True  # tried again as it is
    assert await channels.quarantined(store) == []


async def test_a_batch_and_an_answer_with_a_stale_fence_write_nothing(store: aioredis.Redis) -> None:
    """A channel manager that lost its channel's shard can neither record a poll nor mark an answer."""
    channel = await created(store, new_id(), 111)
    shard = keys.shard_of(channel.id)
    old = (await shards.acquire(store, "ns", "channel-manager", "a#1", 10_000, {shard: ""}))[shard]
    fence_a = shards.fence_of(shard, "ns", "channel-manager", old.token_or_owner)
    await channels.accept_batch(
        store, channel, [Inbound("1", "10", "q")], offset=0, next_offset=11, max_len=10, now=NOW, fence=fence_a
    )
    await shards.release(store, "ns", "channel-manager", "a#1", shard, old.token_or_owner)
    new = (await shards.acquire(store, "ns", "channel-manager", "b#1", 10_000, {shard: ""}))[shard]
    fence_b = shards.fence_of(shard, "ns", "channel-manager", new.token_or_owner)
    with pytest.raises(FencedOut):
        await channels.accept_batch(
            store, channel, [Inbound("1", "11", "q2")], offset=11, next_offset=12, max_len=10, now=NOW, fence=fence_a
        )
    assert await channels.offset(store, channel.id) == 11  # nothing moved: b polls from here
    ((entry_id, _),) = (await channels.inbox_after(store, {channel.id: "0-0"}, 10))[channel.id]
    payload = {"chat_id": "1", "in_reply_to": "10", "text": "a", "status": "ok", "error": None}
    with pytest.raises(FencedOut):
        await channels.finish(store, channel, entry_id.decode(), payload, max_len=10, fence=fence_a)
    assert len((await channels.inbox_after(store, {channel.id: "0-0"}, 10))[channel.id]) == 1  # still b's to answer
    assert await channels.finish(store, channel, entry_id.decode(), payload, max_len=10, fence=fence_b) is True
    await channels.accept_batch(
        store, channel, [Inbound("1", "11", "q2")], offset=11, next_offset=12, max_len=10, now=NOW, fence=fence_b
    )
    assert await channels.offset(store, channel.id) == 12
