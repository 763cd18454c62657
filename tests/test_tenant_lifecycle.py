"""Tenants for operators: list, a new token (the old one stops at once), delete (everything of it, nothing else)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from websockets.exceptions import ConnectionClosed

from actors.broadcaster import Broadcaster
from store import keys
from tests.chat_apis import ChatApis
from tests.support import ADMIN_TOKEN, Platform, http, start_platform
from tests.ws_client import Subscriber


@pytest.fixture(scope="module")
def lifecycle(
    ray_session: dict, redis_url: str, apis: ChatApis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    deployed = start_platform(
        redis_url, tmp_path_factory.mktemp("lifecycle"), subsystems=[Broadcaster], telegram_api_base=apis.telegram_base
    )
    yield deployed
    deployed.close()


def populated(platform: Platform, apis: ChatApis, name: str, bot: int) -> dict[str, Any]:
    """A tenant with a workspace (online), a schedule, a Telegram channel and events."""
    tenant = platform.new_tenant(name)
    _, ws = platform.tenant_post(tenant, "/workspaces", {"name": "w", "url": "http://127.0.0.1:9/"})
    assert platform.post(f"/workspaces/{ws['id']}/heartbeat", token=tenant["token"])[0] == 204
    body = {"workspace_id": ws["id"], "name": "s", "cron": "0 9 * * *", "prompt": "p"}
    status, schedule = platform.tenant_post(tenant, "/schedules", body)
    assert status == 201, schedule
    token = f"{bot}:AAH{'t' * 30}"
    apis.bot(token)
    channel = {"workspace_id": ws["id"], "type": "telegram", "config": {"bot_token": token}}
    status, created = platform.tenant_post(tenant, "/channels", channel)
    assert status == 201, created
    assert platform.tenant_post(tenant, "/events", {"event": "HELLO", "payload": {}})[0] == 202
    return {**tenant, "ids": {tenant["id"], ws["id"], schedule["id"], created["id"]}, "bot": str(bot)}


def traces(client: redis.Redis, ids: set[str]) -> list[str]:
    """Every key, index member and hash field of the store that names one of `ids`."""
    found = [k.decode() for k in client.scan_iter(count=1000) if any(i in k.decode() for i in ids)]
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        members: list[bytes] = []
        if kind == b"set":
            members = list(client.smembers(key))
        elif kind == b"zset":
            members = client.zrange(key, 0, -1)
        elif kind == b"hash" and not key.startswith((b"workspace:", b"schedule:", b"channel:", b"tenant:")):
            members = list(client.hkeys(key)) + list(client.hvals(key))
        found += [f"{key.decode()} holds {m.decode()}" for m in members if any(i in m.decode() for i in ids)]
    return found


async def test_a_deleted_tenant_leaves_nothing_and_its_websockets_are_closed_4401(
    lifecycle: Platform, apis: ChatApis
) -> None:
    gone, kept = populated(lifecycle, apis, "gone", 5101), populated(lifecycle, apis, "kept", 5102)
    client = redis.Redis.from_url(lifecycle.settings.redis_url)
    assert traces(client, gone["ids"])  # there is something to remove
    watchers = {t["id"]: Subscriber(lifecycle.url, t["token"]) for t in (gone, kept)}
    readers = {tid: asyncio.create_task(s.run(1, timeout_s=60)) for tid, s in watchers.items()}
    await asyncio.wait_for(asyncio.gather(*(s.opened.wait() for s in watchers.values())), 10)
    listed = await asyncio.to_thread(lifecycle.get, "/admin/tenants")
    assert listed[0] == 200 and {gone["id"], kept["id"]} <= {t["id"] for t in listed[1]["tenants"]}
    assert all(set(t) == {"id", "name", "created_at"} for t in listed[1]["tenants"])  # never a token

    path = f"{lifecycle.url}/admin/tenants/{gone['id']}"
    assert (await asyncio.to_thread(http, "DELETE", path, token=gone["token"]))[0] == 401  # admin only
    assert (await asyncio.to_thread(lifecycle.post, "/admin/tenants/nope/token"))[0] == 404
    assert (await asyncio.to_thread(http, "DELETE", path, token=ADMIN_TOKEN))[0] == 204
    assert (await asyncio.to_thread(http, "DELETE", path, token=ADMIN_TOKEN))[0] == 404  # once

    with pytest.raises(ConnectionClosed):
        await readers[gone["id"]]
    assert [code for code, _ in watchers[gone["id"]].closes] == [4401]
    assert traces(client, gone["ids"]) == []
    assert client.hget(keys.telegram_bot(gone["bot"]), "channel") is None  # the bot is free for its owner
    assert (await asyncio.to_thread(lifecycle.tenant_get, gone, "/workspaces"))[0] == 401
    assert (await asyncio.to_thread(lifecycle.get, f"/admin/tenants/{gone['id']}"))[0] == 404
    # The other tenant: everything in place, and its WebSocket still delivers.
    assert set(traces(client, kept["ids"])) >= {keys.tenant(kept["id"]), keys.events(kept["id"])}
    assert client.hget(keys.telegram_bot(kept["bot"]), "channel") is not None
    assert (await asyncio.to_thread(lifecycle.tenant_post, kept, "/events", {"event": "STILL", "payload": 1}))[0] == 202
    await readers[kept["id"]]
    assert watchers[kept["id"]].events[0]["event"] == "STILL"


async def test_a_new_token_works_at_once_and_the_old_one_stops(lifecycle: Platform) -> None:
    tenant = lifecycle.new_tenant("rotating")
    watcher = Subscriber(lifecycle.url, tenant["token"])
    reader = asyncio.create_task(watcher.run(1, timeout_s=60))
    await asyncio.wait_for(watcher.opened.wait(), 10)
    status, body = await asyncio.to_thread(lifecycle.post, f"/admin/tenants/{tenant['id']}/token")
    assert status == 200 and set(body) == {"token"} and body["token"] != tenant["token"]
    assert (await asyncio.to_thread(lifecycle.tenant_get, tenant, "/workspaces"))[0] == 401
    renewed = {**tenant, "token": body["token"]}
    assert (await asyncio.to_thread(lifecycle.tenant_get, renewed, "/workspaces"))[0] == 200
    with pytest.raises(ConnectionClosed):
        await reader
    assert [code for code, _ in watcher.closes] == [4401]
    again = Subscriber(lifecycle.url, renewed["token"])
    reading = asyncio.create_task(again.run(1, timeout_s=60))
    await asyncio.wait_for(again.opened.wait(), 10)
    assert (await asyncio.to_thread(lifecycle.tenant_post, renewed, "/events", {"event": "NEW", "payload": 1}))[
        0
    ] == 202
    await reading
    assert again.events[0]["event"] == "NEW"
