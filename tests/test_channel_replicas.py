"""Channel-manager replicas: 300 Telegram channels over 3 replicas, each bot polled by one
replica at a time and each message answered once, while replicas leave, join and die."""

from __future__ import annotations

import asyncio
import collections
import json
import time
import urllib.request
from collections.abc import Iterator

import pytest

from actors.channels.manager import ChannelManager
from actors.runtime.handles import NamedActor
from store import keys, shards
from tests.a2a_agent import A2AAgent
from tests.chat_apis import ChatApis, start_channel_platform
from tests.support import Platform, lease_holders, sync_redis, wait_for
from tests.test_channels import new_bots, new_token

LEASE_S = 6.0
KIND = "channel-manager"
NAMES = ["channel-manager", "channel-manager-1", "channel-manager-2"]


@pytest.fixture(scope="module")
def slow_agent() -> Iterator[A2AAgent]:
    """Answers after 1 s: answers are in flight whenever shards move."""
    started = A2AAgent(delay_s=1.0).start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def replicated(
    ray_session: dict, redis_url: str, apis: ChatApis, slow_agent: A2AAgent, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    deployed = start_channel_platform(
        redis_url,
        tmp_path_factory.mktemp("channel-replicas"),
        apis,
        channel_manager_replicas=3,
        shard_lease_s=LEASE_S,  # several ticks (2 s) of the manager: renewed from its tick
        telegram_poll_timeout_s=5.0,
    )
    yield deployed
    deployed.close()


def get_updates(base: str, token: str, timeout_s: float) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{base}/bot{token}/getUpdates",
        data=json.dumps({"offset": 0, "timeout": timeout_s}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s + 5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_stand_in_answers_409_to_a_poll_a_second_poller_ends_and_counts_only_those(apis: ChatApis) -> None:
    """What the acceptance counts: a poll ended by a second concurrent poller of its bot gets
    409 and is counted; a poll whose client went away before the next one is not."""
    token = new_token()
    apis.bot(token)

    async def two_pollers() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        first = loop.run_in_executor(None, get_updates, apis.telegram_base, token, 5.0)
        await asyncio.to_thread(wait_for, lambda: len(apis.bot(token).polls) == 1, 5, what="the first poll open")
        second = loop.run_in_executor(None, get_updates, apis.telegram_base, token, 1.0)
        return (await first)[0], (await second)[0]

    assert asyncio.run(two_pollers()) == (409, 200)
    assert apis.conflicts().get(token) == 1

    async def gone_then_another() -> int:
        _reader, writer = await asyncio.open_connection("127.0.0.1", apis.port)
        body = json.dumps({"offset": 0, "timeout": 3}).encode()
        head = f"POST /bot{token}/getUpdates HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        writer.write(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        await asyncio.to_thread(wait_for, lambda: len(apis.bot(token).polls) == 3, 5, what="the third poll open")
        writer.close()  # the poller stops: its connection closes
        await asyncio.sleep(1.0)
        return (await asyncio.get_running_loop().run_in_executor(None, get_updates, apis.telegram_base, token, 1.0))[0]

    assert asyncio.run(gone_then_another()) == 200
    assert apis.conflicts().get(token) == 1  # still the one above


def holders(platform: Platform) -> dict[int, str]:
    return lease_holders(platform.settings.redis_url, platform.settings.ray_namespace, KIND)


def settled(names: list[str]) -> dict[int, str]:
    """Each shard's holder once every handover among `names` is done."""
    return {shard: name for name, got in shards.assigned(names).items() for shard in got}


def test_300_channels_over_3_replicas_each_bot_polled_once_each_message_answered_once(
    replicated: Platform, apis: ChatApis, slow_agent: A2AAgent
) -> None:
    """Acceptance e."""
    platform = replicated
    bound = [b for n in range(30) for b in new_bots(platform, apis, slow_agent, f"bots-{n}", 10)]
    client = sync_redis(platform.settings.redis_url)

    def statuses() -> collections.Counter[str]:
        with client.pipeline(transaction=False) as pipe:
            for _, _, channel_id in bound:
                pipe.hget(keys.channel(channel_id), "status")
            return collections.Counter((s or b"").decode() for s in pipe.execute())

    wait_for(lambda: statuses()["running"] == 300, 120, interval_s=0.5, what="300 channels running")

    def shares() -> dict[str, int]:
        return {name: platform.subsystem(name)["progress"]["running"] for name in NAMES}

    # Every replica runs a share of them, and together each channel once.
    wait_for(lambda: sum(shares().values()) == 300 and all(shares().values()), 60, what="channels shared")

    sent: dict[str, list[int]] = collections.defaultdict(list)  # bot token -> its messages
    chat_of = {token: 1000 + n for n, (_, token, _) in enumerate(bound)}

    def send_round(tokens: list[str], label: str) -> None:
        for token in tokens:
            sent[token].append(apis.send(token, chat_of[token], f"{label} to {token[:8]}"))

    def answered(tokens: list[str]) -> bool:
        return all({r["reply_to"] for r in apis.replies(token)} >= set(sent[token]) for token in tokens)

    tokens = [token for _, token, _ in bound]
    send_round(tokens, "one")
    wait_for(lambda: answered(tokens), 120, interval_s=0.5, what="round one answered")

    # A replica leaves and comes back, with messages arriving meanwhile: its channels are
    # handed over (pollers stopped first, answers in flight finished) and back again.
    send_round(tokens[:150], "two")
    platform.deployment.scale(ChannelManager, 2)
    send_round(tokens[150:], "two")
    wait_for(lambda: holders(platform) == settled(NAMES[:2]), 60, what="two replicas holding their shares")
    platform.deployment.scale(ChannelManager, 3)
    send_round(tokens, "three")
    wait_for(lambda: holders(platform) == settled(NAMES), 60, what="three replicas holding their shares again")
    wait_for(lambda: answered(tokens), 120, interval_s=0.5, what="rounds two and three answered")

    # A replica lost for good (as with its node): its channels resume on the others once its
    # membership and leases run out.
    owners = holders(platform)
    lost_shards = {s for s, name in owners.items() if name == NAMES[2]}
    lost = [token for _, token, channel_id in bound if keys.shard_of(channel_id) in lost_shards]
    assert lost, owners
    NamedActor(NAMES[2], platform.settings.ray_namespace).kill(restart=False)
    killed = time.monotonic()
    send_round(tokens, "four")
    wait_for(lambda: answered(lost), 60, interval_s=0.2, what="the lost replica's channels answering again")
    print(f"{len(lost)} channels of the lost replica answered again {time.monotonic() - killed:.1f} s after it died")
    wait_for(lambda: answered(tokens), 60, interval_s=0.5, what="round four answered")
    assert not set(holders(platform).values()) & {NAMES[2]}

    # Each message answered exactly once, and no bot ever polled by two replicas at once.
    time.sleep(2)  # a second answer to anything would have come by now
    twice = {
        token: [m for m, n in collections.Counter(r["reply_to"] for r in apis.replies(token)).items() if n > 1]
        for token in tokens
    }
    assert {t: m for t, m in twice.items() if m} == {}
    assert sum(len(sent[t]) for t in tokens) == 300 * 4
    assert {t: c for t, c in apis.conflicts().items() if t in sent} == {}
