"""The channel manager with Telegram: relay to workspaces and back, revoked tokens, 429, hung agents, poison."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from actors.channel_manager import CHANNEL_SPEC, channel_manager_actor
from store import keys
from tests.a2a_agent import A2AAgent
from tests.chat_apis import ChatApis
from tests.support import Platform, start_platform, wait_for

_tokens = itertools.count(1)


def new_token() -> str:
    return f"{next(_tokens) + 100000}:AAH{'x' * 30}{next(_tokens)}"


@pytest.fixture(scope="module")
def apis() -> Iterator[ChatApis]:
    server = ChatApis()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def agents() -> Iterator[list[A2AAgent]]:
    started = [A2AAgent(hold_prefix="hang").start() for _ in range(3)]
    yield started
    for agent in started:
        agent.released.set()
        agent.stop()


@pytest.fixture(scope="module")
def relay(
    ray_session: dict, redis_url: str, apis: ChatApis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    deployed = start_platform(
        redis_url,
        tmp_path_factory.mktemp("channels"),
        subsystems=[(CHANNEL_SPEC, channel_manager_actor)],
        telegram_api_base=apis.telegram_base,
        slack_api_base=apis.slack_base,
        telegram_poll_timeout_s=5.0,
        channel_reply_timeout_s=120.0,
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


def channel_of(platform: Platform, tenant: dict, channel_id: str) -> dict[str, Any]:
    status, channel = platform.tenant_get(tenant, f"/channels/{channel_id}")
    assert status == 200, channel
    return channel


def running(platform: Platform, tenant: dict, channel_id: str) -> bool:
    return channel_of(platform, tenant, channel_id)["status"] == "running"


def replied(apis: ChatApis, token: str, chat_id: int, message_ids: list[int]) -> bool:
    return {r["reply_to"] for r in apis.replies(token, chat_id)} >= set(message_ids)


def events_of(platform: Platform, tenant_id: str, name: str) -> list[dict[str, Any]]:
    import json

    client = redis.Redis.from_url(platform.settings.redis_url)
    found = []
    for _, fields in client.xrange(keys.events(tenant_id)):
        if fields[b"event"].decode() == name:
            found.append(json.loads(fields[b"payload"]))
    return found


def test_three_bots_of_three_tenants_relay_to_their_workspaces_and_reply_in_the_right_chat(
    relay: Platform, apis: ChatApis, agents: list[A2AAgent]
) -> None:
    bots = []
    for n, agent in enumerate(agents):
        tenant = relay.new_tenant(f"tenant-{n}")
        token = new_token()
        apis.bot(token)
        channel = bind(relay, tenant, agent, token)
        bots.append((tenant, token, channel, agent))
    for tenant, _, channel, _ in bots:
        wait_for(lambda t=tenant, c=channel: running(relay, t, c["id"]), 30, what="channel running")
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
