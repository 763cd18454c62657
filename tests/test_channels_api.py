"""Channels API: validation, secrets never stored in clear nor returned, tenants kept apart."""

from __future__ import annotations

import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from store import keys
from tests.chat_apis import ChatApis
from tests.support import Platform

TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
SLACK = {"bot_token": "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy", "signing_secret": "8f742231b10e8888"}


@pytest.fixture(scope="module")
def tenants(platform: Platform) -> dict[str, Any]:
    found = {}
    for name in ("a", "b"):
        tenant = platform.new_tenant(name)
        status, workspace = platform.tenant_post(tenant, "/workspaces", {"name": "w", "url": "http://127.0.0.1:1/"})
        assert status == 201
        found[name] = {**tenant, "workspace": workspace["id"]}
    return found


_bots = itertools.count(1)


def telegram(apis: ChatApis, workspace_id: str, token: str | None = None, **extra: Any) -> dict[str, Any]:
    """A Telegram channel's body, for a bot Telegram knows; each call's bot is a new one unless `token` is given."""
    token = token or f"{900 + next(_bots)}:{TOKEN.partition(':')[2]}"
    apis.bot(token)
    return {"workspace_id": workspace_id, "type": "telegram", "config": {"bot_token": token}, **extra}


def test_secrets_are_sealed_at_rest_and_never_returned(
    platform: Platform, tenants: dict[str, Any], apis: ChatApis
) -> None:
    a = tenants["a"]
    status, created = platform.tenant_post(a, "/channels", telegram(apis, a["workspace"], TOKEN))
    assert status == 201, created
    status, slack = platform.tenant_post(
        a, "/channels", {"workspace_id": a["workspace"], "type": "slack", "config": SLACK}
    )
    assert status == 201, slack
    assert created["config"] == {"bot_token": "redacted"}
    assert slack["config"] == {"bot_token": "redacted", "signing_secret": "redacted"}
    assert created["status"] == "starting" and created["message_count"] == 0 and created["last_error"] is None
    client = redis.Redis.from_url(platform.settings.redis_url)
    secrets = [TOKEN, SLACK["bot_token"], SLACK["signing_secret"], TOKEN.split(":")[1]]
    for channel_id in (created["id"], slack["id"]):
        stored = b"".join(k + v for k, v in client.hgetall(keys.channel(channel_id)).items())
        assert not any(s.encode() in stored for s in secrets)
    status, patched = platform.tenant_patch(a, f"/channels/{created['id']}", {"config": {"bot_token": TOKEN}})
    assert status == 200
    answers = [created, slack, patched, platform.tenant_get(a, "/channels")[1]]
    answers += [platform.tenant_get(a, f"/channels/{c}")[1] for c in (created["id"], slack["id"])]
    text = json.dumps(answers)
    assert not any(s in text for s in secrets)


def test_a_tenant_cannot_read_change_or_bind_anothers(
    platform: Platform, tenants: dict[str, Any], apis: ChatApis
) -> None:
    a, b = tenants["a"], tenants["b"]
    _, channel = platform.tenant_post(a, "/channels", telegram(apis, a["workspace"]))
    path = f"/channels/{channel['id']}"
    assert platform.tenant_get(b, path)[0] == 404
    assert platform.tenant_patch(b, path, {"enabled": False})[0] == 404
    assert platform.tenant_delete(b, path)[0] == 404
    assert channel["id"] not in [c["id"] for c in platform.tenant_get(b, "/channels")[1]["channels"]]
    status, reply = platform.tenant_post(b, "/channels", telegram(apis, a["workspace"]))
    assert status == 422 and "workspace_id" in reply["error"]
    status, reply = platform.tenant_patch(a, path, {"workspace_id": b["workspace"]})
    assert status == 422 and "workspace_id" in reply["error"]
    assert platform.get("/channels", token=None)[0] == 401
    assert platform.tenant_get(a, path)[1]["enabled"] is True
    assert platform.tenant_delete(a, path)[0] == 204
    assert platform.tenant_get(a, path)[0] == 404


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"type": "irc"}, "type"),
        ({"config": {"bot_token": "not-a-token"}}, "config.bot_token"),
        ({"config": {"bot_token": "1" + TOKEN, "extra": "x"}}, "config"),
        ({"config": "text"}, "config"),
        ({"config": {}}, "config.bot_token"),
        ({"allowed_chats": "all"}, "allowed_chats"),
        ({"allowed_chats": [True]}, "allowed_chats"),
        ({"allowed_chats": ["has space"]}, "allowed_chats"),
        ({"enabled": "yes"}, "enabled"),
        ({"workspace_id": "../x"}, "workspace_id"),
        ({"colour": "red"}, "unknown field"),
    ],
)
def test_bad_input_is_422_naming_the_field(
    platform: Platform, tenants: dict[str, Any], change: dict[str, Any], field: str, apis: ChatApis
) -> None:
    a = tenants["a"]
    status, reply = platform.tenant_post(a, "/channels", {**telegram(apis, a["workspace"]), **change})
    assert status == 422 and reply["error"].startswith(field), reply


def test_patch_rules(platform: Platform, tenants: dict[str, Any], apis: ChatApis) -> None:
    a = tenants["a"]
    _, channel = platform.tenant_post(a, "/channels", telegram(apis, a["workspace"], allowed_chats=[-1001, "42"]))
    assert channel["allowed_chats"] == ["-1001", "42"]
    path = f"/channels/{channel['id']}"
    status, reply = platform.tenant_patch(a, path, {"type": "slack"})
    assert status == 422 and reply["error"].startswith("type"), reply
    status, reply = platform.tenant_patch(a, path, {"config": SLACK})
    assert status == 422 and reply["error"].startswith("config"), reply
    status, disabled = platform.tenant_patch(a, path, {"enabled": False, "allowed_chats": None})
    assert status == 200 and disabled["status"] == "disabled" and disabled["allowed_chats"] is None
    status, enabled = platform.tenant_patch(a, path, {"enabled": True})
    assert status == 200 and enabled["status"] == "starting"


def test_a_record_of_the_wrong_type_reads_as_no_record(platform: Platform, tenants: dict[str, Any]) -> None:
    a = tenants["a"]
    client = redis.Redis.from_url(platform.settings.redis_url)
    bogus = "e" * 32
    client.set(keys.channel(bogus), "not a hash")
    client.sadd(keys.tenant_channels(a["id"]), bogus)
    try:
        assert platform.tenant_get(a, f"/channels/{bogus}")[0] == 404
        status, listed = platform.tenant_get(a, "/channels")
        assert status == 200 and bogus not in [c["id"] for c in listed["channels"]]
    finally:
        client.delete(keys.channel(bogus))
        client.srem(keys.tenant_channels(a["id"]), bogus)


def test_one_telegram_bot_is_bound_to_one_channel(platform: Platform, tenants: dict[str, Any], apis: ChatApis) -> None:
    a, b = tenants["a"], tenants["b"]
    token = f"424242{TOKEN[9:]}"
    status, first = platform.tenant_post(a, "/channels", telegram(apis, a["workspace"], token))
    assert status == 201, first
    for tenant in (a, b):  # Telegram would answer the second poller 409 and both would lose updates
        status, reply = platform.tenant_post(tenant, "/channels", telegram(apis, tenant["workspace"], token))
        assert status == 409 and reply["error"].startswith("config.bot_token"), reply
    _, second = platform.tenant_post(b, "/channels", telegram(apis, b["workspace"]))
    status, reply = platform.tenant_patch(b, f"/channels/{second['id']}", {"config": {"bot_token": token}})
    assert status == 409, reply
    assert platform.tenant_delete(a, f"/channels/{first['id']}")[0] == 204
    status, moved = platform.tenant_patch(b, f"/channels/{second['id']}", {"config": {"bot_token": token}})
    assert status == 200, moved
    status, reply = platform.tenant_post(a, "/channels", telegram(apis, a["workspace"], token))
    assert status == 409, reply  # now the second channel's


def test_two_channels_created_at_once_for_one_bot_get_one_201(
    platform: Platform, tenants: dict[str, Any], apis: ChatApis
) -> None:
    a, b = tenants["a"], tenants["b"]
    for round_ in range(5):
        token = f"{777000 + round_}:{TOKEN.partition(':')[2]}"
        bodies = [(t, telegram(apis, t["workspace"], token)) for t in (a, b)]
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda tb: platform.tenant_post(tb[0], "/channels", tb[1]), bodies))
        assert sorted(status for status, _ in answers) == [201, 409], answers


def test_a_bot_token_telegram_refuses_is_422_and_binds_nothing(
    platform: Platform, tenants: dict[str, Any], apis: ChatApis
) -> None:
    a, b = tenants["a"], tenants["b"]
    client = redis.Redis.from_url(platform.settings.redis_url)
    unknown = f"5550001:{TOKEN.partition(':')[2]}"  # never issued: Telegram's getMe answers 401
    body = {"workspace_id": a["workspace"], "type": "telegram", "config": {"bot_token": unknown}}
    status, reply = platform.tenant_post(a, "/channels", body)
    assert status == 422 and reply["error"].startswith("config.bot_token: Telegram refused this bot token"), reply
    assert client.hget(keys.telegram_bot("5550001"), "channel") is None
    # Tenant B names tenant A's bot with a secret of its own making: the bot id alone binds nothing.
    status, mine = platform.tenant_post(a, "/channels", telegram(apis, a["workspace"]))
    assert status == 201, mine
    bot_id = client.hget(keys.channel(mine["id"]), "bot_id").decode()
    forged = {"workspace_id": b["workspace"], "type": "telegram", "config": {"bot_token": f"{bot_id}:AAH{'f' * 30}"}}
    status, reply = platform.tenant_post(b, "/channels", forged)
    assert status == 422 and "Telegram refused" in reply["error"], reply
    assert client.hget(keys.telegram_bot(bot_id), "channel").decode() == mine["id"]
    # A PATCH to a refused token is refused the same way, and the channel keeps its bot.
    patch = {"config": {"bot_token": unknown}}
    assert platform.tenant_patch(a, f"/channels/{mine['id']}", patch)[0] == 422
    assert client.hget(keys.telegram_bot(bot_id), "channel").decode() == mine["id"]
