"""A game day: random faults under load, reproducible from a seed, and an account of every item.

    python bench/game_day.py --seed 7 --minutes 30
    python bench/game_day.py --seed 1 --minutes 3      (the short form tests/test_game_day.py runs)

Several tenants keep the platform busy: every-2-s schedules at their own a2a-sdk agents,
events posted and read by WebSocket clients that reconnect with `last_event_id`, Telegram
chats through the Bot API stand-in, and heartbeating workspaces. Every few seconds a fault
chosen and timed by the seed lands: a SIGKILL of any platform actor (the HealthActor and
the API included), `block` / `hang` / `raise` through /admin/faults, a Redis restart (its
AOF kept), a tenant's agent that stops answering for a while, Telegram 429 and 5xx bursts,
a workspace that stops heartbeating. Faults overlap. Then the load stops, everything
drains, and the account says what became of every slot, event, chat message and
heartbeat gap, and fails naming what was lost, doubled or late.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import harness  # noqa: E402
import redis  # noqa: E402
import websockets  # noqa: E402

from actors.runtime.handles import NamedActor  # noqa: E402
from driver import SUBSYSTEMS  # noqa: E402
from store import keys  # noqa: E402
from store.embedded import EmbeddedRedis  # noqa: E402
from tests.a2a_agent import A2AAgent  # noqa: E402
from tests.chat_apis import ChatApis  # noqa: E402
from tests.support import Platform, start_platform, wait_for  # noqa: E402
from tests.ws_client import ws_url  # noqa: E402

TENANTS = 3
SCHEDULES_PER_TENANT = 4
PERIOD_S = 2  # every schedule is "*/2 * * * * *"
SUBSCRIBERS_PER_TENANT = 2
EVENT_EVERY_S = 0.5
CHAT_EVERY_S = 2.0
HEARTBEAT_EVERY_S = 1.0
SETTINGS = {
    "workspace_ttl_s": 4.0,
    "fire_timeout_s": 5.0,  # an agent that stops answering costs each fire 5 s, not 30
    "channel_reply_timeout_s": 10.0,
    "telegram_poll_timeout_s": 5.0,
}
CALM_S = 20.0  # no fault at first: the no-fault figures
QUIET_S = 30.0  # after the last fault, load goes on while everything recovers
DRAIN_S = 60.0  # after the load stops, at most this long for the last deliveries
SUBSYSTEM_NAMES = [cls.spec.name for cls in SUBSYSTEMS] + ["api"]
ACTORS = [*SUBSYSTEM_NAMES, "health"]
# How long after a fault its target may stay unavailable: slots missed or late, duplicates
# and heartbeat gaps inside such a window are the fault's doing.
RECOVERY_S = {"kill": 25.0, "block": 30.0, "hang": 30.0, "raise": 8.0, "redis-restart": 15.0}


@dataclass(frozen=True)
class Fault:
    at_s: float  # seconds after the load started
    kind: str
    target: str  # an actor, a subsystem, a tenant index ("t0"), or "redis"
    seconds: float | None = None

    @property
    def lasts_s(self) -> float:
        """From its start until its target has surely recovered: a short block is over when it ends."""
        if self.kind == "block" and self.seconds is not None:
            return self.seconds + 5.0
        return (self.seconds or 0.0) + RECOVERY_S.get(self.kind, 5.0)

    def __str__(self) -> str:
        extra = "" if self.seconds is None else f" {self.seconds:.1f} s"
        return f"{self.at_s:7.1f} s  {self.kind:<16} {self.target}{extra}"


def plan(seed: int, seconds: float) -> list[Fault]:
    """The faults of a run: the same seed and length give the same list."""
    rng = random.Random(seed)
    kinds = {
        "kill": 3,
        "block": 2,
        "hang": 1,
        "raise": 2,
        "redis-restart": 1,
        "agent-outage": 2,
        "telegram-429": 1,
        "telegram-5xx": 1,
        "heartbeat-pause": 2,
    }
    busy: dict[str, float] = {}  # an actor under a fault is not chosen again until it recovers
    faults = []
    at = CALM_S
    end = seconds - QUIET_S
    while True:
        at += rng.uniform(3.0, 9.0)
        if at > end:
            return faults
        kind = rng.choices(list(kinds), weights=list(kinds.values()))[0]
        if kind in ("kill", "block", "hang", "raise"):
            pool = ACTORS if kind == "kill" else SUBSYSTEM_NAMES
            free = [a for a in pool if busy.get(a, 0.0) <= at and busy.get("redis", 0.0) <= at]
            if kind != "kill" and max(busy.get("api", 0.0), busy.get("health", 0.0)) > at:
                continue  # /admin/faults goes through the API and the HealthActor: both must be up
            if not free:
                continue
            target = rng.choice(free)
            busy[target] = at + RECOVERY_S[kind]
            # A block is forever (the watchdog restarts the actor) or shorter than any kill_after_s
            # (the actor comes back by itself; the API's callers time out meanwhile).
            seconds = round(rng.uniform(2.0, 3.5), 1) if kind == "block" and rng.random() < 0.5 else None
            faults.append(Fault(round(at, 1), kind, target, seconds))
        elif kind == "redis-restart":
            if max(busy.values(), default=0.0) > at:
                continue  # one restart at a time, and not under a subsystem still recovering
            busy["redis"] = at + RECOVERY_S[kind]
            faults.append(Fault(round(at, 1), kind, "redis"))
        else:
            target = f"t{rng.randrange(TENANTS)}"
            seconds_by_kind = {
                "agent-outage": rng.uniform(5.0, 15.0),
                "telegram-429": float(rng.randint(2, 5)),
                "telegram-5xx": float(rng.randint(2, 6)),
                "heartbeat-pause": SETTINGS["workspace_ttl_s"] + rng.uniform(2.0, 6.0),
            }
            faults.append(Fault(round(at, 1), kind, target, round(seconds_by_kind[kind], 1)))


@dataclass
class Tenant:
    """One tenant's load and what it saw."""

    index: int
    record: dict[str, Any]
    agent: A2AAgent
    bot_token: str
    chat_id: int
    fires_ws: str = ""
    beats_ws: str = ""
    schedules: list[str] = field(default_factory=list)
    posted: list[str] = field(default_factory=list)  # stream ids of events answered 202
    received: list[list[str]] = field(default_factory=list)  # per subscriber, every event id in order
    reconnects: list[int] = field(default_factory=list)
    opened: set[int] = field(default_factory=set)  # subscribers whose first connection is open
    first_open: dict[int, float] = field(default_factory=dict)  # when each subscriber first saw its connection open
    all_open: asyncio.Event = field(default_factory=asyncio.Event)
    sent: list[tuple[int, float]] = field(default_factory=list)  # chat message ids and when
    beats: list[float] = field(default_factory=list)  # when each heartbeat was answered 204
    beats_paused_until: float = 0.0

    @property
    def token(self) -> str:
        return self.record["token"]


class Load:
    """The tenants' steady load, run on an event loop of its own until `stop`."""

    def __init__(self, platform: Platform, tenants: list[Tenant], apis: ChatApis) -> None:
        self.platform = platform
        self.tenants = tenants
        self.apis = apis
        self.stopping = asyncio.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.tasks: list[asyncio.Future[Any]] = []

    def start(self) -> None:
        self.thread.start()
        for tenant in self.tenants:
            for n in range(SUBSCRIBERS_PER_TENANT):
                tenant.received.append([])
                tenant.reconnects.append(0)
                self._run(self._subscribe(tenant, n))
            self._run(self._post_events(tenant))
            self._run(self._heartbeats(tenant))
            self._run(self._chat(tenant))

    def _run(self, coroutine: Any) -> None:
        self.tasks.append(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    def stop_writing(self) -> None:
        """No more events, chat messages or heartbeats; subscribers keep reading."""
        self.loop.call_soon_threadsafe(self.stopping.set)

    def close(self) -> None:
        """Cancel every load task and wait for them (sockets closed) before the loop stops."""

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _post_events(self, tenant: Tenant) -> None:
        headers = {"Authorization": f"Bearer {tenant.token}"}
        timeout = aiohttp.ClientTimeout(total=3)
        n = 0
        # The contract covers what is appended after a client sees its connection open.
        await tenant.all_open.wait()
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not self.stopping.is_set():
                n += 1
                body = {"event": "GAME", "payload": {"n": n}}
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.post(f"{self.platform.url}/events", json=body, headers=headers) as response:
                        if response.status == 202:
                            tenant.posted.append((await response.json())["id"])
                await asyncio.sleep(EVENT_EVERY_S)

    async def _subscribe(self, tenant: Tenant, n: int) -> None:
        """Read every event of the tenant, reconnecting with the last id seen after any close."""
        received = tenant.received[n]
        while True:
            params = {"last_event_id": received[-1]} if received else {}
            try:
                async with websockets.connect(
                    ws_url(self.platform.url, **params),
                    additional_headers={"Authorization": f"Bearer {tenant.token}"},
                    open_timeout=5,
                ) as connection:
                    tenant.opened.add(n)
                    tenant.first_open.setdefault(n, time.time())
                    if len(tenant.opened) == SUBSCRIBERS_PER_TENANT:
                        tenant.all_open.set()
                    async for frame in connection:
                        received.append(json.loads(frame)["id"])
            except (OSError, websockets.WebSocketException, TimeoutError):
                pass
            tenant.reconnects[n] += 1
            await asyncio.sleep(0.2)

    async def _heartbeats(self, tenant: Tenant) -> None:
        headers = {"Authorization": f"Bearer {tenant.token}"}
        url = f"{self.platform.url}/workspaces/{tenant.beats_ws}/heartbeat"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while not self.stopping.is_set():
                if time.time() >= tenant.beats_paused_until:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with session.post(url, headers=headers) as response:
                            if response.status == 204:
                                tenant.beats.append(time.time())
                await asyncio.sleep(HEARTBEAT_EVERY_S)

    async def _chat(self, tenant: Tenant) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            message_id = self.apis.send(tenant.bot_token, tenant.chat_id, f"m{n}")
            tenant.sent.append((message_id, time.time()))
            await asyncio.sleep(CHAT_EVERY_S)


class Injector:
    """Lands each fault of the plan at its time; faults with a length undo themselves."""

    def __init__(self, platform: Platform, redis_server: EmbeddedRedis, tenants: list[Tenant], apis: ChatApis) -> None:
        self.platform = platform
        self.redis_server = redis_server
        self.tenants = tenants
        self.apis = apis
        self.landed: list[tuple[Fault, float, str]] = []  # the fault, when, and what happened

    def run(self, faults: list[Fault], started: float) -> None:
        for fault in faults:
            delay = started + fault.at_s - time.time()
            if delay > 0:
                time.sleep(delay)
            begun = time.time()  # its window opens when landing starts (a Redis restart takes a second or two)
            try:
                outcome = self.land(fault)
            except Exception as exc:  # a fault that could not land is reported, not fatal
                outcome = f"not landed: {type(exc).__name__}: {exc}"
            self.landed.append((fault, begun, outcome))
            print(f"  {fault}  -> {outcome}", flush=True)

    def land(self, fault: Fault) -> str:
        namespace = self.platform.settings.ray_namespace
        if fault.kind == "kill":
            pid = NamedActor(fault.target, namespace).call_sync("ping", timeout_s=10)["pid"]
            os.kill(pid, signal.SIGKILL)
            return f"pid {pid} killed"
        if fault.kind in ("block", "hang", "raise"):
            request: dict[str, Any] = {"subsystem": fault.target, "fault": fault.kind}
            if fault.seconds is not None:
                request["seconds"] = fault.seconds
            status, body = self.platform.post("/admin/faults", request, timeout_s=10)
            return "202" if status == 202 else f"not landed: {status} {body}"
        if fault.kind == "redis-restart":
            self.redis_server.stop()
            self.redis_server.start()
            return "restarted"
        tenant = self.tenants[int(fault.target[1:])]
        assert fault.seconds is not None
        if fault.kind == "agent-outage":
            tenant.agent.outage_until = time.time() + fault.seconds
        elif fault.kind == "telegram-429":
            self.apis.rate_limit(tenant.bot_token, int(fault.seconds))
        elif fault.kind == "telegram-5xx":
            self.apis.fail_polls(tenant.bot_token, int(fault.seconds))
        elif fault.kind == "heartbeat-pause":
            tenant.beats_paused_until = time.time() + fault.seconds
        return "ok"


def setup(platform: Platform, apis: ChatApis) -> list[Tenant]:
    tenants = []
    for index in range(TENANTS):
        record = platform.new_tenant(f"game-{index}")
        agent = A2AAgent().start()
        token = f"{880000 + index}:AAH{'g' * 30}{index}"
        apis.bot(token)
        tenant = Tenant(index, record, agent, token, chat_id=1000 + index)
        for name in ("fires", "beats"):
            status, ws = platform.tenant_post(record, "/workspaces", {"name": name, "url": agent.url})
            assert status == 201, ws
            setattr(tenant, f"{name}_ws", ws["id"])
        for n in range(SCHEDULES_PER_TENANT):
            body = {"workspace_id": tenant.fires_ws, "name": f"s{n}", "cron": "*/2 * * * * *", "prompt": f"t{index}"}
            status, schedule = platform.tenant_post(record, "/schedules", body)
            assert status == 201, schedule
            tenant.schedules.append(schedule["id"])
        channel = {"workspace_id": tenant.fires_ws, "type": "telegram", "config": {"bot_token": token}}
        status, created = platform.tenant_post(record, "/channels", channel)
        assert status == 201, created
        tenants.append(tenant)
    return tenants


# -- the account ---------------------------------------------------------------------------


@dataclass
class Account:
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        self.lines.append(line)

    def fail(self, line: str) -> None:
        self.failures.append(line)


def pct(values: list[float], p: float) -> float:
    return harness.percentile(values, p) if values else float("nan")


def cron_receipts(tenant: Tenant) -> list[tuple[str, int, float]]:
    """Every fire the tenant's agent received: (schedule id, slot, when), in arrival order."""
    with tenant.agent.lock:
        requests = list(tenant.agent.requests)
    found = []
    for request in requests:
        message_id = request["body"].get("params", {}).get("message", {}).get("messageId", "")
        if message_id.startswith("cron-"):
            schedule_id, _, slot = message_id[5:].rpartition("-")
            found.append((schedule_id, int(slot), request["at"]))
    return found


def in_windows(moment: float, windows: list[tuple[float, float]]) -> bool:
    return any(begin <= moment <= end for begin, end in windows)


def windows(landed: list[tuple[Fault, float, str]], kinds: set[str], targets: set[str]) -> list[tuple[float, float]]:
    found = []
    for fault, at, outcome in landed:
        if fault.kind in kinds and fault.target in targets and not outcome.startswith("not landed"):
            found.append((at, at + fault.lasts_s))
    return found


ACTOR_FAULTS = {"kill", "block", "hang", "raise"}


def scheduler_away(landed: list[tuple[Fault, float, str]]) -> list[tuple[float, float]]:
    """When the scheduler could not fire on time: its own faults and Redis restarts."""
    return windows(landed, ACTOR_FAULTS, {"scheduler"}) + windows(landed, {"redis-restart"}, {"redis"})


def account_schedules(
    account: Account, tenants: list[Tenant], landed: list[tuple[Fault, float, str]], first: float, last: float
) -> dict[str, list[float]]:
    """Every slot due in [first, last] delivered at least once, unless the scheduler could not
    fire anything at that slot (down, wedged, Redis away: then the contract delivers only the
    latest missed slot); duplicates only across a scheduler restart. Returns lateness by tenant."""
    receipts: dict[tuple[str, int], list[float]] = defaultdict(list)
    for tenant in tenants:
        for schedule_id, slot, at in cron_receipts(tenant):
            receipts[(schedule_id, slot)].append(at)
    scheduler_down = scheduler_away(landed)
    slots = [s for s in range(int(first) + 1, int(last)) if s % PERIOD_S == 0]
    lateness: dict[str, list[float]] = {}
    expected = delivered = excused = duplicates = 0
    for tenant in tenants:
        late = lateness.setdefault(f"t{tenant.index}", [])
        for schedule_id in tenant.schedules:
            for slot in slots:
                expected += 1
                got = sorted(receipts.get((schedule_id, slot), []))
                if not got:
                    if in_windows(slot, scheduler_down):
                        # The scheduler was away (some slots of a tick may have been claimed before
                        # a kill): the contract then fires the latest slot only.
                        excused += 1
                    else:
                        account.fail(
                            f"slot lost: schedule {schedule_id} (t{tenant.index}) slot {slot}, "
                            f"{slot - first + 2:.0f} s into the run"
                        )
                    continue
                delivered += 1
                late.append(got[0] - slot)
                if len(got) > 1:
                    duplicates += len(got) - 1
                    if not in_windows(got[0], scheduler_down) and not in_windows(got[1], scheduler_down):
                        account.fail(f"slot doubled outside a scheduler restart: cron-{schedule_id}-{slot}")
    account.say(
        f"schedule slots: {expected} due, {delivered} delivered, {excused} missed while the scheduler was away "
        f"(the contract then fires the latest only), {duplicates} delivered twice (same messageId, at a restart)"
    )
    return lateness


def id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def owed(client: redis.Redis, tenant: Tenant, n: int, until: float) -> dict[str, str]:
    """The events subscriber `n` must get: every one appended to the tenant's stream after its
    first connection opened (the contract), up to `until`; id -> event name."""
    after, upto = int(tenant.first_open[n] * 1000) + 1, int(until * 1000)
    entries = client.xrange(keys.events(tenant.record["id"]), min=f"{after}-0", max=f"{upto}-0")
    return {stream_id.decode(): fields.get(b"event", b"").decode() for stream_id, fields in entries}


def account_events(account: Account, tenants: list[Tenant], started: float, owing: list[list[dict[str, str]]]) -> None:
    """Every event of the tenant's stream, its own and the platform's, reaches each client once, in order."""
    posted = received = appended = 0
    for tenant, owed_to in zip(tenants, owing, strict=True):
        posted += len(tenant.posted)
        for n, ids in enumerate(tenant.received):
            keys = [id_key(i) for i in ids]
            disorder = sum(1 for a, b in itertools.pairwise(keys) if b <= a)
            if disorder:
                account.fail(f"t{tenant.index} subscriber {n}: {disorder} events out of order or repeated")
            expected = owed_to[n]
            appended = max(appended, len(expected))
            missing = set(expected) - set(ids)
            for stream_id in sorted(missing, key=id_key)[:5]:
                later = sum(1 for i in ids if id_key(i) > id_key(stream_id))
                account.fail(
                    f"event lost: t{tenant.index} subscriber {n} never got {stream_id} ({expected[stream_id]}, "
                    f"{id_key(stream_id)[0] / 1000 - started:.1f} s into the run; it got {later} events after it, "
                    f"reconnected {tenant.reconnects[n]} times)"
                )
            if len(missing) > 5:
                account.fail(f"... and {len(missing) - 5} more events lost for t{tenant.index} subscriber {n}")
            received += len(set(expected) & set(ids))
    reconnects = sum(sum(t.reconnects) for t in tenants)
    account.say(
        f"events: {posted} posted (202) among the tenants' streams; {received} receipts by "
        f"{TENANTS * SUBSCRIBERS_PER_TENANT} WebSocket clients of every event appended after each one first "
        f"connected (its tenant's and the platform's; every one in order, once), {reconnects} reconnects"
    )


def account_chats(
    account: Account, tenants: list[Tenant], apis: ChatApis, landed: list[tuple[Fault, float, str]]
) -> None:
    """Every chat message answered once, in order. A second answer is at-least-once delivery,
    allowed only when the channel manager or Redis went away between posting and recording it."""
    relay_away = windows(landed, ACTOR_FAULTS, {"channel-manager"}) + windows(landed, {"redis-restart"}, {"redis"})
    sent = answered = twice = 0
    for tenant in tenants:
        replies = apis.replies(tenant.bot_token, tenant.chat_id)
        by_message: dict[int, list[float]] = defaultdict(list)
        for reply in replies:
            by_message[reply["reply_to"]].append(reply["at"])
        for message_id, _ in tenant.sent:
            sent += 1
            times = by_message.get(message_id, [])
            if not times:
                account.fail(f"chat message not answered: t{tenant.index} message {message_id}")
                continue
            answered += 1
            if len(times) > 1:
                twice += 1
                if not in_windows(times[0], relay_away):
                    account.fail(f"chat message answered {len(times)} times: t{tenant.index} message {message_id}")
        firsts = list(dict.fromkeys(r["reply_to"] for r in replies))
        if firsts != sorted(firsts):
            account.fail(f"t{tenant.index}: answers out of order")
    account.say(
        f"chat messages: {sent} sent, {answered} answered, in order per chat; "
        f"{twice} answered twice (at a channel manager restart)"
    )


def account_activity(account: Account, tenants: list[Tenant]) -> None:
    """A run where a tenant did nothing proves nothing: each must have worked in every way."""
    for tenant in tenants:
        for what, count in (
            ("slots delivered", len(cron_receipts(tenant))),
            ("events posted", len(tenant.posted)),
            ("chat messages sent", len(tenant.sent)),
            ("heartbeats answered", len(tenant.beats)),
        ):
            if count == 0:
                account.fail(f"t{tenant.index}: no {what}; the load did not run")


def account_workspaces(
    account: Account, tenants: list[Tenant], landed: list[tuple[Fault, float, str]], client: redis.Redis
) -> None:
    """Each gap in a workspace's heartbeats longer than its TTL: offline once, then online once."""
    ttl = SETTINGS["workspace_ttl_s"]
    monitor_away = windows(landed, ACTOR_FAULTS, {"liveness-monitor"}) + windows(landed, {"redis-restart"}, {"redis"})
    gaps_total = offline_total = excused = 0
    for tenant in tenants:
        beats = tenant.beats
        transitions = []
        for stream_id, fields in client.xrange(keys.events(tenant.record["id"])):
            name = fields.get(b"event", b"").decode()
            if name in ("WORKSPACE_OFFLINE", "WORKSPACE_ONLINE") and tenant.beats_ws.encode() in fields.get(
                b"payload", b""
            ):
                transitions.append((int(stream_id.decode().split("-")[0]) / 1000, name))
        # Once the load stops, the heartbeats stop too: what happens after the last one is not counted.
        last = beats[-1] if beats else 0.0
        offline = [at for at, name in transitions if name == "WORKSPACE_OFFLINE" and at < last]
        offline_total += len(offline)
        # Transitions alternate: online, offline, online, ...
        names = [name for _, name in transitions]
        if any(a == b for a, b in itertools.pairwise(names)):
            account.fail(f"t{tenant.index}: a workspace went offline or online twice in a row: {names}")
        for before, after in itertools.pairwise(beats):
            inside = [at for at in offline if before < at < after + 1.0]
            gap = after - before
            if gap > ttl + 2.0:
                gaps_total += 1
                if not inside:
                    if in_windows(before + ttl, monitor_away):
                        excused += 1
                    else:
                        account.fail(f"t{tenant.index}: heartbeats stopped {gap:.1f} s, never marked offline")
            elif gap < ttl - 0.5 and inside:
                account.fail(f"t{tenant.index}: marked offline with heartbeats {gap:.1f} s apart")
    account.say(
        f"workspaces: {gaps_total} heartbeat gaps past the {ttl:g} s TTL, {offline_total} offline transitions "
        f"(each followed by one online), {excused} gaps unnoticed while the liveness monitor was away"
    )


def account_restarts(
    account: Account, platform: Platform, landed: list[tuple[Fault, float, str]], before: dict[str, Any]
) -> None:
    body = wait_for(
        lambda: (lambda b: b if all(s["state"] == "RUNNING" for s in b["subsystems"].values()) else None)(
            platform.liveness()
        ),
        120,
        interval_s=1,
        what="every subsystem RUNNING at the end",
    )
    injected: dict[str, Counter[str]] = defaultdict(Counter)
    for fault, _, outcome in landed:
        if fault.kind not in ACTOR_FAULTS or fault.target == "health" or outcome.startswith("not landed"):
            continue
        if fault.kind == "block" and fault.seconds is not None:
            continue  # over before its kill_after_s: no restart
        reason = {"kill": "process", "block": "stalled", "hang": "stalled", "raise": "exception"}[fault.kind]
        injected[fault.target][reason] += 1
    rows = []
    for name in SUBSYSTEM_NAMES:
        counted = {
            r: body["subsystems"][name]["restarts"][r] - before[name][r] for r in ("exception", "process", "stalled")
        }
        want = injected[name]
        rows.append(f"    {name:<17} {counted}  injected {dict(want)}")
        for reason in ("process", "stalled"):
            if counted[reason] != want[reason]:
                account.fail(f"{name}: {counted[reason]} {reason} restarts counted, {want[reason]} injected")
        if counted["exception"] < want["exception"]:
            account.fail(f"{name}: {counted['exception']} exception restarts counted, {want['exception']} injected")
    account.say("every subsystem RUNNING at the end; restarts counted / injected:")
    account.lines.extend(rows)


def run(platform: Platform, redis_server: EmbeddedRedis, apis: ChatApis, seed: int, seconds: float) -> Account:
    """Run a game day on a started platform; returns the account (failures empty if it holds)."""
    faults = plan(seed, seconds)
    print(f"game day: seed {seed}, {seconds:.0f} s, {len(faults)} faults", flush=True)
    tenants = setup(platform, apis)
    before = {name: s["restarts"] for name, s in platform.liveness()["subsystems"].items()}
    wait_for(lambda: platform.get("/readyz", token=None)[0] == 200, 60, what="ready")
    load = Load(platform, tenants, apis)
    started = time.time()
    load.start()
    injector = Injector(platform, redis_server, tenants, apis)
    try:
        injector.run(faults, started)
        time.sleep(max(0.0, started + seconds - time.time()))
        stopped = time.time()
        load.stop_writing()

        client = redis.Redis.from_url(platform.settings.redis_url)
        owing = [[owed(client, t, n, stopped) for n in range(SUBSCRIBERS_PER_TENANT)] for t in tenants]

        # Everything written must arrive: answers, events, the last heartbeats' fate.
        def drained() -> bool:
            answered = all(
                {r["reply_to"] for r in apis.replies(t.bot_token, t.chat_id)} >= {m for m, _ in t.sent} for t in tenants
            )
            delivered = all(set(owing[t.index][n]) <= set(ids) for t in tenants for n, ids in enumerate(t.received))
            return answered and delivered

        with contextlib.suppress(AssertionError):
            wait_for(drained, DRAIN_S, interval_s=1, what="the last answers and events")
        account = Account()
        counts = Counter(f.kind for f, _, _ in injector.landed)
        account.say(f"seed {seed}, {seconds:.0f} s of load, faults landed: {dict(sorted(counts.items()))}")
        lateness = account_schedules(account, tenants, injector.landed, started + 2, stopped - 2 * PERIOD_S)
        account_events(account, tenants, started, owing)
        account_chats(account, tenants, apis, injector.landed)
        account_activity(account, tenants)
        account_workspaces(account, tenants, injector.landed, client)
        account_isolation(account, tenants, injector.landed, lateness, started)
        account_restarts(account, platform, injector.landed, before)
    finally:
        load.close()
        for tenant in tenants:
            tenant.agent.stop()
    if account.failures:
        account.say(
            f"FAILED ({len(account.failures)}); replay: python bench/game_day.py --seed {seed} --seconds {seconds:g}"
        )
    return account


def account_isolation(
    account: Account,
    tenants: list[Tenant],
    landed: list[tuple[Fault, float, str]],
    lateness: dict[str, list[float]],
    started: float,
) -> None:
    """Lateness per tenant, and: while one tenant's agent was down, the others stayed within their
    no-fault figures (slots while the scheduler itself was away are left out: that delays everyone)."""
    account.say("lateness per tenant (first receipt - slot):")
    for name, values in lateness.items():
        account.say(
            f"    {name}: p50 {pct(values, 50):.3f} s, p99 {pct(values, 99):.3f} s, max {max(values, default=0):.3f} s"
        )
    calm: list[float] = []
    platform_faults = scheduler_away(landed)
    receipts: dict[tuple[int, str], tuple[int, float]] = {}  # the first receipt of each slot
    for tenant in tenants:
        for schedule_id, slot, at in cron_receipts(tenant):
            receipts.setdefault((tenant.index, f"cron-{schedule_id}-{slot}"), (slot, at))
    for slot, at in receipts.values():
        if slot < started + CALM_S:
            calm.append(at - slot)
    limit = max(1.0, 3 * pct(calm, 99))
    checked = 0
    for fault, at, _ in landed:
        if fault.kind != "agent-outage":
            continue
        down = int(fault.target[1:])
        end = at + (fault.seconds or 0.0)
        for (index, message_id), (slot, received) in receipts.items():
            if index == down or not at <= slot <= end or in_windows(slot, platform_faults):
                continue
            checked += 1
            if received - slot > limit:
                account.fail(f"t{index} slot {message_id} {received - slot:.2f} s late while t{down}'s agent was down")
    account.say(
        f"isolation: {checked} slots of other tenants during agents' outages, each within {limit:.2f} s "
        f"(3x the no-fault p99 of {pct(calm, 99):.3f} s, at least 1 s)"
    )


@contextlib.contextmanager
def game_platform(redis_server: EmbeddedRedis, data_dir: Path, apis: ChatApis) -> Iterator[Platform]:
    platform = start_platform(
        redis_server.url,
        data_dir,
        subsystems=SUBSYSTEMS,
        telegram_api_base=apis.telegram_base,
        slack_api_base=apis.slack_base,
        **SETTINGS,
    )
    try:
        yield platform
    finally:
        platform.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--minutes", type=float, default=3.0)
    args = parser.parse_args()
    seconds = args.seconds or args.minutes * 60
    apis = ChatApis()
    try:
        with harness.local_ray(), harness.redis_server() as server:
            import tempfile

            with (
                tempfile.TemporaryDirectory(prefix="game-day") as data,
                game_platform(server, Path(data), apis) as platform,
            ):
                account = run(platform, server, apis, args.seed, seconds)
    finally:
        apis.stop()
    print("\n".join(account.lines))
    for failure in account.failures:
        print(f"  FAIL {failure}")
    sys.exit(1 if account.failures else 0)


if __name__ == "__main__":
    main()
