"""Channel relay: messages/s and latency end to end, and the channel manager's memory per idle channel.

1. 100 Telegram channels of 20 tenants on the loopback Bot API (tests/chat_apis.py), each
   tenant's workspace one of 4 real A2A agents (a2a-sdk, tests/a2a_agent.py):
   a. throughput: 2,000 messages over 500 chats written at once, time until every reply
      is posted;
   b. latency at half that rate: from the update's arrival at the Bot API to the reply's
      arrival there, p50/p99.
   Baseline in the same run, against the same Bot API and agents: a minimal relay in one
   asyncio process (getUpdates per bot, then A2A, then sendMessage; in order per chat,
   RELAY_SLOTS at once), with no Ray, no Redis, no durability.
2. Memory: USS and PSS of the channel manager's process with no channel, then with 1,000
   idle Telegram channels each in its long poll; the difference per channel.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import time
from collections import defaultdict
from typing import Any

import aiohttp
import harness
import psutil

from actors.a2a_client import reply_texts, send
from actors.channels import telegram
from actors.channels.manager import RELAY_SLOTS, ChannelManager
from actors.egress import egress_for
from settings import Settings
from store.channels import Inbound
from tests.a2a_agent import A2AAgent
from tests.chat_apis import ChatApis
from tests.support import LOOPBACK, Platform, wait_for

TENANTS, CHANNELS, CHATS_PER_CHANNEL = 20, 100, 5
BURST = 2_000
PACED_S = 8.0
IDLE_CHANNELS = 1_000


def token(n: int) -> str:
    return f"{700000 + n}:AAH{'b' * 30}{n:05d}"


# -- the baseline relay --------------------------------------------------------------------


def baseline_relay(base: str, tokens: list[str], agent_of: dict[str, str], stop: Any) -> None:
    """Poll each bot, ask its agent, post the answer: in order per chat, RELAY_SLOTS at once."""

    async def main() -> None:
        slots = asyncio.Semaphore(RELAY_SLOTS)
        locks: dict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        # The agents' calls go through the platform's own A2A client and egress (loopback allowed),
        # as the channel manager's do; the Bot API calls through a plain session.
        egress = egress_for(Settings(egress_allow_cidrs=LOOPBACK), limit=RELAY_SLOTS)
        await egress.open()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def handle(bot: str, message: Inbound) -> None:
                async with locks[(bot, message.chat_id)], slots:
                    outcome = await send(egress, agent_of[bot], "1.0", message.message_id, message.text, 60)
                    text = "\n\n".join(reply_texts(outcome.result)) or "(no reply)"
                    await telegram.send_message(session, base, bot, message, text, 10)

            async def poll(bot: str) -> None:
                offset, tasks = 0, set()
                while not stop.is_set():
                    updates = await telegram.get_updates(session, base, bot, offset, 1)
                    for update in updates:
                        offset = max(offset, update["update_id"] + 1)
                        if (message := telegram.message_of(update)) is not None:
                            # Chained per chat by the lock; created in arrival order.
                            task = asyncio.create_task(handle(bot, message))
                            tasks.add(task)
                            task.add_done_callback(tasks.discard)

            await asyncio.gather(*(poll(bot) for bot in tokens))

    asyncio.run(main())


# -- load ----------------------------------------------------------------------------------


def write(apis: ChatApis, tokens: list[str], count: int, rate: float | None) -> list[tuple[str, int, int]]:
    """`count` messages round-robin over every bot and chat, at `rate` per second or at once."""
    sent = []
    start = time.monotonic()
    for i in range(count):
        bot = tokens[i % len(tokens)]
        chat = 5000 + (i // len(tokens)) % CHATS_PER_CHANNEL
        sent.append((bot, chat, apis.send(bot, chat, f"message {i}")))
        if rate is not None:
            time.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
    return sent


def latencies(apis: ChatApis, sent: list[tuple[str, int, int]]) -> list[float]:
    """Seconds from each update's arrival to its reply's."""
    replies = {bot: {r["reply_to"]: r["at"] for r in apis.replies(bot)} for bot in {b for b, _, _ in sent}}
    return [replies[bot][m] - apis.bot(bot).arrived[m] for bot, _, m in sent if m in replies[bot]]


def all_replied(apis: ChatApis, sent: list[tuple[str, int, int]]) -> bool:
    by_bot: dict[str, set[int]] = defaultdict(set)
    for bot, _, message_id in sent:
        by_bot[bot].add(message_id)
    return all({r["reply_to"] for r in apis.replies(bot)} >= ids for bot, ids in by_bot.items())


def run_load(apis: ChatApis, tokens: list[str]) -> tuple[float, list[float]]:
    """(burst messages/s, latencies at half that rate)."""
    start = time.monotonic()
    sent = write(apis, tokens, BURST, None)
    wait_for(lambda: all_replied(apis, sent), 600, interval_s=0.05, what="burst replied")
    rate = BURST / (time.monotonic() - start)
    paced = write(apis, tokens, int(rate / 2 * PACED_S), rate / 2)
    wait_for(lambda: all_replied(apis, paced), 600, interval_s=0.05, what="paced replied")
    return rate, latencies(apis, paced)


# -- the two systems -----------------------------------------------------------------------


def platform_figures(apis: ChatApis, agents: list[A2AAgent]) -> tuple[float, list[float]]:
    tokens = [token(n) for n in range(CHANNELS)]
    with harness.platform(
        [ChannelManager],
        telegram_api_base=apis.telegram_base,
        slack_api_base=apis.slack_base,
    ) as platform:
        bind_all(platform, apis, agents, tokens)
        return run_load(apis, tokens)


def bind_all(platform: Platform, apis: ChatApis, agents: list[A2AAgent], tokens: list[str]) -> None:
    tenants = [platform.new_tenant(f"bench-{n}") for n in range(TENANTS)]
    workspaces = []
    for n, tenant in enumerate(tenants):
        url = agents[n % len(agents)].url
        status, workspace = platform.tenant_post(tenant, "/workspaces", {"name": "agent", "url": url})
        assert status == 201, workspace
        workspaces.append(workspace["id"])
    for n, bot in enumerate(tokens):
        apis.bot(bot)
        body = {"workspace_id": workspaces[n % TENANTS], "type": "telegram", "config": {"bot_token": bot}}
        status, reply = platform.tenant_post(tenants[n % TENANTS], "/channels", body)
        assert status == 201, reply
    wait_for(
        lambda: platform.subsystem("channel-manager")["progress"]["running"] == len(tokens),
        300,
        interval_s=0.5,
        what="every channel running",
    )


def baseline_figures(apis: ChatApis, agents: list[A2AAgent]) -> tuple[float, list[float]]:
    tokens = [token(10_000 + n) for n in range(CHANNELS)]
    for bot in tokens:
        apis.bot(bot)
    agent_of = {bot: agents[(n % TENANTS) % len(agents)].url for n, bot in enumerate(tokens)}
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    process = context.Process(target=baseline_relay, args=(apis.telegram_base, tokens, agent_of, stop), daemon=True)
    process.start()
    try:
        return run_load(apis, tokens)
    finally:
        stop.set()
        process.join(10)
        if process.is_alive():
            process.terminate()


def memory() -> None:
    apis = ChatApis()
    agent = A2AAgent().start()
    try:
        tokens = [token(50_000 + n) for n in range(IDLE_CHANNELS)]
        with harness.platform([ChannelManager], telegram_api_base=apis.telegram_base) as platform:
            pid = platform.pid_of("channel-manager")
            time.sleep(5)
            before = psutil.Process(pid).memory_full_info()
            bind_all(platform, apis, [agent], tokens)
            wait_for(lambda: sum(1 for b in tokens if apis.bot(b).polls) == IDLE_CHANNELS, 120, interval_s=0.5)
            time.sleep(5)
            after = psutil.Process(pid).memory_full_info()
    finally:
        agent.stop()
        apis.stop()
    for name in ("uss", "pss"):
        b, a = getattr(before, name), getattr(after, name)
        print(
            f"  channel manager {name.upper()}: {b / 2**20:.1f} MiB with no channel, {a / 2**20:.1f} MiB with "
            f"{IDLE_CHANNELS:,} idle channels in long polls: {(a - b) / IDLE_CHANNELS / 1024:.1f} KiB per channel"
        )


def main() -> None:
    # This process is the load generator (Bot API stand-in, agents); its GC pauses (50-90 ms
    # with this many live objects) would be counted as the relays' latency.
    gc.disable()
    apis = ChatApis()
    agents = [A2AAgent().start() for _ in range(4)]
    try:
        print(f"{CHANNELS} channels of {TENANTS} tenants, {CHANNELS * CHATS_PER_CHANNEL} chats, 4 A2A agents")
        base_rate, base_lat = baseline_figures(apis, agents)
        rate, lat = platform_figures(apis, agents)
    finally:
        for agent in agents:
            agent.stop()
        apis.stop()
    print(f"  throughput ({BURST:,} at once): platform {rate:,.0f} msg/s, baseline {base_rate:,.0f} msg/s")
    print(f"    ratio platform/baseline: {rate / base_rate:.2f}")
    print(f"  latency at half rate: platform {harness.summary(lat)}")
    print(f"                        baseline {harness.summary(base_lat)}")
    memory()


if __name__ == "__main__":
    main()
