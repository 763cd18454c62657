"""Registry of expected subsystems: ingests heartbeat batches and decides each one's state."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from actors.runtime.supervised import LoopState
from store.records import rfc3339

RESTART_REASONS = ("exception", "process", "stalled")


@dataclass(frozen=True)
class Expectation:
    """A subsystem the platform expects to run, and how long its silence is tolerated.

    `stale_after_s` defaults to 2 x interval + 1 s, `kill_after_s` to 2 x stale_after_s.
    `actor` (in `namespace`) is what the watchdog restarts; None means nothing to kill.
    """

    name: str
    interval_s: float
    stale_after_s: float = 0.0
    kill_after_s: float = 0.0
    actor: str | None = None
    namespace: str | None = None
    registered_at: float = 0.0

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if not self.interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {self.interval_s}")
        if not self.stale_after_s:
            object.__setattr__(self, "stale_after_s", 2 * self.interval_s + 1)
        if not self.kill_after_s:
            object.__setattr__(self, "kill_after_s", 2 * self.stale_after_s)
        if not self.stale_after_s > self.interval_s:
            raise ValueError(f"stale_after_s must be > interval_s, got {self.stale_after_s}")
        if not self.kill_after_s >= self.stale_after_s:
            raise ValueError(f"kill_after_s must be >= stale_after_s, got {self.kill_after_s}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Expectation:
        return cls(**json.loads(raw))


@dataclass
class Record:
    """What the registry knows of one subsystem; persisted so a registry restart loses nothing."""

    loop_state: str | None = None
    changed_at: float | None = None
    last_tick_at: float | None = None
    progress: Any = None
    restarts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESTART_REASONS, 0))
    last_error: str | None = None
    last_error_at: float | None = None
    next_retry_at: float | None = None
    pid: int | None = None
    node: str | None = None
    quarantined: int = 0
    incarnation_exceptions: int = 0
    expect_new_pid: bool = False
    killed_at: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Record:
        data = json.loads(raw)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class Verdict:
    state: LoopState
    healthy: bool
    due_at: float


class Registry:
    """Expected subsystems and their records. Only this class decides a subsystem's state.

    `booted_at` is when this registry started watching: silence from before then is not held
    against anyone, so a restarted registry raises no false alarm.
    """

    def __init__(self, booted_at: float) -> None:
        self.booted_at = booted_at
        self.expected: dict[str, Expectation] = {}
        self.records: dict[str, Record] = {}
        self.dirty: set[str] = set()

    def register(self, expectation: Expectation) -> None:
        """Expect a subsystem. A name expected anew starts with no record: one that a late beat
        of the actor it was forgotten with left behind must not stand for the new one."""
        if expectation.name not in self.expected:
            self.records.pop(expectation.name, None)
        self.expected[expectation.name] = expectation
        self.dirty.add(expectation.name)

    def unregister(self, name: str) -> None:
        self.expected.pop(name, None)
        self.records.pop(name, None)
        self.dirty.add(name)

    def ingest(self, batch: dict[str, Any], now: float) -> None:
        """Apply one heartbeat batch received at `now` (see Heartbeats for its shape).

        The sender's absolute times are shifted by the difference between its clock at
        sending (`sent_at`) and `now`, so another node's clock skew does not age them.
        """
        pid, node = batch.get("pid"), batch.get("node")
        sent_at = batch.get("sent_at")
        skew = now - float(sent_at) if sent_at is not None else 0.0
        for name, report in batch.get("reports", {}).items():
            record = self.records.setdefault(name, Record())
            if record.pid != pid:
                # A new process after a drain (STOPPED) or a watchdog kill is not a crash.
                if record.pid is not None and not record.expect_new_pid and record.loop_state != "STOPPED":
                    record.restarts["process"] += 1
                record.expect_new_pid = False
                record.incarnation_exceptions = 0
                record.pid = pid
                record.changed_at = now
            record.node = node
            exceptions = report.get("exception_restarts")
            if exceptions is not None:
                record.restarts["exception"] += max(0, exceptions - record.incarnation_exceptions)
                record.incarnation_exceptions = exceptions
            state = report.get("state")
            if state is not None and state != record.loop_state:
                record.loop_state = state
                record.changed_at = now
            if "tick_age_s" in report:
                record.last_tick_at = now - float(report["tick_age_s"])
                record.progress = report.get("progress")
            if "last_error" in report:
                record.last_error = report["last_error"]
            for key in ("last_error_at", "next_retry_at"):
                if key in report:
                    value = report[key]
                    setattr(record, key, None if value is None else float(value) + skew)
            if "quarantined" in report:
                record.quarantined = int(report["quarantined"])
            self.dirty.add(name)

    def verdict(self, name: str, now: float) -> Verdict:
        """State and health of `name` at `now`. Crashes are unhealthy at once; silence by age."""
        expectation = self.expected.get(name)
        stale_after_s = expectation.stale_after_s if expectation else 0.0
        registered_at = expectation.registered_at if expectation else now
        record = self.records.get(name)
        if record is None or record.loop_state is None:
            due = max(registered_at, self.booted_at)
            state = LoopState.STALLED if now - due > stale_after_s else LoopState.STARTING
            return Verdict(state, False, due)
        if record.loop_state == LoopState.STOPPED.value:
            return Verdict(LoopState.STOPPED, False, now)
        waiting = record.loop_state in (LoopState.BACKOFF.value, LoopState.FAILED.value)
        if waiting and record.next_retry_at is not None:
            due = record.next_retry_at
        else:
            due = max(record.last_tick_at or 0.0, record.changed_at or 0.0)
        due = max(due, self.booted_at)
        if now - due > stale_after_s:
            return Verdict(LoopState.STALLED, False, due)
        if record.loop_state == LoopState.FAILED.value:
            return Verdict(LoopState.FAILED, False, due)
        if record.loop_state == LoopState.BACKOFF.value:
            return Verdict(LoopState.BACKOFF, False, due)
        if record.loop_state == LoopState.STARTING.value or record.last_tick_at is None:
            # Started (or restarted) but no tick completed yet: not proven healthy.
            return Verdict(LoopState.STARTING, False, due)
        return Verdict(LoopState.RUNNING, True, due)

    def unhealthy(self, now: float) -> list[str]:
        return sorted(name for name in self.expected if not self.verdict(name, now).healthy)

    def last_tick(self, name: str) -> float | None:
        record = self.records.get(name)
        return record.last_tick_at if record else None

    def due_for_kill(self, now: float) -> list[Expectation]:
        """Expected subsystems silent past kill_after_s and not already being restarted.

        After a kill, the next one waits for the new process to report, or for
        3 x kill_after_s if Ray's restart itself never comes back.
        """
        due = []
        for name, expectation in self.expected.items():
            if expectation.actor is None:
                continue
            verdict = self.verdict(name, now)
            if verdict.state is LoopState.STOPPED or now - verdict.due_at <= expectation.kill_after_s:
                continue
            record = self.records.setdefault(name, Record())
            if record.killed_at is not None:
                since_kill = now - record.killed_at
                if since_kill < expectation.kill_after_s:
                    continue
                if record.expect_new_pid and since_kill < 3 * expectation.kill_after_s:
                    continue
            due.append(expectation)
        return due

    def killed(self, name: str, now: float) -> None:
        """Count a watchdog kill as a stalled restart; the next new pid is not a process restart."""
        record = self.records.setdefault(name, Record())
        record.restarts["stalled"] += 1
        record.killed_at = now
        record.expect_new_pid = record.pid is not None
        self.dirty.add(name)

    def kill_failed(self, name: str, now: float) -> None:
        """A kill that found no actor: try again only after kill_after_s."""
        self.records.setdefault(name, Record()).killed_at = now

    def subsystem(self, name: str, now: float) -> dict[str, Any]:
        """One subsystem as /admin/liveness shows it."""
        expectation = self.expected.get(name)
        record = self.records.get(name) or Record()
        verdict = self.verdict(name, now)
        last = record.last_tick_at
        return {
            "state": verdict.state.value,
            "healthy": verdict.healthy,
            "last_tick_at": rfc3339(last),
            "seconds_ago": None if last is None else round(max(0.0, now - last), 3),
            "interval_s": expectation.interval_s if expectation else None,
            "stale_after_s": expectation.stale_after_s if expectation else None,
            "kill_after_s": expectation.kill_after_s if expectation else None,
            "restarts": dict(record.restarts),
            "last_error": record.last_error,
            "last_error_at": rfc3339(record.last_error_at),
            "next_retry_at": rfc3339(record.next_retry_at),
            "pid": record.pid,
            "node": record.node,
            "quarantined": record.quarantined,
            "progress": record.progress,
        }

    def snapshot(self, now: float) -> dict[str, Any]:
        """The /admin/liveness body: every expected subsystem, seen or not."""
        subsystems = {name: self.subsystem(name, now) for name in sorted(self.expected)}
        return {
            "healthy": all(s["healthy"] for s in subsystems.values()),
            "checked_at": rfc3339(now),
            "subsystems": subsystems,
        }
