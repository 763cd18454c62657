"""Subsystem base: a subsystem writes its tick; the base supervises, beats, reports, injects faults."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import redis.exceptions

from actors.runtime.handles import HEALTH_ACTOR, NamedActor, identity
from actors.runtime.heartbeat import Heartbeats, Send
from actors.runtime.isolation import ItemGuard
from actors.runtime.registry import Expectation
from actors.runtime.supervised import Clock, LoopState, RecoverLoop, RestartPolicy, Sleep
from api.backend import FAULTS
from settings import Settings

log = logging.getLogger(__name__)
R = TypeVar("R")

REPORT_TIMEOUT_S = 5.0
# Failures that are no item's fault: they go up to the recover loop instead of quarantining.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.OutOfMemoryError,  # the store is full: back off until there is room, drop nothing
)
# Which state a subsystem reports when its loops disagree: the worst one.
SEVERITY = {"RUNNING": 0, "STARTING": 1, "BACKOFF": 2, "FAILED": 3}
STOP_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class SubsystemSpec:
    """A supervised subsystem's declaration, validated at construction (like an OTP child spec)."""

    name: str
    interval_s: float
    stale_after_s: float = 0.0
    kill_after_s: float = 0.0
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    actor: str | None = None
    group: str | None = None  # the subsystem a replica belongs to (its replica 0's name)

    def __post_init__(self) -> None:
        # Expectation validates the name and the interval/stale/kill thresholds.
        checked = self.expectation(namespace=None)
        object.__setattr__(self, "stale_after_s", checked.stale_after_s)
        object.__setattr__(self, "kill_after_s", checked.kill_after_s)

    @property
    def actor_name(self) -> str:
        """The name of the Ray actor that runs it (what the watchdog restarts)."""
        return self.actor or self.name

    @property
    def group_name(self) -> str:
        """The subsystem it is a replica of (its own name for replica 0 or a subsystem with none)."""
        return self.group or self.name

    def replica(self, index: int) -> SubsystemSpec:
        """Replica `index` of this subsystem: 0 keeps its names, the others are `<name>-<index>`."""
        if index == 0:
            return dataclasses.replace(self, group=self.group_name)
        return dataclasses.replace(
            self, name=f"{self.name}-{index}", actor=f"{self.actor_name}-{index}", group=self.group_name
        )

    def expectation(self, namespace: str | None, registered_at: float = 0.0) -> Expectation:
        return Expectation(
            name=self.name,
            interval_s=self.interval_s,
            stale_after_s=self.stale_after_s,
            kill_after_s=self.kill_after_s,
            actor=self.actor_name,
            namespace=namespace,
            registered_at=registered_at,
        )


class Every:
    """Work due every `interval_s` within a faster tick: `due()` says yes once per interval.

    The first call is due at once; `reset()` makes the next one due at once again.
    """

    def __init__(self, interval_s: float, clock: Clock = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._next = float("-inf")

    def due(self) -> bool:
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self.interval_s
        return True

    def reset(self) -> None:
        self._next = float("-inf")


class Subsystem:
    """Base class of every subsystem actor; `actors.runtime.handles.deploy` runs one in Ray.

    A subclass writes `tick()` and, as it needs, the hooks below; its `__init__` sets
    attributes in any order (no I/O there): the loops are created when the constructor has
    returned, from the actor's event loop, so when Ray restarts the process they come back
    with no outside call. The main loop awaits `open()` once, then `setup()` and `tick()`
    every `interval_s` under a RecoverLoop, and beats after each completed tick. `stop()`
    cancels every loop, then awaits `close()`.
    """

    spec: ClassVar[SubsystemSpec]

    @classmethod
    def spec_for(cls, settings: Settings) -> SubsystemSpec:
        """The spec this subsystem runs with under `settings`; by default the class's `spec`."""
        return cls.spec

    @classmethod
    def replicas(cls, settings: Settings) -> int:
        """How many replicas of it run under `settings` (each its own actor); by default one."""
        return 1

    @classmethod
    def specs_for(cls, settings: Settings) -> list[SubsystemSpec]:
        """The spec of each of its replicas under `settings`."""
        spec = cls.spec_for(settings)
        return [spec.replica(i) for i in range(cls.replicas(settings))]

    def __init__(
        self,
        settings: Settings,
        *,
        spec: SubsystemSpec | None = None,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        send_beats: Send | None = None,
    ) -> None:
        self.spec = spec or self.spec_for(settings)  # type: ignore[misc]
        self.settings = settings
        self.name = self.spec.name
        self.clock = clock
        self.sleep = sleep
        self._health = NamedActor(HEALTH_ACTOR, settings.ray_namespace)
        pid, node = identity()
        self.heartbeats = Heartbeats(send_beats or self._send_beats, pid=pid, node=node, clock=clock, sleep=sleep)
        self.loops: dict[str, RecoverLoop] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._opened = asyncio.Event()
        self._fault: str | None = None
        self._owned: list[Any] = []
        self._ticks_this_run = 0
        # Per-tenant/per-item work inside a tick goes through self.items.run(key, work, version=...).
        self.items = ItemGuard(propagate=TRANSIENT_ERRORS, on_quarantine=self.on_quarantine, clock=clock)
        self.main_loop = self.supervise(self.name, self._work, self.spec.policy, after_open=False)
        self.supervise(f"{self.name}.heartbeats", self.heartbeats.run, after_open=False)
        self.heartbeats.track(self.name, self._report)
        asyncio.get_running_loop().call_soon(self._start_loops)

    # -- for subclasses --------------------------------------------------------------------

    async def open(self) -> None:
        """Acquire what the loops use (HTTP sessions, connections); awaited once, before the first tick.

        If it raises, the main loop backs off and calls it again; helper loops wait for it.
        """

    async def close(self) -> None:
        """Release what `open()` acquired; awaited by `stop()` after every loop has ended (bounded).

        What was registered with `own()` is closed after it, without a hook.
        """

    def own(self, resource: R) -> R:
        """Register a client, session or connection (anything with `aclose()` or `close()`) for `stop()`
        to close, after `close()`, newest first; returns it."""
        self._owned.append(resource)
        return resource

    async def setup(self) -> None:
        """Run at the start of every (re)start of the main loop, before its first tick."""

    async def tick(self) -> bool | None:
        """One unit of the subsystem's work. Raise to have the runtime restart the loop.

        Return True when more work is waiting: the next tick then starts at once.
        """
        raise NotImplementedError

    def pause_s(self) -> float:
        """Seconds between ticks; `interval_s` unless a subsystem aligns its ticks."""
        return self.spec.interval_s

    def progress(self) -> Any:
        """Sent with each beat and shown in /admin/liveness."""
        return None

    def quarantined(self) -> int:
        """How many items this subsystem has quarantined."""
        return self.items.quarantined

    async def on_quarantine(self, key: Hashable, error: str) -> None:
        """Called when `self.items` quarantines `key` (for example to record it with the item)."""

    def supervise(
        self,
        name: str,
        body: Callable[[], Awaitable[None]],
        policy: RestartPolicy | None = None,
        *,
        after_open: bool = True,
    ) -> RecoverLoop:
        """Run `body` under its own RecoverLoop, once `open()` has succeeded (unless not `after_open`).

        Its state counts toward the subsystem's: a helper loop in BACKOFF or FAILED makes
        the whole subsystem report that state.
        """

        async def opened_then_body() -> None:
            await self._opened.wait()
            await body()

        loop = RecoverLoop(name, opened_then_body if after_open else body, policy, clock=self.clock, sleep=self.sleep)
        self.loops[name] = loop
        if self._started:
            self._run_loop(loop)
        return loop

    # -- runtime ---------------------------------------------------------------------------

    def _start_loops(self) -> None:
        self._started = True
        for loop in self.loops.values():
            self._run_loop(loop)

    def _run_loop(self, loop: RecoverLoop) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(loop.run(), name=loop.name))

    def _report(self) -> dict[str, Any]:
        """The subsystem's status for the registry: the main loop's, worsened by any helper's."""
        status = self.main_loop.status()
        if status["state"] == LoopState.RUNNING.value and self._ticks_this_run == 0:
            status["state"] = LoopState.STARTING.value  # no tick completed since (re)start
        for name, loop in self.loops.items():
            if loop is self.main_loop:
                continue
            helper = loop.status()
            if SEVERITY.get(helper["state"], 0) > SEVERITY.get(status["state"], 0):
                status["state"] = helper["state"]
                status["last_error"] = f"{name}: {helper['last_error']}"
                status["last_error_at"] = helper["last_error_at"]
                status["next_retry_at"] = helper["next_retry_at"]
            status["exception_restarts"] += helper["exception_restarts"]
        status["quarantined"] = self.quarantined()
        return status

    async def _send_beats(self, batch: dict[str, Any]) -> Any:
        return await self._health.call("report", batch, timeout_s=REPORT_TIMEOUT_S)

    async def _work(self) -> None:
        self._ticks_this_run = 0
        if not self._opened.is_set():
            await self.open()
            self._opened.set()
        await self.setup()
        while True:
            await self._take_fault()
            more = await self.tick()
            self._ticks_this_run += 1
            self.heartbeats.beat(self.name, self.progress())
            await self.sleep(0 if more else self.pause_s())

    async def _take_fault(self) -> None:
        fault, self._fault = self._fault, None
        if fault == "raise":
            raise RuntimeError("injected fault: raise")
        if fault == "hang":
            log.warning("%s: injected fault: hang", self.name)
            await asyncio.Event().wait()

    # -- remote methods --------------------------------------------------------------------

    async def ping(self) -> dict[str, Any]:
        return {"name": self.name, "pid": os.getpid()}

    async def inject_fault(self, fault: str, seconds: float | None = None) -> bool:
        """Contract fault injection; refuses unless ENABLE_FAULT_INJECTION=1."""
        if not self.settings.enable_fault_injection:
            raise PermissionError("fault injection is disabled (ENABLE_FAULT_INJECTION)")
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {', '.join(FAULTS)}, got {fault!r}")
        log.warning("%s: fault %s injected (seconds=%s)", self.name, fault, seconds)
        loop = asyncio.get_running_loop()
        if fault in ("raise", "hang"):
            self._fault = fault
        elif fault == "block":
            loop.call_soon(_block, seconds)
        else:
            loop.call_soon(os._exit, 1)
        return True

    async def quarantine_items(self) -> list[dict[str, Any]]:
        """The items quarantined here (GET /admin/quarantine): `{"key", "tenant_id", "error", "since",
        "failures"}` each; a subsystem that keeps its quarantine in Redis lists it from there."""
        return [{**item, "tenant_id": self.item_tenant(item["key"])} for item in self.items.quarantined_items()]

    def item_tenant(self, key: str) -> str | None:
        """The tenant an item of `self.items` belongs to, if its key says (by default it does not)."""
        return None

    async def leave_shards(self) -> int:
        """A replica scaled away: take no new work, and let each shard go to the others once its
        work in flight is done (the ticks go on doing that); how many shards it still holds."""
        owner = self.shard_owner
        if owner is None:
            return 0
        owner.start_leaving()
        return len(owner.tokens)

    async def shards_held(self) -> int:
        owner = self.shard_owner
        return 0 if owner is None else len(owner.tokens)

    @property
    def shard_owner(self) -> Any:
        """Its ShardOwner (actors.runtime.shards), for a subsystem that works shards; else None."""
        return getattr(self, "shards", None)

    async def release_item(self, key: str) -> bool:
        """Operator release of a quarantined item (POST /admin/quarantine/release): it is worked
        again from the next tick; returns whether it was quarantined."""
        if not self.items.lift(key):
            return False  # not quarantined: its failures so far still count
        log.warning("%s: item %s released by an operator", self.name, key)
        return True

    async def stop(self) -> None:
        """Cancel every loop and wait for them, `close()`, close what it owns, then report the final
        STOPPED state (each step bounded)."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT_S)
        if self._opened.is_set():
            self._opened.clear()
            try:
                await asyncio.wait_for(self.close(), STOP_TIMEOUT_S)
            except Exception as exc:  # the process is about to go: its sockets go with it
                log.warning("%s: close failed: %s", self.name, exc)
        while self._owned:
            resource = self._owned.pop()
            closing = getattr(resource, "aclose", None) or resource.close
            try:
                await asyncio.wait_for(closing(), STOP_TIMEOUT_S)
            except Exception as exc:  # as above: best effort on the way out
                log.warning("%s: closing %s failed: %s", self.name, type(resource).__name__, exc)
        try:
            await asyncio.wait_for(self.heartbeats.drain(), STOP_TIMEOUT_S)
        except Exception as exc:  # best effort: the registry shows STALLED instead of STOPPED
            log.warning("%s: final report failed: %s", self.name, exc)


def _block(seconds: float | None) -> None:
    """Block the event loop (the `block` fault): a CPU-bound or sync-I/O wedge."""
    if seconds is not None:
        time.sleep(seconds)
        return
    while True:
        time.sleep(3600)
