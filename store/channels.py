"""Channels: a tenant's Telegram bots and Slack apps bound to a workspace, and their inboxes.

A channel is a `channel:{id}` hash. Its secrets (bot token, signing secret) are one Fernet
token in the `config` field and are never shown. Inbound messages are appended to the
channel's inbox stream together with their event, in one atomic step, and deleted from it
once answered, so the inbox is exactly the messages still to relay.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError, WatchError

from store import client, events, keys
from store.keys import ALL_SHARDS, shard_of
from store.quotas import QuotaExceeded, within
from store.records import (
    decode,
    decode_lenient,
    is_id,
    list_owned,
    new_id,
    now_rfc3339,
    optional,
    read_hashes,
    read_owned,
    to_hash,
    union,
)
from store.scripts import Lua
from store.secrets import SecretBox
from store.shards import FENCED_FN, Fence, fenced_keys, valid

TYPES = ("telegram", "slack")
SECRET_FIELDS = {"telegram": ("bot_token",), "slack": ("bot_token", "signing_secret")}
# `starting`: created or changed, not yet taken up by the channel manager.
STATUSES = ("starting", "running", "backoff", "quarantined", "disabled")
EDITABLE = ("workspace_id", "type", "config", "allowed_chats", "enabled")
INBOX_MAX = 1000  # per channel; beyond it Telegram polling pauses and Slack is answered 503 (it retries)
SEEN_TTL_S = 24 * 3600  # Slack retries for minutes; an accepted event id is remembered for a day
ALLOWED_CHATS_MAX = 1000
EVENT_TEXT_MAX = 4000
TELEGRAM_TOKEN = re.compile(r"[0-9]{1,20}:[A-Za-z0-9_-]{20,200}")
CHAT_ID = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")


# -- validation ----------------------------------------------------------------------------


def check_config(channel_type: str, config: Any) -> dict[str, str]:
    """The channel's secrets, checked for its type; ValueError naming the field."""
    if not isinstance(config, dict):
        raise ValueError("config: must be an object")
    fields = SECRET_FIELDS[channel_type]
    unknown = set(config) - set(fields)
    if unknown:
        raise ValueError(f"config: unknown field(s) for {channel_type}: {', '.join(sorted(map(str, unknown)))}")
    for name in fields:
        value = config.get(name)
        if not isinstance(value, str) or not value or len(value) > 512 or not value.isprintable() or " " in value:
            raise ValueError(f"config.{name}: required, a string of at most 512 printable characters")
    if channel_type == "telegram" and not TELEGRAM_TOKEN.fullmatch(config["bot_token"]):
        raise ValueError("config.bot_token: not a Telegram bot token (<bot id>:<secret>)")
    return {name: config[name] for name in fields}


def check_allowed_chats(value: Any) -> list[str] | None:
    """Chat ids as strings (Telegram's numbers included), or None for any chat; ValueError naming the field."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > ALLOWED_CHATS_MAX:
        raise ValueError(f"allowed_chats: must be a list of at most {ALLOWED_CHATS_MAX} chat ids, or null")
    chats = []
    for chat in value:
        text = str(chat) if isinstance(chat, int) and not isinstance(chat, bool) else chat
        if not isinstance(text, str) or not CHAT_ID.fullmatch(text):
            raise ValueError(f"allowed_chats: {chat!r} is not a chat id")
        chats.append(text)
    return sorted(set(chats))


@dataclass(frozen=True)
class Channel:
    """A channel record as the channel manager runs it: checked, secrets opened."""

    id: str
    tenant_id: str
    workspace_id: str
    type: str
    secrets: dict[str, str]
    allowed_chats: frozenset[str] | None
    enabled: bool
    revision: str
    status: str

    @classmethod
    def parse(cls, channel_id: str, raw: Any, box: SecretBox) -> Channel:
        """Raises ValueError (or UnicodeDecodeError) naming what is corrupt."""
        if not isinstance(raw, dict) or not raw:
            raise ValueError(f"channel {channel_id} has no readable record")
        fields = decode(raw)
        for name in ("tenant_id", "workspace_id"):
            if not is_id(fields.get(name, "")):
                raise ValueError(f"{name} is missing or malformed")
        channel_type = fields.get("type", "")
        if channel_type not in TYPES:
            raise ValueError(f"type {channel_type!r} is not one of {', '.join(TYPES)}")
        secrets = check_config(channel_type, box.open(fields.get("config", "")))
        allowed = fields.get("allowed_chats", "")
        try:
            chats = check_allowed_chats(json.loads(allowed)) if allowed else None
        except json.JSONDecodeError:
            raise ValueError("allowed_chats is not JSON") from None
        return cls(
            id=channel_id,
            tenant_id=fields["tenant_id"],
            workspace_id=fields["workspace_id"],
            type=channel_type,
            secrets=secrets,
            allowed_chats=None if chats is None else frozenset(chats),
            enabled=fields.get("enabled") == "true",
            revision=fields.get("revision", ""),
            status=fields.get("status", ""),
        )

    def allows(self, chat_id: str) -> bool:
        return self.allowed_chats is None or chat_id in self.allowed_chats


# -- records -------------------------------------------------------------------------------


def _int(value: str | None) -> int:
    return int(value) if value and value.isdigit() else 0


def public(fields: dict[str, str]) -> dict[str, Any]:
    """A channel hash as the API shows it: secrets named, never shown (tolerant of corrupt hashes)."""
    try:
        allowed = json.loads(fields["allowed_chats"]) if fields.get("allowed_chats") else None
    except json.JSONDecodeError:
        allowed = None
    channel_type = fields.get("type", "")
    return {
        "id": fields.get("id", ""),
        "workspace_id": fields.get("workspace_id", ""),
        "type": channel_type,
        "config": dict.fromkeys(SECRET_FIELDS.get(channel_type, ()), "redacted"),
        "allowed_chats": allowed,
        "enabled": fields.get("enabled") == "true",
        "status": fields.get("status") or "starting",
        "last_error": optional(fields.get("last_error", "")),
        "last_message_at": optional(fields.get("last_message_at", "")),
        "message_count": _int(fields.get("message_count")),
        "created_at": fields.get("created_at", ""),
        "updated_at": fields.get("updated_at", ""),
    }


async def create(
    redis: aioredis.Redis,
    box: SecretBox,
    tenant_id: str,
    body: dict[str, Any],
    now: float,
    *,
    limit: float | None = None,
) -> dict[str, Any]:
    """Store a channel validated by the caller (check_config, check_allowed_chats).

    Raises BotTaken if its Telegram bot is already another channel's, and QuotaExceeded
    (nothing stored) if the tenant has `limit` channels already.
    """
    channel_id = new_id(shard_of(tenant_id))
    bot = bot_of(body["type"], body["config"])
    stamp = now_rfc3339(now)
    record = to_hash(
        {
            "id": channel_id,
            "tenant_id": tenant_id,
            "workspace_id": body["workspace_id"],
            "type": body["type"],
            "config": box.seal(body["config"]),
            "bot_id": bot,
            "allowed_chats": None if body["allowed_chats"] is None else json.dumps(body["allowed_chats"]),
            "enabled": body["enabled"],
            "revision": 1,
            "status": "starting" if body["enabled"] else "disabled",
            "last_error": None,
            "last_message_at": None,
            "message_count": 0,
            "created_at": stamp,
            "updated_at": stamp,
        }
    )
    if bot and not await bind_bot(redis, bot, channel_id):
        raise BotTaken("config.bot_token: this bot is already bound to another channel")
    over: QuotaExceeded | None = None
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await within(pipe, keys.tenant_channels(tenant_id), limit, "channels")
                pipe.multi()
                pipe.hset(keys.channel(channel_id), mapping=record)
                pipe.sadd(keys.tenant_channels(tenant_id), channel_id)
                pipe.sadd(keys.channels(shard_of(channel_id)), channel_id)
                await pipe.execute()
                break
            except WatchError:
                continue
            except QuotaExceeded as exc:
                over = exc  # raised outside the pipeline, whose cleanup would mask it
                break
    if over is not None:
        if bot:
            await release_bot(redis, bot, channel_id)
        raise over
    return public(record)


async def get(redis: aioredis.Redis, tenant_id: str, channel_id: str) -> dict[str, str] | None:
    return await read_owned(redis, keys.channel(channel_id), tenant_id)


async def list_for(
    redis: aioredis.Redis, tenant_id: str, *, after: str | None = None, limit: int = 100
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the tenant's channels, by id, and the next page's cursor (see records.list_owned)."""
    index = keys.tenant_channels(tenant_id)
    return await list_owned(redis, index, keys.channel, tenant_id, public, after=after, limit=limit)


async def patch(
    redis: aioredis.Redis, box: SecretBox, tenant_id: str, channel_id: str, changes: dict[str, Any], now: float
) -> dict[str, Any] | None:
    """Apply validated changes atomically; None if the channel is gone or not the tenant's.

    Every change bumps `revision` and clears the status (a quarantined channel is tried
    again). A Telegram token for another bot binds that bot first (BotTaken, and nothing
    changed, if it is already another channel's), lets go of the old one after, and resets
    the update offset: offsets are per bot. A quarantine released the binding: a PATCH takes
    it back.
    """
    key = keys.channel(channel_id)
    fields = decode_lenient(await read_one(redis, channel_id) or {})
    if fields.get("tenant_id") != tenant_id:
        return None
    bound = ""
    if "config" in changes:
        bound = bot_of(fields.get("type", ""), changes["config"]) or ""
    elif fields.get("type") == "telegram":
        bound = fields.get("bot_id", "")
    if bound and not await bind_bot(redis, bound, channel_id):
        raise BotTaken("config.bot_token: this bot is already bound to another channel")
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(key)
                raw = await pipe.hgetall(key)
                fields = decode_lenient(raw)
                if not raw or fields.get("tenant_id") != tenant_id:
                    break
                old_bot = fields.get("bot_id", "")
                new_bot = bot_of(fields.get("type", ""), changes["config"]) if "config" in changes else old_bot
                if new_bot and new_bot != bound:
                    break  # its type changed since it was read: the bot bound is not the one it wants
                moved = bool(new_bot) and new_bot != old_bot
                updates = {k: v for k, v in changes.items() if k not in ("config", "type")}
                if "allowed_chats" in changes:
                    chats = changes["allowed_chats"]
                    updates["allowed_chats"] = None if chats is None else json.dumps(chats)
                if "config" in changes:
                    updates["config"], updates["bot_id"] = box.seal(changes["config"]), new_bot
                enabled = changes.get("enabled", fields.get("enabled") == "true")
                updates.update(
                    status="starting" if enabled else "disabled", last_error=None, updated_at=now_rfc3339(now)
                )
                stored = to_hash(updates)
                pipe.multi()
                pipe.hset(key, mapping=stored)
                pipe.hincrby(key, "revision", 1)
                if moved:
                    pipe.delete(keys.channel_offset(channel_id))
                await pipe.execute()
                if old_bot and new_bot != old_bot:
                    await release_bot(redis, old_bot, channel_id)
                return public({**fields, **stored})
            except WatchError:
                continue
    if bound and bound != fields.get("bot_id"):
        await release_bot(redis, bound, channel_id)  # bound for a change that did not land
    if not fields or fields.get("tenant_id") != tenant_id:
        return None
    raise Conflict(f"channel {channel_id} changed type while it was patched")


class BotTaken(ValueError):
    """A Telegram bot can be polled by one channel only (Telegram answers a second poller 409)."""


def bot_of(channel_type: str, config: dict[str, str]) -> str | None:
    """The Telegram bot id (the token's public part before ':'); None for other types."""
    return config["bot_token"].partition(":")[0] if channel_type == "telegram" else None


# A bot's binding (`telegram_bot:{bot}`, a hash: channel, at) is global: two tenants may try
# one bot, so it cannot share a slot with either channel. It is taken first and given up last,
# and a binding whose channel no longer wants the bot (gone, quarantined, moved to another
# bot) is free once it is BIND_GRACE_S old: a younger one may belong to a create or PATCH
# still writing its channel. Time is Redis's.
BIND_GRACE_S = 30

# KEYS: the binding. ARGV: channel id, the owner read ("" for none), grace seconds.
# 1: bound; 0: the binding changed since it was read; -1: too young to take over.
_BIND = Lua("""
local now = tonumber(redis.call('TIME')[1])
local found = redis.call('HMGET', KEYS[1], 'channel', 'at')
local owner = found[1] or ''
if owner ~= ARGV[2] then return 0 end
if owner ~= '' and owner ~= ARGV[1] and now - (tonumber(found[2]) or 0) < tonumber(ARGV[3]) then return -1 end
redis.call('HSET', KEYS[1], 'channel', ARGV[1], 'at', now)
return 1
""")

# KEYS: the binding. ARGV: channel id. Lets go only of the channel's own binding.
_UNBIND = Lua("""
if redis.call('HGET', KEYS[1], 'channel') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""")


async def bind_bot(redis: aioredis.Redis, bot: str, channel_id: str) -> bool:
    """Bind the Telegram bot to the channel, unless another channel holds it; whether the channel holds it now."""
    for _ in range(10):
        owner = (await redis.hget(keys.telegram_bot(bot), "channel") or b"").decode()
        if owner == channel_id:
            return True
        if owner and await _wants(redis, owner, bot):
            return False
        bound = await _BIND(redis, [keys.telegram_bot(bot)], [channel_id, owner, BIND_GRACE_S])
        if bound == -1:
            return False
        if bound == 1:
            return True
    raise Conflict(f"the binding of bot {bot} kept changing")


async def bot_owners(redis: aioredis.Redis, bots: Sequence[str]) -> dict[str, str]:
    """The channel each bot is bound to ("" if none), in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for bot in bots:
            pipe.hget(keys.telegram_bot(bot), "channel")
        found = await pipe.execute()
    return {bot: (owner or b"").decode() for bot, owner in zip(bots, found, strict=True)}


async def _wants(redis: aioredis.Redis, channel_id: str, bot: str) -> bool:
    """Whether the channel exists, is not quarantined and polls this bot (its binding is live)."""
    try:
        bot_id, status = await redis.hmget(keys.channel(channel_id), "bot_id", "status")
    except ResponseError:  # not a hash: no channel
        return False
    return bot_id == bot.encode() and status != b"quarantined"


async def release_bot(redis: aioredis.Redis, bot: str, channel_id: str) -> None:
    """Let go of the bot if the channel holds it."""
    await _UNBIND(redis, [keys.telegram_bot(bot)], [channel_id])


async def delete(redis: aioredis.Redis, tenant_id: str, channel_id: str, bot: str = "") -> None:
    """Remove the channel, its inbox (messages not yet relayed are dropped), its offset and its bot binding."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.channel(channel_id), keys.channel_inbox(channel_id), keys.channel_offset(channel_id))
        pipe.srem(keys.tenant_channels(tenant_id), channel_id)
        pipe.srem(keys.channels(shard_of(channel_id)), channel_id)
        await pipe.execute()
    if bot:
        await release_bot(redis, bot, channel_id)


# -- messages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inbound:
    """One message from a chat, as the inbox keeps it."""

    chat_id: str
    message_id: str  # unique within the chat (Telegram message_id, Slack ts)
    text: str
    sender: str = ""
    thread: str = ""  # Slack: the thread to answer in

    def fields(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_fields(cls, raw: dict[bytes, bytes]) -> Inbound:
        """Raises ValueError/UnicodeDecodeError for an entry the platform did not write."""
        fields = decode(raw)
        if not fields.get("chat_id") or not fields.get("message_id") or "text" not in fields:
            raise ValueError("inbox entry lacks chat_id, message_id or text")
        return cls(
            fields["chat_id"], fields["message_id"], fields["text"], fields.get("sender", ""), fields.get("thread", "")
        )

    def a2a_message_id(self, channel: Channel) -> str:
        """The same on every re-delivery, so a workspace can drop duplicates."""
        return f"channel-{channel.type}-{channel.id}:{self.chat_id}:{self.message_id}"


def message_event(channel: Channel, direction: str, payload: dict[str, Any]) -> dict[str, str]:
    """A CHANNEL_MESSAGE event entry; texts are cut to EVENT_TEXT_MAX characters."""
    body = {"channel_id": channel.id, "type": channel.type, "direction": direction, **payload}
    if isinstance(body.get("text"), str):
        body["text"] = body["text"][:EVENT_TEXT_MAX]
    return events.entry("CHANNEL_MESSAGE", channel.tenant_id, channel.workspace_id, body)


class Conflict(RuntimeError):
    """The offset or the channel changed under a batch: another poller, or a delete."""


class FencedOut(Conflict):
    """The channel's shard is no longer this channel manager's (its lease was lost or taken)."""


async def accept_batch(
    redis: aioredis.Redis,
    channel: Channel,
    messages: Iterable[Inbound],
    *,
    offset: int,
    next_offset: int,
    max_len: int,
    now: float,
    fence: Fence | None = None,
) -> int:
    """Append a polled batch to the inbox with its events and move the offset, atomically.

    Messages from chats the channel does not allow are dropped (the offset still moves past
    them). Raises Conflict if the stored offset is not `offset`, or the channel is gone or
    now polls another bot, so two pollers can never both record a batch; FencedOut if
    `fence` (the lease of the channel's shard) is not valid or changes before the write.
    Returns how many were kept.
    """
    kept = [m for m in messages if channel.allows(m.chat_id)]
    offset_key, key = keys.channel_offset(channel.id), keys.channel(channel.id)
    watched = [offset_key, key] + ([fence.lease_key] if fence else [])
    async with redis.pipeline(transaction=True) as pipe:
        for _ in range(10):
            try:
                await pipe.watch(*watched)
                # The lease is watched: if another replica takes it before the write, nothing is written.
                if fence is not None and not await valid(pipe, fence):
                    raise FencedOut(f"channel {channel.id}: shard {fence.shard} is no longer this replica's")
                stored = await pipe.get(offset_key)
                # The channel must still be there and still this bot's: a PATCH to another bot
                # resets the offset, and this bot's offset must not land in the new bot's place.
                bot = (await pipe.hget(key, "bot_id") or b"").decode()
                if int(stored or 0) != offset or bot != bot_of(channel.type, channel.secrets):
                    raise Conflict(f"offset of channel {channel.id} moved, or its bot changed, or it is gone")
                pipe.multi()
                for message in kept:
                    pipe.xadd(keys.channel_inbox(channel.id), message.fields())
                    payload = {"chat_id": message.chat_id, "message_id": message.message_id, "text": message.text}
                    event = message_event(channel, "in", {**payload, "sender": message.sender})
                    await events.append_in(redis, pipe, channel.tenant_id, event, max_len)
                if kept:
                    pipe.hincrby(key, "message_count", len(kept))
                    pipe.hset(key, "last_message_at", now_rfc3339(now))
                pipe.set(offset_key, next_offset)
                await pipe.execute()
                return len(kept)
            except WatchError:
                continue  # a status write to the channel hash: read again
    raise Conflict(f"channel {channel.id} kept changing while its batch was recorded")


# KEYS: channel hash, inbox, events, seen(event id), seen(message), the events' size key.
# ARGV: seen ttl, inbox max, events maxlen, last_message_at, n, then n inbox field/value
# items, then the event's. Returns 1 accepted, 0 a duplicate, -1 no such channel, -2 inbox full.
_ACCEPT_ONCE = Lua(
    events.APPEND_FN
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('EXISTS', KEYS[4]) == 1 or redis.call('EXISTS', KEYS[5]) == 1 then return 0 end
if redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[2]) then return -2 end
redis.call('SET', KEYS[4], '1', 'EX', ARGV[1])
redis.call('SET', KEYS[5], '1', 'EX', ARGV[1])
local n = tonumber(ARGV[5])
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 6, 5 + n))
append_event(KEYS[3], KEYS[6], tonumber(ARGV[3]), 6 + n)
redis.call('HINCRBY', KEYS[1], 'message_count', 1)
redis.call('HSET', KEYS[1], 'last_message_at', ARGV[4])
return 1
"""
)


async def accept_once(
    redis: aioredis.Redis, channel: Channel, message: Inbound, event_id: str, *, max_len: int, now: float
) -> int:
    """Append one pushed message (a Slack event) unless its event id or message was seen; see _ACCEPT_ONCE."""
    inbox = events.flat(message.fields())
    payload = {"chat_id": message.chat_id, "message_id": message.message_id, "text": message.text}
    event = events.flat(message_event(channel, "in", {**payload, "sender": message.sender, "event_id": event_id}))
    accept_keys = [
        keys.channel(channel.id),
        keys.channel_inbox(channel.id),
        keys.events(channel.tenant_id),
        keys.channel_seen(channel.id, f"event:{event_id}"),
        keys.channel_seen(channel.id, f"message:{message.chat_id}:{message.message_id}"),
        keys.events_size(channel.tenant_id),
    ]
    args = [SEEN_TTL_S, INBOX_MAX, max_len, now_rfc3339(now), len(inbox), *inbox, *event]
    return int(await _ACCEPT_ONCE(redis, accept_keys, args))


# KEYS: inbox, events, the events' size key, [the shard's lease]. ARGV: entry id, events
# maxlen, fence token, then the event's field/value items. The entry is answered once: a
# second finish (a re-delivery after a crash) writes nothing. -1: fenced out.
_FINISH = Lua(
    events.APPEND_FN
    + FENCED_FN
    + """
if fenced_out(4, ARGV[3]) then return -1 end
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
append_event(KEYS[2], KEYS[3], tonumber(ARGV[2]), 4)
return 1
"""
)


async def finish(
    redis: aioredis.Redis,
    channel: Channel,
    entry_id: str,
    payload: dict[str, Any],
    *,
    max_len: int,
    fence: Fence | None = None,
) -> bool:
    """Mark an inbox entry answered, with its CHANNEL_MESSAGE (out) event; once (a re-delivery
    writes nothing). Raises FencedOut if `fence` is not valid: the entry stays for the shard's owner."""
    event = message_event(channel, "out", payload)
    lease_keys, token = fenced_keys(fence)
    finish_keys = [keys.channel_inbox(channel.id), keys.events(channel.tenant_id), keys.events_size(channel.tenant_id)]
    done = int(await _FINISH(redis, finish_keys + lease_keys, [entry_id, max_len, token, *events.flat(event)]))
    if done < 0:
        raise FencedOut(f"channel {channel.id}: its shard is no longer this replica's; entry {entry_id} stays")
    return bool(done)


# KEYS: channel hash, and the events stream and its size key when there is an event. ARGV: revision, status,
# last_error, events maxlen, then the event's field/value items. Writes only if the channel
# is still at `revision` and not quarantined: a PATCH meanwhile wins, and only a PATCH (a
# new revision) lifts a quarantine, which is announced once.
_SET_STATUS = Lua(
    events.APPEND_FN
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if (redis.call('HGET', KEYS[1], 'revision') or '') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'status') == 'quarantined' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'last_error', ARGV[3])
if ARGV[2] == 'quarantined' then redis.call('HSET', KEYS[1], 'quarantined_at', redis.call('TIME')[1]) end
if #KEYS > 1 then append_event(KEYS[2], KEYS[3], tonumber(ARGV[4]), 5) end
return 1
"""
)


async def set_status(redis: aioredis.Redis, channel_id: str, revision: str, status: str, error: str) -> bool:
    """Show the channel's status (running, backoff) unless it changed or was quarantined meanwhile."""
    return bool(await _SET_STATUS(redis, [keys.channel(channel_id)], [revision, status, error, 0]))


async def quarantine(redis: aioredis.Redis, channel: Channel, error: str, *, max_len: int) -> bool:
    """Quarantine the channel at its revision, with one CHANNEL_QUARANTINED event; only a PATCH lifts it.

    A quarantined Telegram channel lets go of its bot, so the bot's owner can bind it anew.
    """
    event = quarantine_event(channel.id, channel.tenant_id, channel.workspace_id, channel.type, error)
    quarantine_keys = [keys.channel(channel.id), keys.events(channel.tenant_id), keys.events_size(channel.tenant_id)]
    args = [channel.revision, "quarantined", error, max_len, *events.flat(event)]
    marked = bool(await _SET_STATUS(redis, quarantine_keys, args))
    if bot := bot_of(channel.type, channel.secrets):
        await release_bot(redis, bot, channel.id)
    return marked


async def quarantine_record(redis: aioredis.Redis, channel_id: str, error: str, *, max_len: int) -> bool:
    """Quarantine a record that cannot be run (corrupt config, bad ids), as stored now.

    Its tenant gets the CHANNEL_QUARANTINED event if the record names one. Returns whether
    it was marked (not if it is gone, not a hash, or already quarantined).
    """
    raw = await read_one(redis, channel_id)
    fields = decode_lenient(raw) if raw else {}
    if not fields or fields.get("status") == "quarantined":
        return False
    tenant_id = fields.get("tenant_id", "")
    quarantine_keys = [keys.channel(channel_id)]
    args: list[Any] = [fields.get("revision", ""), "quarantined", error, max_len]
    if is_id(tenant_id):
        event = quarantine_event(channel_id, tenant_id, fields.get("workspace_id", ""), fields.get("type", ""), error)
        quarantine_keys += [keys.events(tenant_id), keys.events_size(tenant_id)]
        args += events.flat(event)
    marked = bool(await _SET_STATUS(redis, quarantine_keys, args))
    if fields.get("bot_id"):
        await release_bot(redis, fields["bot_id"], channel_id)
    return marked


async def quarantined(redis: aioredis.Redis) -> list[dict[str, Any]]:
    """Every quarantined channel as operators see it: key (its id), tenant_id, error, since, failures."""
    channel_ids = await ids(redis)
    items = []
    for channel_id, raw in zip(channel_ids, await read(redis, channel_ids), strict=True):
        fields = decode_lenient(raw) if raw and not isinstance(raw, Exception) else {}
        if fields.get("status") != "quarantined":
            continue
        since = fields.get("quarantined_at", "")
        items.append(
            {
                "key": channel_id,
                "tenant_id": fields.get("tenant_id") or None,
                "error": fields.get("last_error") or None,
                "since": now_rfc3339(int(since)) if since.isdigit() else None,
                "failures": None,  # a channel is quarantined at its first refusal (a revoked token)
            }
        )
    return items


async def release(redis: aioredis.Redis, box: SecretBox, channel_id: str, now: float) -> bool:
    """An operator's release of a quarantined channel: as a PATCH that changes nothing (a new
    revision, its status cleared, its bot bound again unless another channel took it: BotTaken).
    False if it is not quarantined."""
    raw = await read_one(redis, channel_id)
    fields = decode_lenient(raw) if raw else {}
    if fields.get("status") != "quarantined":
        return False
    if is_id(fields.get("tenant_id", "")) and fields.get("revision", "").isdigit():
        return await patch(redis, box, fields["tenant_id"], channel_id, {}, now) is not None
    # A record too damaged for a PATCH (no tenant, no revision): tried again as it is.
    key = keys.channel(channel_id)
    async with redis.pipeline(transaction=True) as pipe:
        try:
            await pipe.watch(key)
            if (await pipe.hget(key, "status")) != b"quarantined":
                return False
            pipe.multi()
            pipe.hset(key, mapping={"status": "starting", "last_error": ""})
            await pipe.execute()
        except WatchError:
            return False
    return True


# -- what the channel manager reads ----------------------------------------------------------


async def ids(redis: aioredis.Redis, shards: Sequence[int] = ALL_SHARDS) -> list[str]:
    """Every channel's id in `shards`, sorted."""
    return await union(redis, keys.channels, shards)


async def read(redis: aioredis.Redis, channel_ids: Sequence[str]) -> list[Any]:
    """The stored hashes, in one round trip; a key of the wrong type reads as its error (an Exception)."""
    return await read_hashes(redis, [keys.channel(i) for i in channel_ids])


async def read_one(redis: aioredis.Redis, channel_id: str) -> dict[bytes, bytes] | None:
    """The stored hash; None if there is none (or the key is not a hash)."""
    try:
        raw = await redis.hgetall(keys.channel(channel_id))
    except ResponseError:  # not a hash: no channel
        return None
    return raw or None


async def offset(redis: aioredis.Redis, channel_id: str) -> int:
    """The Telegram getUpdates offset: updates below it are in the inbox or were ignored."""
    return int(await redis.get(keys.channel_offset(channel_id)) or 0)


Entry = tuple[bytes, dict[bytes, bytes]]


async def inbox_after(redis: aioredis.Redis, after: Mapping[str, str], count: int) -> dict[str, list[Entry]]:
    """Up to `count` inbox entries of each channel after the given entry id, in one round trip."""
    if not after:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for channel_id, entry_id in after.items():
            pipe.xrange(keys.channel_inbox(channel_id), f"({entry_id}", "+", count=count)
        pages = await pipe.execute()
    return dict(zip(after, pages, strict=True))


async def drop_entry(redis: aioredis.Redis, channel_id: str, entry_id: str) -> None:
    """Remove an inbox entry the platform did not write (it can never be relayed)."""
    await redis.xdel(keys.channel_inbox(channel_id), entry_id)


async def wake(redis: aioredis.Redis, channel_id: str) -> None:
    """Tell the channel manager the channel's inbox has news (it would find it within a reconcile)."""
    await redis.publish(keys.CHANNELS_WAKE, channel_id)


async def woken(redis: aioredis.Redis) -> AsyncIterator[str]:
    """Ids of channels woken by `wake`, as they come."""
    pubsub = await client.pubsub(redis)
    try:
        await pubsub.subscribe(keys.CHANNELS_WAKE)
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is not None:
                yield message["data"].decode(errors="replace")
    finally:
        await pubsub.aclose()


def quarantine_event(
    channel_id: str, tenant_id: str, workspace_id: str, channel_type: str, error: str
) -> dict[str, str]:
    payload = {"channel_id": channel_id, "type": channel_type, "error": error}
    return events.entry("CHANNEL_QUARANTINED", tenant_id, workspace_id, payload)
