"""The channel manager with Telegram: relay to workspaces and back, revoked tokens, 429, hung agents, poison."""

from __future__ import annotations

import collections
import itertools
import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from actors.channels.manager import CHANNEL_SLOTS, RELAY_SLOTS
from store import keys
from tests.a2a_agent import A2AAgent
from tests.chat_apis import ChatApis, start_channel_platform
from tests.support import Platform, wait_for

_tokens = itertools.count(1)


def new_token() -> str:
    return f"{next(_tokens) + 100000}:AAH{'x' * 30}{next(_tokens)}"


@pytest.fixture(scope="module")
def agents() -> Iterator[list[A2AAgent]]:
    started = [A2AAgent(hold_prefix="hang").start() for _ in range(3)]
    yield started
    for agent in started:
        agent.released.set()
        agent.stop()


@pytest.fixture(scope="module")
def relay(
    ray_session: dict, redis_url: str, apis: ChatApis, agents: list[A2AAgent], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    """(After `agents`, so that it drains before they stop.)"""
    deployed = start_channel_platform(
        redis_url, tmp_path_factory.mktemp("channels"), apis, telegram_poll_timeout_s=5.0, channel_reply_timeout_s=120.0
    )
    yield deployed
    deployed.close()


def bind(platform: Platform, tenant: dict, agent: A2AAgent, token: str, **extra: Any) -> dict[str, Any]:
    """A workspace served by `agent`, and a Telegram channel with `token` bound to it."""
    status, workspace = platform.tenant_post(tenant, "/workspaces", {"name": "agent", "url": agent.url})
    assert status == 201, workspace
    body = {"workspace_id": workspace["id"], "type": "telegram", "config": {"bot_token": token}, **extra}
    status, channel = platform.tenant_post(tenant, "/channels", body)
    assert status == 201, channel
    return channel


def new_bot(
    relay: Platform, apis: ChatApis, agent: A2AAgent, name: str, **extra: Any
) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """A new tenant with a new bot bound to a workspace served by `agent`, once its channel runs."""
    tenant = relay.new_tenant(name)
    token = new_token()
    apis.bot(token)
    channel = bind(relay, tenant, agent, token, **extra)
    wait_for(lambda: running(relay, tenant, channel["id"]), 30, what=f"the channel of {name} running")
    return tenant, token, channel


Bound = tuple[dict[str, Any], str, str]  # (tenant, bot token, channel id)


def new_bots(relay: Platform, apis: ChatApis, agent: A2AAgent, name: str, count: int) -> list[Bound]:
    """A new tenant with `count` new bots bound to workspaces served by `agent` (not yet awaited)."""
    tenant = relay.new_tenant(name)
    made = []
    for _ in range(count):
        token = new_token()
        apis.bot(token)
        made.append((tenant, token, bind(relay, tenant, agent, token)["id"]))
    return made


def wait_running(relay: Platform, bound: list[Bound]) -> list[str]:
    """Wait until every one of the channels runs (together: each would wait for a reconcile of
    its own otherwise); their bots' tokens."""
    wait_for(lambda: all(running(relay, t, c) for t, _, c in bound), 60, what=f"{len(bound)} channels running")
    return [token for _, token, _ in bound]


def channel_of(platform: Platform, tenant: dict, channel_id: str) -> dict[str, Any]:
    status, channel = platform.tenant_get(tenant, f"/channels/{channel_id}")
    assert status == 200, channel
    return channel


def running(platform: Platform, tenant: dict, channel_id: str) -> bool:
    return channel_of(platform, tenant, channel_id)["status"] == "running"


def replied(apis: ChatApis, token: str, chat_id: int, message_ids: list[int]) -> bool:
    return {r["reply_to"] for r in apis.replies(token, chat_id)} >= set(message_ids)


def events_of(platform: Platform, tenant_id: str, name: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(platform.settings.redis_url)
    found = []
    for _, fields in client.xrange(keys.events(tenant_id)):
        if fields[b"event"].decode() == name:
            found.append(json.loads(fields[b"payload"]))
    return found


def test_three_bots_of_three_tenants_relay_to_their_workspaces_and_reply_in_the_right_chat(
    relay: Platform, apis: ChatApis, agents: list[A2AAgent]
) -> None:
    bots = [(*new_bot(relay, apis, agent, f"tenant-{n}"), agent) for n, agent in enumerate(agents)]
    sent: dict[tuple[str, int], list[tuple[int, str]]] = {}
    for n, (_, token, _, _) in enumerate(bots):
        for chat in (10 + n, 20 + n):
            for i in range(3):
                text = f"bot{n} chat{chat} msg{i}"
                sent.setdefault((token, chat), []).append((apis.send(token, chat, text), text))
    for (token, chat), messages in sent.items():
        wait_for(lambda t=token, c=chat, m=messages: replied(apis, t, c, [i for i, _ in m]), 60, what="replies")
        replies = {r["reply_to"]: r["text"] for r in apis.replies(token, chat)}
        for message_id, text in messages:
            assert replies[message_id] == f"echo: {text}"  # this chat's own answer, to this message
    for n, (tenant, _, channel, agent) in enumerate(bots):
        texts = sorted(m["text"] for m in agent.messages)
        assert texts == sorted(f"bot{n} chat{c} msg{i}" for c in (10 + n, 20 + n) for i in range(3))
        assert all(m["messageId"].startswith(f"channel-telegram-{channel['id']}:") for m in agent.messages)
        record = channel_of(relay, tenant, channel["id"])
        assert record["message_count"] == 6 and record["last_message_at"] is not None
        directions = [e["direction"] for e in events_of(relay, tenant["id"], "CHANNEL_MESSAGE")]
        assert directions.count("in") == 6 and directions.count("out") == 6


def rotated(token: str) -> str:
    """A new token for the same bot (the part before ':' is the bot id)."""
    bot_id, _, secret = token.partition(":")
    return f"{bot_id}:BBH{secret[3:]}"


def test_a_revoked_token_quarantines_its_channel_only_and_a_patch_brings_it_back(
    relay: Platform, apis: ChatApis, agents: list[A2AAgent]
) -> None:
    tenant_a, token_a, channel_a = new_bot(relay, apis, agents[0], "revoked")
    tenant_b, token_b, channel_b = new_bot(relay, apis, agents[1], "unaffected")

    apis.revoke(token_a)
    sent_b = []
    quarantined = None
    while quarantined is None or len(sent_b) < 5:  # bot B keeps being written to throughout
        sent_b.append(apis.send(token_b, 50, f"during {len(sent_b)}"))
        wait_for(lambda: replied(apis, token_b, 50, sent_b), 30, what="bot B replies")
        assert channel_of(relay, tenant_b, channel_b["id"])["status"] == "running"
        record = channel_of(relay, tenant_a, channel_a["id"])
        quarantined = record if record["status"] == "quarantined" else None
    assert "401" in quarantined["last_error"] and "Unauthorized" in quarantined["last_error"]
    (event,) = events_of(relay, tenant_a["id"], "CHANNEL_QUARANTINED")
    assert event["channel_id"] == channel_a["id"] and "401" in event["error"]
    assert relay.subsystem("channel-manager")["healthy"]  # one tenant's channel, not the subsystem

    # The owner gets a new token for the same bot; what users wrote meanwhile is still relayed.
    waiting = apis.send(token_a, 60, "written while quarantined")
    new = rotated(token_a)
    apis.rotate(token_a, new)
    status, patched = relay.tenant_patch(tenant_a, f"/channels/{channel_a['id']}", {"config": {"bot_token": new}})
    assert status == 200 and patched["status"] == "starting" and patched["last_error"] is None, patched
    wait_for(lambda: replied(apis, new, 60, [waiting]), 30, what="relayed after the PATCH")
    wait_for(lambda: running(relay, tenant_a, channel_a["id"]), 30, what="channel running again")


def test_429_retry_after_is_honoured_and_nothing_is_lost(
    relay: Platform, apis: ChatApis, agents: list[A2AAgent]
) -> None:
    _, token, _ = new_bot(relay, apis, agents[0], "rate-limited")
    apis.rate_limit(token, 3)
    first = apis.send(token, 70, "wakes the poll; the next one gets 429")
    wait_for(lambda: apis.bot(token).rate_limited_at, 30, what="a 429 answered")
    second = apis.send(token, 70, "written while the poller waits")
    wait_for(lambda: replied(apis, token, 70, [first, second]), 30, what="both replied")
    limited_at = apis.bot(token).rate_limited_at[0]
    next_poll = min(at for at, _ in apis.bot(token).polls if at > limited_at)
    assert next_poll - limited_at >= 3 - 0.05  # no earlier than told (a lower bound: slowness cannot break it)
    assert relay.subsystem("channel-manager")["progress"]["rate_limited"] >= 1
    assert [r["reply_to"] for r in apis.replies(token, 70)] == [first, second]
    # The same on the way back: a sendMessage answered 429 is posted again once allowed.
    apis.rate_limit_replies(token, 2)
    third = apis.send(token, 70, "its reply meets a 429")
    wait_for(lambda: replied(apis, token, 70, [third]), 30, what="the rate-limited reply posted")
    (limited_at,) = apis.bot(token).replies_limited_at
    (reply,) = [r for r in apis.replies(token, 70) if r["reply_to"] == third]
    assert reply["at"] - limited_at >= 2 - 0.05


def test_a_failing_poller_shows_backoff_then_recovers_with_nothing_lost(
    relay: Platform, apis: ChatApis, agents: list[A2AAgent]
) -> None:
    tenant, token, channel = new_bot(relay, apis, agents[2], "bad-gateway")
    apis.fail_polls(token, 3)  # backoff 1 + 2 + 4 s
    written = apis.send(token, 75, "written while Telegram answers 502")
    seen = wait_for(
        lambda: (lambda c: c if c["status"] == "backoff" else None)(channel_of(relay, tenant, channel["id"])),
        30,
        what="status backoff",
    )
    assert "502" in seen["last_error"] and "Bad Gateway" in seen["last_error"]
    wait_for(lambda: replied(apis, token, 75, [written]), 60, what="relayed after the outage")
    wait_for(lambda: running(relay, tenant, channel["id"]), 30, what="running again")
    assert channel_of(relay, tenant, channel["id"])["last_error"] is None


def test_a_hung_workspace_delays_only_its_own_chat(relay: Platform, apis: ChatApis, agents: list[A2AAgent]) -> None:
    hanging = A2AAgent(hold_prefix="hang").start()
    try:
        _, token, _ = new_bot(relay, apis, hanging, "hung")
        _, other_token, _ = new_bot(relay, apis, agents[1], "other")
        stuck = [apis.send(token, 81, "hang here"), apis.send(token, 81, "behind the hang")]
        same_bot = [apis.send(token, 82, f"same bot {i}") for i in range(5)]
        other_bot = [apis.send(other_token, 83, f"other bot {i}") for i in range(5)]
        wait_for(lambda: replied(apis, token, 82, same_bot), 60, what="the same bot's other chat")
        wait_for(lambda: replied(apis, other_token, 83, other_bot), 60, what="the other bot")
        assert apis.replies(token, 81) == []  # still waiting for its agent
        asked = [r["body"]["params"]["message"]["parts"][0]["text"] for r in hanging.bodies_for("channel-telegram-")]
        assert "hang here" in asked and "behind the hang" not in asked  # in order: the next waits its turn
        hanging.released.set()
        wait_for(lambda: replied(apis, token, 81, stuck), 60, what="the hung chat, once its agent answers")
        assert [r["reply_to"] for r in apis.replies(token, 81)] == stuck  # in order
    finally:
        hanging.released.set()
        hanging.stop()


def test_a_workspace_hung_in_more_chats_than_its_channels_slots_never_holds_up_another_tenant(
    relay: Platform, apis: ChatApis, agents: list[A2AAgent]
) -> None:
    hanging = A2AAgent(hold_prefix="hang").start()
    try:
        _, token, _ = new_bot(relay, apis, hanging, "hung-wide")
        _, other_token, _ = new_bot(relay, apis, agents[1], "bystander")
        stuck = {chat: apis.send(token, chat, "hang here") for chat in range(2000, 2000 + 2 * CHANNEL_SLOTS)}
        wait_for(lambda: len(hanging.bodies_for("channel-telegram-")) >= CHANNEL_SLOTS, 30, what="its slots full")
        other_bot = [apis.send(other_token, 2100 + i % 5, f"bystander {i}") for i in range(20)]
        for chat in range(2100, 2105):
            mine = [m for i, m in enumerate(other_bot) if 2100 + i % 5 == chat]
            wait_for(lambda c=chat, m=mine: replied(apis, other_token, c, m), 60, what="the other tenant's bot")
        assert len(hanging.bodies_for("channel-telegram-")) == CHANNEL_SLOTS  # the rest wait their turn
        assert sum(len(apis.replies(token, chat)) for chat in stuck) == 0
        hanging.released.set()
        for chat, message_id in stuck.items():
            wait_for(lambda c=chat, m=message_id: replied(apis, token, c, [m]), 60, what="released")
    finally:
        hanging.released.set()
        hanging.stop()


def test_the_relay_holds_at_most_its_global_slots_across_every_channel(
    relay: Platform, apis: ChatApis, agents: list[A2AAgent]
) -> None:
    """17 channels, each hung in 16 chats: 272 calls wanted, RELAY_SLOTS (256) made, the rest wait."""
    hanging = A2AAgent(hold_prefix="hang").start()
    try:
        count = RELAY_SLOTS // CHANNEL_SLOTS + 1
        bots = wait_running(relay, [b for n in range(count) for b in new_bots(relay, apis, hanging, f"wide-{n}", 1)])
        for token in bots:
            for chat in range(CHANNEL_SLOTS):
                apis.send(token, 3000 + chat, "hang here")
        wanted = len(bots) * CHANNEL_SLOTS

        def loaded() -> dict[str, Any] | None:
            progress = relay.subsystem("channel-manager")["progress"]
            return progress if progress["backlog"] >= wanted and progress["in_flight"] >= RELAY_SLOTS else None

        progress = wait_for(loaded, 60, what="every message queued and the slots full")
        assert progress["in_flight"] == RELAY_SLOTS
        assert len(hanging.bodies_for("channel-telegram-")) == RELAY_SLOTS  # the other 16 wait their turn
        hanging.released.set()
        wait_for(lambda: len(hanging.bodies_for("channel-telegram-")) == wanted, 60, what="the rest, once released")
    finally:
        hanging.released.set()
        hanging.stop()


def test_one_tenants_hung_channels_hold_only_its_own_relay_slots(
    relay: Platform, apis: ChatApis, agents: list[A2AAgent]
) -> None:
    """Acceptance b: 16 channels of one tenant hung in 16 chats each would fill every global slot;
    they hold TENANT_RELAYS_IN_FLIGHT, and another tenant's message is answered meanwhile."""
    hanging = A2AAgent(hold_prefix="hang").start()
    try:
        tokens = wait_running(relay, new_bots(relay, apis, hanging, "noisy-relay", 16))
        for token in tokens:
            for chat in range(CHANNEL_SLOTS):
                apis.send(token, 5000 + chat, "hang here")
        limit = relay.settings.tenant_relays_in_flight
        wait_for(lambda: len(hanging.bodies_for("channel-telegram-")) >= limit, 60, what="its slots full")
        _, quiet_token, _ = new_bot(relay, apis, agents[0], "quiet-relay")
        asked = apis.send(quiet_token, 5100, "hello")
        wait_for(lambda: replied(apis, quiet_token, 5100, [asked]), 30, what="the quiet tenant answered")
        assert len(hanging.bodies_for("channel-telegram-")) == limit  # 256 wanted, its 16 held
        assert relay.subsystem("channel-manager")["progress"]["backlog"] >= 16 * CHANNEL_SLOTS
    finally:
        hanging.released.set()
        hanging.stop()


def test_chats_outside_allowed_chats_are_ignored(relay: Platform, apis: ChatApis, agents: list[A2AAgent]) -> None:
    tenant, token, channel = new_bot(relay, apis, agents[2], "allowed", allowed_chats=[91])
    assert channel["allowed_chats"] == ["91"]
    ignored = apis.send(token, 92, "not allowed")
    apis.send_other(token, 91)  # not a text message
    allowed = apis.send(token, 91, "allowed")
    wait_for(lambda: replied(apis, token, 91, [allowed]), 30, what="the allowed chat replied")
    wait_for(lambda: apis.pending(token) == 0, 30, what="the offset moved past every update")
    assert apis.replies(token, 92) == [] and ignored not in {r["reply_to"] for r in apis.replies(token)}
    received = [e for e in events_of(relay, tenant["id"], "CHANNEL_MESSAGE") if e["direction"] == "in"]
    assert [e["chat_id"] for e in received] == ["91"]


def test_a_corrupt_channel_is_quarantined_and_the_others_run(
    relay: Platform, apis: ChatApis, agents: list[A2AAgent]
) -> None:
    tenant = relay.new_tenant("poison")
    good_token, bad_token = new_token(), new_token()
    apis.bot(good_token), apis.bot(bad_token)
    good = bind(relay, tenant, agents[0], good_token)
    bad = bind(relay, tenant, agents[0], bad_token)
    client = redis.Redis.from_url(relay.settings.redis_url)
    client.hset(keys.channel(bad["id"]), "config", "not a Fernet token")
    client.hincrby(keys.channel(bad["id"]), "revision", 1)
    wait_for(
        lambda: channel_of(relay, tenant, bad["id"])["status"] == "quarantined",
        60,
        what="the corrupt channel quarantined",
    )
    record = channel_of(relay, tenant, bad["id"])
    assert "cannot be decrypted" in record["last_error"]
    (event,) = events_of(relay, tenant["id"], "CHANNEL_QUARANTINED")
    assert event["channel_id"] == bad["id"]
    sent = apis.send(good_token, 95, "still relayed")
    wait_for(lambda: replied(apis, good_token, 95, [sent]), 30, what="the good channel relays")
    assert relay.subsystem("channel-manager")["healthy"] and running(relay, tenant, good["id"])
    counted = wait_for(lambda: relay.subsystem("channel-manager")["quarantined"], 30, what="counted")
    # A PATCH with a good config releases it.
    status, _ = relay.tenant_patch(tenant, f"/channels/{bad['id']}", {"config": {"bot_token": bad_token}})
    assert status == 200
    wait_for(lambda: running(relay, tenant, bad["id"]), 30, what="released by the PATCH")
    wait_for(lambda: relay.subsystem("channel-manager")["quarantined"] == counted - 1, 30, what="no longer counted")


def test_disabled_then_enabled_relays_what_was_written_meanwhile_and_delete_stops_the_poller(
    relay: Platform, apis: ChatApis, agents: list[A2AAgent]
) -> None:
    tenant, token, channel = new_bot(relay, apis, agents[1], "toggled")
    path = f"/channels/{channel['id']}"

    def reconciled() -> None:
        """Two more reconciles (the progress seen after them is that of a reconcile after the change)."""
        for _ in range(2):
            tick = relay.subsystem("channel-manager")["last_tick_at"]
            wait_for(lambda t=tick: relay.subsystem("channel-manager")["last_tick_at"] != t, 30, what="a reconcile")

    def polling() -> bool:
        return channel["id"] in relay.subsystem("channel-manager")["progress"]["pollers"]

    assert relay.tenant_patch(tenant, path, {"enabled": False})[1]["status"] == "disabled"
    reconciled()
    assert not polling()
    waiting = apis.send(token, 99, "written while disabled")
    assert relay.tenant_patch(tenant, path, {"enabled": True})[0] == 200
    wait_for(lambda: replied(apis, token, 99, [waiting]), 30, what="relayed once enabled again")
    assert relay.tenant_delete(tenant, path)[0] == 204
    reconciled()
    assert not polling()
    polls = len(apis.bot(token).polls)
    apis.send(token, 99, "after the delete")
    reconciled()
    assert len(apis.bot(token).polls) == polls and apis.pending(token) == 1  # nobody polls it any more


def test_sigkill_with_500_updates_queued_each_is_handled_exactly_once(
    relay: Platform, apis: ChatApis, agents: list[A2AAgent]
) -> None:
    bots = [(*new_bot(relay, apis, agent, f"killed-{n}"), agent) for n, agent in enumerate(agents)]
    sent: dict[tuple[str, int], list[int]] = {}
    for i in range(500):
        _, token, _, _ = bots[i % 3]
        chat = 1000 + i % 15
        sent.setdefault((token, chat), []).append(apis.send(token, chat, f"update {i}"))
    wait_for(lambda: sum(len(apis.replies(t)) for _, t, _, _ in bots) >= 50, 60, what="50 relayed")
    os.kill(relay.pid_of("channel-manager"), signal.SIGKILL)
    answered_at_kill = sum(len(apis.replies(t)) for _, t, _, _ in bots)
    assert answered_at_kill < 500  # the kill did come with updates still queued
    for (token, chat), message_ids in sent.items():
        wait_for(lambda t=token, c=chat, m=message_ids: replied(apis, t, c, m), 120, what="every update answered")
    sub = relay.subsystem("channel-manager")
    assert sub["restarts"]["process"] >= 1

    for tenant, token, channel, agent in bots:
        expected = {
            f"channel-telegram-{channel['id']}:{chat}:{m}" for (t, chat), ids in sent.items() if t == token for m in ids
        }
        received = [
            r["body"]["params"]["message"]["messageId"] for r in agent.bodies_for(f"channel-telegram-{channel['id']}")
        ]
        assert set(received) == expected  # every update reached its workspace...
        # ...and a second delivery, with the same messageId, only for what was in flight at the kill:
        # a chat's messages go one at a time, so at most one per chat, and no message more than twice.
        chats = {chat for (t, chat) in sent if t == token}
        again = collections.Counter(received) - collections.Counter(set(received))
        assert len(again) <= len(chats) and set(again.values()) <= {1}, again
        assert len({m.rsplit(":", 2)[1] for m in again}) == len(again)  # never two of one chat
        messages = events_of(relay, tenant["id"], "CHANNEL_MESSAGE")
        inbound = [(e["chat_id"], e["message_id"]) for e in messages if e["direction"] == "in"]
        answered = [(e["chat_id"], e["in_reply_to"]) for e in messages if e["direction"] == "out"]
        assert len(inbound) == len(set(inbound)) == len(expected)  # recorded exactly once (offset persisted)
        assert len(answered) == len(set(answered)) == len(expected)  # answered exactly once
    for (token, chat), message_ids in sent.items():
        replies = [r["reply_to"] for r in apis.replies(token, chat)]
        first_replies = list(dict.fromkeys(replies))
        assert first_replies == message_ids  # in order per chat, across the restart
        assert len(replies) - len(message_ids) <= 1  # only the chat's message in flight at the kill, again
