"""Channel manager: a supervised poller per enabled Telegram channel, and the relay of every channel's inbox.

Each tick reconciles the running channels with the stored ones (added, removed, changed,
disabled, re-enabled) and beats. A Telegram channel's poller is its own RecoverLoop, outside
the subsystem's loops: its failures back off that channel alone and show in the channel's
`status`, never in the manager's health. Pollers and the Slack webhook only append to the
channel's inbox (store.channels); relaying runs apart, in ChatQueues: in order per chat,
at most RELAY_SLOTS at once and at most the tenant's `relays_in_flight` (TENANT_RELAYS_IN_FLIGHT)
over all its channels, each call to a workspace with a deadline.

With CHANNEL_MANAGER_REPLICAS, each replica runs the channels of the shards it holds
(ShardOwner). Recording a polled batch and marking a message answered are fenced by the
shard's lease, so a replica that lost a shard writes nothing for it. A shard another
replica should have is handed over: its pollers stop (a bot is never polled by two
replicas at once, which Telegram would answer with 409), the messages being answered are
let finish, and only then is the lease let go.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from actors.a2a_client import Outcome, reply_texts, send
from actors.channels import slack, telegram
from actors.channels.chat import ChatApiError
from actors.channels.relay import ChatQueues
from actors.egress import egress_for
from actors.runtime import metrics
from actors.runtime.shards import ShardOwner
from actors.runtime.subsystem import Subsystem, SubsystemSpec
from actors.runtime.supervised import LoopState, RecoverLoop
from settings import Settings
from store import channels, events, quotas, workspaces
from store.channels import Channel, FencedOut, Inbound
from store.client import connect
from store.keys import shard_of
from store.secrets import SecretBox
from store.shards import Fence

log = logging.getLogger(__name__)

CHANNEL_SPEC = SubsystemSpec("channel-manager", interval_s=2.0)
RELAY_SLOTS = 256  # workspace and chat API calls in flight at once, over every channel
CHANNEL_SLOTS = 16  # ... and per channel: a workspace that hangs in many chats holds at most these
POST_ATTEMPTS = 5
POST_TIMEOUT_S = 10.0
RETRY_AFTER_CAP_S = 300.0
LOAD_PAGE = 500
FENCED_RETRY_S = 1.0
CLOSE_GRACE_S = 0.5  # inside the runtime's 1 s for close()
NO_ANSWER = "Sorry, the agent could not answer this message."
# The fields whose change means the channel must be parsed (and perhaps restarted) again.
IDENTITY = (b"tenant_id", b"workspace_id", b"type", b"config", b"allowed_chats", b"enabled", b"revision")

Item = tuple[str, Inbound]  # (inbox entry id, message)


@dataclass(eq=False)
class Run:
    """One enabled channel in this process: its queues, and for Telegram its poller."""

    channel: Channel
    queues: ChatQueues[Item]
    slots: asyncio.Semaphore
    poller: RecoverLoop | None = None
    task: asyncio.Task[None] | None = None
    loaded_upto: str = "0-0"
    polling: bool = False
    polls: int = 0
    rate_limited: int = 0
    reported: tuple[str, str] | None = None
    stopped: bool = False

    @property
    def shard(self) -> int:
        return shard_of(self.channel.id)

    def status(self) -> tuple[str, str] | None:
        """(status, last_error) as the channel should read; None while it has not started."""
        if self.poller is None:
            return "running", ""
        loop = self.poller.status()
        # FAILED (many restarts lately) stays set while a new run goes well: polling says which.
        if loop["state"] == LoopState.BACKOFF.value or (loop["state"] == LoopState.FAILED.value and not self.polling):
            return "backoff", loop["last_error"] or ""
        return ("running", "") if self.polling else None


class ChannelManager(Subsystem):
    spec = CHANNEL_SPEC

    @classmethod
    def replicas(cls, settings: Settings) -> int:
        return settings.channel_manager_replicas

    def __init__(self, settings: Settings, **runtime: Any) -> None:
        super().__init__(settings, **runtime)
        self.redis = self.own(connect(settings.redis_url, timeout_s=5.0))
        self.box = SecretBox(settings.channel_secret_key or "")
        self.runs: dict[str, Run] = {}
        self._parsed: dict[str, tuple[bytes, Channel]] = {}
        self._slots = asyncio.Semaphore(RELAY_SLOTS)
        # Each tenant's calls in flight, over all its channels, inside the global slots: a
        # tenant whose workspace hangs holds at most its `relays_in_flight` of them.
        self._tenant_slots: dict[str, tuple[int, asyncio.Semaphore]] = {}
        self._session: aiohttp.ClientSession | None = None
        self.egress = self.own(egress_for(settings, limit=RELAY_SLOTS))
        self._closed = False
        self._retiring: set[asyncio.Task[None]] = set()
        self._quarantined: dict[str, str] = {}  # channel id -> the revision quarantined here
        self.watched = 0
        self.relayed = 0
        self.relay_errors = 0
        self.quarantines = 0
        self.malformed = 0
        self.in_flight = 0
        self._quarantined_count = 0
        self.shards = ShardOwner(
            self.redis, settings.ray_namespace, self.spec.group_name, self.name, lease_s=settings.shard_lease_s
        )
        self._handovers: dict[str, asyncio.Task[None]] = {}  # channel id -> its run being handed over
        self.supervise(f"{self.name}.wake", self._listen)

    async def open(self) -> None:
        # One long poll per Telegram channel is open at all times: no connection cap.
        self._session = self.own(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
        await self.egress.open()  # the workspaces' URLs are the tenants': through the egress

    async def close(self) -> None:
        """Every channel stops before its session closes: its poller at once, the messages being
        answered given CLOSE_GRACE_S to finish (the rest stay in the inbox); then the shards are
        let go, so the other replicas take them at once."""
        for run in list(self.runs.values()):
            self._hand_over(run)
        if self._handovers:
            _, late = await asyncio.wait(list(self._handovers.values()), timeout=CLOSE_GRACE_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        self._closed = True
        await asyncio.gather(*self._retiring, return_exceptions=True)
        await self.shards.leave()

    def progress(self) -> dict[str, Any]:
        return {
            "watched": self.watched,
            "running": len(self.runs),
            "relayed": self.relayed,
            "relay_errors": self.relay_errors,
            "backlog": sum(r.queues.backlog for r in self.runs.values()),
            "in_flight": self.in_flight,
            "quarantines": self.quarantines,
            "malformed": self.malformed,
            "rate_limited": sum(r.rate_limited for r in self.runs.values()),
            "shards": len(self.shards.held()),
            # Each Telegram channel's poller loop, by channel id.
            "pollers": {cid: r.poller.status()["state"] for cid, r in self.runs.items() if r.poller is not None},
        }

    def quarantined(self) -> int:
        """Channels quarantined (revoked credentials, unreadable records), as of the last reconcile."""
        return self._quarantined_count

    @property
    def session(self) -> aiohttp.ClientSession:
        """The HTTP session of every poller and relay (opened before any loop runs)."""
        if self._closed or self._session is None:
            raise RuntimeError("the channel manager is stopping")
        return self._session

    # -- reconcile -------------------------------------------------------------------------

    async def tick(self) -> None:
        await self.shards.refresh(busy=self._busy)
        owned = self.shards.owned()
        ids = await channels.ids(self.redis, owned)
        raws = await channels.read(self.redis, ids)  # a key of the wrong type is that channel's problem
        wanted = set()
        quarantined = 0
        for channel_id, raw in zip(ids, raws, strict=True):
            # Only reading the record is the channel's own failure (quarantined after 3); a
            # Redis error below is nobody's channel's and goes up to the recover loop.
            version = _version(raw)
            outcome = await self.items.run(
                channel_id, lambda c=channel_id, r=raw, v=version: self._parse(c, r, v), version=version
            )
            if outcome.ok and await self._reconcile(outcome.value, raw):
                wanted.add(channel_id)
            elif outcome.skipped or outcome.quarantined_now or _quarantined(raw):
                quarantined += 1
        for channel_id in set(self.runs) - wanted:
            run = self.runs[channel_id]
            if run.shard in owned:
                await self._retire(run)
            else:
                self._hand_over(run)
        self._parsed = {c: p for c, p in self._parsed.items() if c in wanted}
        self._quarantined = {c: r for c, r in self._quarantined.items() if c in self._parsed}
        self.watched, self._quarantined_count = len(ids), quarantined
        await self._size_tenant_slots()
        await self._load_all()

    def _busy(self, shard: int) -> bool:
        """Whether a channel of the shard still runs here, or is being handed over: its lease is
        kept until none does (the next holder must find its pollers stopped, its answers recorded)."""
        return any(run.shard == shard for run in self.runs.values()) or any(
            shard_of(channel_id) == shard for channel_id in self._handovers
        )

    async def _size_tenant_slots(self) -> None:
        """Each running channel's tenant's relay slots, sized by its `relays_in_flight` as set now.

        A changed quota gets a new semaphore: calls holding the old one finish on it.
        """
        tenant_ids = sorted({run.channel.tenant_id for run in self.runs.values()})
        found = await quotas.shares(self.redis, self.settings.quotas(), tenant_ids)
        sized = {}
        for tenant_id, share in found.items():
            limit = int(share["relays_in_flight"])
            current = self._tenant_slots.get(tenant_id)
            sized[tenant_id] = current if current and current[0] == limit else (limit, asyncio.Semaphore(limit))
        self._tenant_slots = sized

    def _tenant_slot(self, tenant_id: str) -> asyncio.Semaphore:
        if tenant_id not in self._tenant_slots:  # a run started since the last tick: the default until then
            limit = int(self.settings.tenant_relays_in_flight)
            self._tenant_slots[tenant_id] = (limit, asyncio.Semaphore(limit))
        return self._tenant_slots[tenant_id][1]

    async def _parse(self, channel_id: str, raw: Any, version: bytes) -> Channel:
        """The channel as stored (parsed again only when it changed); raises if the record is corrupt."""
        cached = self._parsed.get(channel_id)
        channel = cached[1] if cached and cached[0] == version else Channel.parse(channel_id, raw, self.box)
        self._parsed[channel_id] = (version, channel)
        return channel

    async def _reconcile(self, channel: Channel, raw: dict[bytes, bytes]) -> bool:
        """Start, update or keep the channel's run; False if it should not run."""
        if not channel.enabled or _quarantined(raw) or self._quarantined.get(channel.id) == channel.revision:
            return False
        run = self.runs.get(channel.id)
        if (run is not None and run.stopped) or channel.id in self._handovers:
            return False  # being retired, or handed over: it starts again once that is done
        if run is not None and run.channel.secrets != channel.secrets:
            await self._retire(run)  # a new token: a new poller, and the inbox read again
            run = None
        if run is None:
            bot = channels.bot_of(channel.type, channel.secrets)
            if bot and not await channels.bind_bot(self.redis, bot, channel.id):
                return False  # another channel polls this bot (Telegram would answer both 409)
            run = self._start(channel)
        elif run.channel.revision != channel.revision:
            run.channel, run.reported = channel, None  # allowed chats or workspace: taken as they are
        await self._write_status(run)
        return True

    def _start(self, channel: Channel) -> Run:
        queues: ChatQueues[Item] = ChatQueues(lambda item: self._relay(run, item), room=channels.INBOX_MAX)
        run = Run(channel, queues, asyncio.Semaphore(CHANNEL_SLOTS))
        if channel.type == "telegram":
            run.poller = RecoverLoop(f"{self.name}.{channel.id}", lambda: self._poll(run))
            run.task = asyncio.get_running_loop().create_task(run.poller.run(), name=run.poller.name)
        self.runs[channel.id] = run
        log.info("channel %s (%s) started", channel.id, channel.type)
        return run

    async def _retire(self, run: Run) -> None:
        """Stop the run's poller and queues; its unanswered messages stay in the inbox."""
        run.stopped = True
        if self.runs.get(run.channel.id) is run:
            del self.runs[run.channel.id]
        if run.task is not None and run.task is not asyncio.current_task():
            run.task.cancel()
            await asyncio.gather(run.task, return_exceptions=True)
        await run.queues.close()
        log.info("channel %s stopped", run.channel.id)

    def _hand_over(self, run: Run) -> None:
        """Stop a run whose shard is no longer this replica's: the poller at once, the messages
        being answered once they are; the shard's lease is let go after (busy until then)."""
        run.stopped = True
        del self.runs[run.channel.id]
        if run.task is not None:
            run.task.cancel()

        async def finish() -> None:
            if run.task is not None:
                await asyncio.gather(run.task, return_exceptions=True)
            try:
                # Bounded: the next holder waits for it, and the shard's other channels with it.
                await asyncio.wait_for(run.queues.close(finish_current=True), self.settings.shard_lease_s)
            except TimeoutError:
                log.warning("channel %s: answers still in flight cancelled at its handover", run.channel.id)
            log.info("channel %s handed over", run.channel.id)

        channel_id = run.channel.id
        task = asyncio.get_running_loop().create_task(finish(), name=f"hand over {channel_id}")
        self._handovers[channel_id] = task
        task.add_done_callback(lambda _: self._handovers.pop(channel_id, None))

    async def _write_status(self, run: Run) -> None:
        status = run.status()
        if status is None or status == run.reported:
            return
        if await channels.set_status(self.redis, run.channel.id, run.channel.revision, *status):
            run.reported = status

    async def _quarantine(self, run: Run, error: str) -> None:
        """The platform refused the channel's credentials: stop it, say so once, until a PATCH."""
        if run.stopped:
            return  # the poller and a reply can both meet the revoked token
        channel = run.channel
        log.error("channel %s quarantined: %s", channel.id, error)
        run.stopped = True
        self._quarantined[channel.id] = channel.revision
        await channels.quarantine(self.redis, channel, error, max_len=self.settings.events_max_per_tenant)
        self.quarantines += 1
        task = asyncio.get_running_loop().create_task(self._retire(run))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def on_quarantine(self, channel_id: Any, error: str) -> None:
        """ItemGuard's quarantine of a record that cannot be run (corrupt config, bad ids)."""
        channel_id = str(channel_id)
        run = self.runs.get(channel_id)
        if run is not None:
            await self._retire(run)
        if await channels.quarantine_record(self.redis, channel_id, error, max_len=self.settings.events_max_per_tenant):
            self.quarantines += 1

    async def quarantine_items(self) -> list[dict[str, Any]]:
        """Quarantined channels, from Redis; and records quarantined here that Redis could not mark."""
        found = {item["key"]: item for item in await super().quarantine_items()}
        for channel_id in self._quarantined:  # stopped here, though Redis could not be told
            found[channel_id] = {
                "key": channel_id,
                "tenant_id": None,
                "error": "quarantined by this channel manager; not recorded in Redis",
                "since": None,
                "failures": None,
            }
        found.update((item["key"], item) for item in await channels.quarantined(self.redis))
        return [found[key] for key in sorted(found)]

    async def release_item(self, key: str) -> bool:
        """Try a quarantined channel again, as a PATCH that changes nothing would (BotTaken if its bot
        is another channel's now)."""
        released = await channels.release(self.redis, self.box, key, time.time())
        guarded = self.items.lift(key)
        stopped = self._quarantined.pop(key, None) is not None
        if released or guarded or stopped:
            log.warning("channel-manager: channel %s released by an operator; it runs from the next reconcile", key)
        return released or guarded or stopped

    # -- inbound ---------------------------------------------------------------------------

    async def _poll(self, run: Run) -> None:
        """Long-poll one bot; each batch goes to the inbox with the new offset, atomically."""
        try:
            await self._poll_updates(run)
        finally:
            run.polling = False  # until the next run's getMe succeeds

    async def _poll_updates(self, run: Run) -> None:
        token = run.channel.secrets["bot_token"]
        self._fence(run)  # a replica polls only the bots of shards it holds
        offset = await channels.offset(self.redis, run.channel.id)
        base, poll_s = self.settings.telegram_api_base, self.settings.telegram_poll_timeout_s
        first = True
        while True:
            await run.queues.room()
            try:
                if first:  # the token is checked at once, not after a whole idle long poll
                    await telegram.get_me(self.session, base, token, POST_TIMEOUT_S)
                    run.polling, first = True, False
                updates = await telegram.get_updates(self.session, base, token, offset, poll_s)
            except ChatApiError as exc:
                if exc.revoked:
                    await self._quarantine(run, f"Telegram refused the bot token ({exc})")
                    return
                if exc.retry_after is None:
                    raise
                run.rate_limited += 1
                log.warning("channel %s rate limited; waiting %.0f s as told", run.channel.id, exc.retry_after)
                await asyncio.sleep(min(exc.retry_after, RETRY_AFTER_CAP_S))
                continue
            run.polling = True
            run.polls += 1
            if not updates:
                continue
            next_offset = max(offset, max(u["update_id"] for u in updates) + 1)
            messages = [m for u in updates if u["update_id"] >= offset and (m := telegram.message_of(u)) is not None]
            await channels.accept_batch(
                self.redis,
                run.channel,
                messages,
                offset=offset,
                next_offset=next_offset,
                max_len=self.settings.events_max_per_tenant,
                now=time.time(),
                fence=self._fence(run),
            )
            offset = next_offset
            await self._load(run)

    async def _listen(self) -> None:
        """Wake-ups from the Slack webhook: read that channel's inbox now (the tick would, within 2 s)."""
        async for channel_id in channels.woken(self.redis):
            run = self.runs.get(channel_id)
            if run is not None:
                await self._load(run)

    async def _load_all(self) -> None:
        """Queue what each channel's inbox holds beyond what was loaded (one round trip)."""
        runs = list(self.runs.values())
        pages = await channels.inbox_after(self.redis, {r.channel.id: r.loaded_upto for r in runs}, LOAD_PAGE)
        for run in runs:
            entries = pages[run.channel.id]
            await self._queue(run, entries)
            if len(entries) == LOAD_PAGE:
                await self._load(run)

    async def _load(self, run: Run) -> None:
        while not run.stopped:
            entries = (await channels.inbox_after(self.redis, {run.channel.id: run.loaded_upto}, LOAD_PAGE))[
                run.channel.id
            ]
            await self._queue(run, entries)
            if len(entries) < LOAD_PAGE:
                return

    async def _queue(self, run: Run, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        for raw_id, fields in entries:
            entry_id = raw_id.decode()
            if run.stopped or events.parse_id(entry_id) <= events.parse_id(run.loaded_upto):
                continue  # loaded meanwhile by another path
            run.loaded_upto = entry_id
            try:
                inbound = Inbound.from_fields(fields)
            except (ValueError, UnicodeDecodeError) as exc:
                log.warning("channel %s: inbox entry %s dropped: %s", run.channel.id, entry_id, exc)
                self.malformed += 1
                await channels.drop_entry(self.redis, run.channel.id, entry_id)
                continue
            run.queues.add(inbound.chat_id, (entry_id, inbound))

    # -- relay -----------------------------------------------------------------------------

    async def _relay(self, run: Run, item: Item) -> None:
        """Ask the workspace, post its answer, then mark the message answered (with its event)."""
        if run.stopped:
            return  # the run is being retired; the message stays in the inbox for the next one
        self._fence(run)  # raises while the shard is not held: retried until it is, or the run is handed over
        entry_id, inbound = item
        channel = run.channel
        work = metrics.work()
        work.channel_messages.inc(tags={"subsystem": self.name, "direction": "in"})
        async with run.slots, self._tenant_slot(channel.tenant_id), self._slots:
            if run.stopped:
                return  # stopped while it waited for a slot: the message stays for the next run
            self.in_flight += 1
            try:
                outcome = await self._ask(channel, inbound)
            finally:
                self.in_flight -= 1
        error = None if outcome.ok else outcome.error
        # The chat sees no internal detail (addresses, errors); the event keeps it.
        text = "\n\n".join(reply_texts(outcome.result)) if outcome.ok else NO_ANSWER
        try:
            if text:
                await self._post(run, inbound, text)
                work.channel_messages.inc(tags={"subsystem": self.name, "direction": "out"})
        except ChatApiError as exc:
            if exc.revoked:
                await self._quarantine(run, f"{channel.type} refused the bot token ({exc})")
                return  # not answered: it stays in the inbox until the channel runs again
            error = f"reply not posted: {exc}"
        payload = {
            "chat_id": inbound.chat_id,
            "in_reply_to": inbound.message_id,
            "text": text,
            "status": "ok" if error is None else "error",
            "error": error,
        }
        while True:
            try:
                await channels.finish(
                    self.redis,
                    channel,
                    entry_id,
                    payload,
                    max_len=self.settings.events_max_per_tenant,
                    fence=self._fence(run),
                )
                break
            except FencedOut as exc:
                if run.stopped:  # handed over: the shard's new owner answers it again
                    log.warning("%s", exc)
                    return
                await asyncio.sleep(FENCED_RETRY_S)  # a late renewal brings the lease back, or a handover stops the run
        self.relayed += 1
        self.relay_errors += error is not None

    def _fence(self, run: Run) -> Fence:
        """The lease of the run's shard; FencedOut if this replica no longer holds it."""
        fence = self.shards.fence(run.shard)
        if fence is None:
            raise FencedOut(f"channel {run.channel.id}: shard {run.shard} is not this replica's now")
        return fence

    async def _ask(self, channel: Channel, inbound: Inbound) -> Outcome:
        (raw,) = await workspaces.read(self.redis, [channel.workspace_id])
        if not raw:
            return Outcome(False, f"workspace {channel.workspace_id} does not exist")
        try:
            if isinstance(raw, Exception):  # not a hash
                raise ValueError(str(raw))
            target = workspaces.target(channel.workspace_id, raw, self.box)
        except ValueError as exc:  # not a hash, or corrupt fields
            return Outcome(False, f"workspace {channel.workspace_id} record is unreadable: {exc}")
        if target.tenant_id != channel.tenant_id:
            return Outcome(False, f"workspace {channel.workspace_id} does not exist")
        message_id = inbound.a2a_message_id(channel)
        timeout_s = self.settings.channel_reply_timeout_s
        return await send(
            self.egress, target.url, target.a2a_version, message_id, inbound.text, timeout_s, target.auth_token
        )

    async def _post(self, run: Run, inbound: Inbound, text: str) -> None:
        """Post the text, each part with retries: as told on 429, 1 s, 2 s, 4 s ... on transient
        failures, waiting outside the relay slots. Raises the last failure; a part already
        posted is not posted again."""
        channel = run.channel
        chat_api = telegram if channel.type == "telegram" else slack
        base = self.settings.telegram_api_base if channel.type == "telegram" else self.settings.slack_api_base
        post = telegram.send_message if channel.type == "telegram" else slack.post_message
        for part in chat_api.split(text):
            for attempt in range(POST_ATTEMPTS):
                try:
                    async with run.slots, self._tenant_slot(channel.tenant_id), self._slots:
                        await post(self.session, base, channel.secrets["bot_token"], inbound, part, POST_TIMEOUT_S)
                    break
                except ChatApiError as exc:
                    retry = exc.retry_after is not None or exc.transient
                    if exc.revoked or not retry or attempt == POST_ATTEMPTS - 1:
                        raise
                    wait_s = exc.retry_after if exc.retry_after is not None else 2.0**attempt
                    log.warning("channel %s: reply failed (%s); retry in %.0f s", channel.id, exc, wait_s)
                    await asyncio.sleep(min(wait_s, RETRY_AFTER_CAP_S))


def _version(raw: Any) -> bytes:
    if not isinstance(raw, dict):
        return f"unreadable: {raw}".encode()
    return hashlib.sha256(b"\0".join(k + b"=" + raw.get(k, b"") for k in IDENTITY)).digest()


def _quarantined(raw: Any) -> bool:
    return isinstance(raw, dict) and raw.get(b"status") == b"quarantined"
