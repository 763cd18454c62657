"""Subsystem base: a subsystem writes its tick; the base supervises, beats, reports, injects faults."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import redis.exceptions

from actors.runtime.handles import HEALTH_ACTOR, NamedActor, identity
from actors.runtime.heartbeat import Heartbeats
from actors.runtime.isolation import ItemGuard
from actors.runtime.registry import Expectation
from actors.runtime.supervised import LoopState, RecoverLoop, RestartPolicy
from settings import Settings

log = logging.getLogger(__name__)

FAULTS = ("raise", "hang", "block", "exit")
REPORT_TIMEOUT_S = 5.0
# Failures that are no item's fault: they go up to the recover loop instead of quarantining.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
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

    def __post_init__(self) -> None:
        # Expectation validates the name and the interval/stale/kill thresholds.
        checked = self.expectation(namespace=None)
        object.__setattr__(self, "stale_after_s", checked.stale_after_s)
        object.__setattr__(self, "kill_after_s", checked.kill_after_s)

    def expectation(self, namespace: str | None, registered_at: float = 0.0) -> Expectation:
        return Expectation(
            name=self.name,
            interval_s=self.interval_s,
            stale_after_s=self.stale_after_s,
            kill_after_s=self.kill_after_s,
            actor=self.actor or self.name,
            namespace=namespace,
            registered_at=registered_at,
        )


class Subsystem:
    """Base class of every subsystem actor.

    Its loops start from `__init__`, so when Ray restarts the actor process they come back
    with no outside call. The main loop runs `tick()` every `interval_s` under a RecoverLoop
    and beats after each completed tick; subclasses may add loops with `supervise()`.
    """

    spec: ClassVar[SubsystemSpec]

    def __init__(self, settings: Settings, spec: SubsystemSpec | None = None) -> None:
        if spec is not None:
            self.spec = spec  # type: ignore[misc]
        self.settings = settings
        self.name = self.spec.name
        self._health = NamedActor(HEALTH_ACTOR, settings.ray_namespace)
        pid, node = identity()
        self.heartbeats = Heartbeats(self._send_beats, pid=pid, node=node)
        self.loops: dict[str, RecoverLoop] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._fault: str | None = None
        self._ticks_this_run = 0
        # Per-tenant/per-item work inside a tick goes through self.items.run(key, work, version=...).
        self.items = ItemGuard(propagate=TRANSIENT_ERRORS)
        self.main_loop = self.supervise(self.name, self._work, self.spec.policy)
        self.supervise(f"{self.name}.heartbeats", self.heartbeats.run)
        self.heartbeats.watch(self.name, self._report)

    # -- for subclasses --------------------------------------------------------------------

    async def setup(self) -> None:
        """Run at the start of every (re)start of the main loop, before the first tick."""

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

    def supervise(
        self,
        name: str,
        body: Callable[[], Awaitable[None]],
        policy: RestartPolicy | None = None,
    ) -> RecoverLoop:
        """Run `body` under its own RecoverLoop, started now.

        Its state counts toward the subsystem's: a helper loop in BACKOFF or FAILED makes
        the whole subsystem report that state.
        """
        loop = RecoverLoop(name, body, policy)
        self.loops[name] = loop
        self._tasks.append(asyncio.get_running_loop().create_task(loop.run(), name=name))
        return loop

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

    # -- runtime ---------------------------------------------------------------------------

    async def _send_beats(self, batch: dict[str, Any]) -> Any:
        return await self._health.call("report", batch, timeout_s=REPORT_TIMEOUT_S)

    async def _work(self) -> None:
        self._ticks_this_run = 0
        await self.setup()
        while True:
            await self._take_fault()
            more = await self.tick()
            self._ticks_this_run += 1
            self.heartbeats.beat(self.name, self.progress())
            await asyncio.sleep(0 if more else self.pause_s())

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

    async def status(self) -> dict[str, Any]:
        """Every loop's state in this process."""
        return {
            "name": self.name,
            "pid": os.getpid(),
            "loops": {name: loop.status() for name, loop in self.loops.items()},
            "progress": self.progress(),
        }

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

    async def release_item(self, key: str) -> bool:
        """Operator release of a quarantined item; returns whether it was quarantined."""
        released = self.items.release(key)
        if released:
            log.warning("%s: item %s released by an operator", self.name, key)
        return released

    async def stop(self) -> None:
        """Cancel every loop, wait for them (bounded), and report the final STOPPED state."""
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT_S)
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
