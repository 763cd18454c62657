"""A quiet tenant's latency with its noisy neighbour idle, then at 100x the quiet tenant's load.

1. Scheduler: the quiet tenant has 10 schedules every 2 s (5 fires/s) at a fast a2a-sdk
   agent; lateness (arrival at the agent minus the slot) over 30 s. Then the noisy tenant
   adds 500 every-second schedules (500 fires/s, 100x) at a workspace that accepts and
   never answers (the worst neighbour: every fire holds its slot until FIRE_TIMEOUT_S),
   and the quiet tenant's lateness is measured again over 30 s.
2. Relay: the quiet tenant's Telegram chat gets 5 messages a second; reply latency (the
   update's arrival at the loopback Bot API to the reply's) over 30 s. Then the noisy
   tenant's 16 channels, bound to a workspace that never answers, get 500 messages a
   second (100x), and the quiet tenant's latency is measured again.
The baseline of each is the same quiet tenant, in the same run, with its neighbour idle;
the claim is the ratio (goal: p99 within 1.2x).
"""

from __future__ import annotations

import itertools
import threading
import time

import harness

from actors.channels.manager import ChannelManager
from actors.scheduler import Scheduler
from tests.a2a_agent import A2AAgent, BlackHole
from tests.chat_apis import ChatApis
from tests.support import Platform, wait_for

WINDOW_S = 30


def workspace(platform: Platform, tenant: dict, url: str) -> str:
    status, body = platform.tenant_post(tenant, "/workspaces", {"name": "w", "url": url})
    assert status == 201, body
    return body["id"]


def schedules(platform: Platform, tenant: dict, workspace_id: str, cron: str, count: int) -> set[str]:
    made = set()
    for _ in range(count):
        status, body = platform.tenant_post(
            tenant, "/schedules", {"workspace_id": workspace_id, "name": "s", "cron": cron, "prompt": "p"}
        )
        assert status == 201, body
        made.add(body["id"])
    return made


def lateness(agent: A2AAgent, ids: set[str], start: float, end: float) -> list[float]:
    late = []
    for r in agent.requests:
        message_id = r["body"]["params"]["message"]["messageId"]
        schedule_id, _, slot = message_id.removeprefix("cron-").rpartition("-")
        if schedule_id in ids and start <= int(slot) < end:
            late.append(r["at"] - int(slot))
    return late


def scheduler_figures() -> None:
    agent, hole = A2AAgent().start(), BlackHole().start()
    try:
        with harness.platform([Scheduler], fire_timeout_s=10.0) as platform:
            quiet, noisy = platform.new_tenant("quiet"), platform.new_tenant("noisy")
            mine = schedules(platform, quiet, workspace(platform, quiet, agent.url), "*/2 * * * * *", 10)
            time.sleep(3)
            start = time.time()
            time.sleep(WINDOW_S)
            alone = lateness(agent, mine, start, time.time() - 2)
            schedules(platform, noisy, workspace(platform, noisy, hole.url), "* * * * * *", 500)
            wait_for(lambda: hole.open >= 16, 30, what="the noisy tenant's fires in flight")
            start = time.time()
            time.sleep(WINDOW_S)
            crowded = lateness(agent, mine, start, time.time() - 2)
            print("scheduler: the quiet tenant's lateness (10 schedules every 2 s)")
            print(f"  noisy neighbour idle:              {harness.summary(alone)}")
            print(f"  noisy neighbour at 500 fires/s (hung): {harness.summary(crowded)}")
            print(f"  ratio crowded / idle: {harness.ratios(crowded, alone)} (goal: p99 within 1.2x)")
            print(f"  the noisy tenant's fires open at once, at most: {hole.peak}")
    finally:
        agent.stop()
        hole.stop()


QUIET_PER_S = 5


def reply_latency(apis: ChatApis, token: str, chat: int, seconds: float) -> list[float]:
    sent = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sent.append(apis.send(token, chat, f"hello {len(sent)}"))
        time.sleep(1 / QUIET_PER_S)
    wait_for(lambda: {r["reply_to"] for r in apis.replies(token, chat)} >= set(sent), 60, what="every reply")
    replies = {r["reply_to"]: r["at"] for r in apis.replies(token, chat)}
    return [replies[m] - apis.bot(token).arrived[m] for m in sent]


def relay_figures() -> None:
    apis = ChatApis()
    agent, hanging = A2AAgent().start(), A2AAgent(hold_prefix="hang").start()
    tokens = (f"{900000 + n}:AAH{'x' * 30}{n}" for n in itertools.count())
    try:
        with harness.platform(
            [ChannelManager], telegram_api_base=apis.telegram_base, channel_reply_timeout_s=600.0
        ) as platform:
            quiet, noisy = platform.new_tenant("quiet"), platform.new_tenant("noisy")

            def channel(tenant: dict, url: str) -> str:
                token = next(tokens)
                apis.bot(token)
                ws = workspace(platform, tenant, url)
                body = {"workspace_id": ws, "type": "telegram", "config": {"bot_token": token}}
                status, made = platform.tenant_post(tenant, "/channels", body)
                assert status == 201, made
                return token

            mine = channel(quiet, agent.url)
            theirs = [channel(noisy, hanging.url) for _ in range(16)]
            time.sleep(5)  # every poller in its long poll
            alone = reply_latency(apis, mine, 1, WINDOW_S)
            stop = threading.Event()

            def flood() -> None:  # 100x the quiet tenant's rate, over 16 channels and 64 chats each
                n = 0
                while not stop.is_set():
                    for token in theirs:
                        apis.send(token, 7000 + n % 64, f"hang {n}")
                    n += 1
                    time.sleep(len(theirs) / (100 * QUIET_PER_S))

            flooder = threading.Thread(target=flood, daemon=True)
            flooder.start()
            time.sleep(5)
            crowded = reply_latency(apis, mine, 1, WINDOW_S)
            stop.set()
            flooder.join(5)
            progress = platform.subsystem("channel-manager")["progress"]
            print(f"relay: the quiet tenant's reply latency ({QUIET_PER_S} messages a second)")
            print(f"  noisy neighbour idle:                            {harness.summary(alone)}")
            print(f"  noisy neighbour at {100 * QUIET_PER_S} messages/s (hung agent): {harness.summary(crowded)}")
            print(f"  ratio crowded / idle: {harness.ratios(crowded, alone)} (goal: p99 within 1.2x)")
            print(f"  the noisy tenant's calls held by its agent: {len(hanging.bodies_for('channel-telegram-'))}")
            print(f"  channel manager backlog at the end: {progress['backlog']}")
    finally:
        hanging.released.set()
        agent.stop()
        hanging.stop()
        apis.stop()


def main() -> None:
    scheduler_figures()
    relay_figures()


if __name__ == "__main__":
    main()
