"""Entry point: Ray (local or RAY_ADDRESS), Redis (embedded or REDIS_URL), actors, API.

    python driver.py          run in the foreground; Ctrl-C or SIGTERM drains and stops
    python driver.py down     remove a detached deployment left running
It runs unchanged as `ray job submit --working-dir . -- python driver.py`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
from cryptography.fernet import Fernet

from actors.api import API_SPEC, api_actor
from actors.broadcaster import BROADCASTER_SPEC, broadcaster_actor
from actors.channels.manager import CHANNEL_SPEC, channel_manager_actor
from actors.health_sweep import HEALTH_SWEEP_SPEC, health_sweep_actor
from actors.liveness_monitor import LIVENESS_SPEC, liveness_monitor_actor
from actors.runtime.handles import API_ACTOR, HEALTH_ACTOR, NamedActor, alive_node
from actors.runtime.health import health_actor
from actors.runtime.subsystem import SubsystemSpec
from actors.scheduler import SCHEDULER_SPEC, scheduler_actor
from settings import Settings
from store.embedded import EmbeddedRedis

log = logging.getLogger("driver")

START_TIMEOUT_S = 60.0
# How long /readyz answers 503 (draining) before anything stops.
DRAIN_GRACE_S = 0.5

# The platform's subsystems, in start order: (spec, factory(settings) -> actor handle).
# The API actor is started last and stopped first; it is registered like the others.
SUBSYSTEMS: list[tuple[SubsystemSpec, Callable[[Settings], Any]]] = [
    (SCHEDULER_SPEC, scheduler_actor),
    (BROADCASTER_SPEC, broadcaster_actor),
    (LIVENESS_SPEC, liveness_monitor_actor),
    (HEALTH_SWEEP_SPEC, health_sweep_actor),
    (CHANNEL_SPEC, channel_manager_actor),
]


def admin_token(settings: Settings) -> tuple[str, Path | None]:
    """ADMIN_TOKEN, or the token stored in DATA_DIR/admin_token (created 0600 if missing)."""
    if settings.admin_token:
        return settings.admin_token, None
    path = settings.data_dir.resolve() / "admin_token"
    token = _stored_secret(path, lambda: secrets.token_urlsafe(32), lambda token: len(token) >= 16, replace=True)
    return token, path


def channel_secret_key(settings: Settings) -> str:
    """CHANNEL_SECRET_KEY, or the key stored in DATA_DIR/channel_secret_key (created 0600 if missing)."""
    if settings.channel_secret_key:
        return settings.channel_secret_key
    path = settings.data_dir.resolve() / "channel_secret_key"
    # A bad key file is never replaced: every stored channel secret would become unreadable.
    return _stored_secret(path, lambda: Fernet.generate_key().decode(), _is_fernet_key, replace=False)


def _is_fernet_key(key: str) -> bool:
    try:
        Fernet(key.encode())
    except ValueError:
        return False
    return True


def _stored_secret(path: Path, make: Callable[[], str], valid: Callable[[str], bool], *, replace: bool) -> str:
    """The secret in `path`; if there is none, a new one from `make`, written with mode 0600.

    An invalid secret in `path` is replaced only if `replace`; otherwise it is a start error.
    """
    if path.exists():
        value = path.read_text().strip()
        if valid(value):
            return value
        if not replace:
            raise RuntimeError(f"{path} does not hold a valid key; restore it, or set the key in the environment")
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    os.chmod(path, 0o600)
    return value


def connect_ray(settings: Settings) -> None:
    """Attach to RAY_ADDRESS, or start a new local Ray (never a stray one found on the machine)."""
    if ray.is_initialized():
        return
    options: dict[str, Any] = {"namespace": settings.ray_namespace, "logging_level": logging.WARNING}
    if settings.ray_address:
        ray.init(address=settings.ray_address, **options)
    else:
        if settings.metrics_export_port:
            options["_metrics_export_port"] = settings.metrics_export_port
        ray.init(address="local", **options)


class Deployment:
    """The platform's actors in one namespace: created or re-attached, drained in reverse."""

    def __init__(self, settings: Settings, subsystems: Sequence[tuple[SubsystemSpec, Callable[[Settings], Any]]] = ()):
        self.settings = settings
        self.subsystems = list(subsystems)
        self.redis: EmbeddedRedis | None = None
        self.token = ""
        self.token_path: Path | None = None
        self.handles: list[tuple[str, Any]] = []

    @property
    def api_url(self) -> str:
        return self.settings.api_url

    def up(self) -> None:
        """Start Redis if embedded, then health, the subsystems and the API; wait until each answers."""
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if settings.redis_url is None:
            self.redis = EmbeddedRedis(settings.data_dir)
            settings = self.settings = dataclasses.replace(settings, redis_url=self.redis.start())
        self.token, self.token_path = admin_token(settings)
        settings = self.settings = dataclasses.replace(settings, channel_secret_key=channel_secret_key(settings))
        connect_ray(settings)
        if alive_node(settings.api_node) is None:
            raise RuntimeError(f"API_NODE={settings.api_node}: no alive Ray node by that name in the cluster")
        health = health_actor(settings)
        self.handles = [(HEALTH_ACTOR, health)]
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ray.get(health.ping.remote(), timeout=START_TIMEOUT_S)["loaded"]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"health registry could not load from Redis within {START_TIMEOUT_S:g} s")
            time.sleep(0.1)
        specs = [spec for spec, _ in self.subsystems] + [API_SPEC]
        expectations = [dataclasses.asdict(s.expectation(settings.ray_namespace)) for s in specs]
        ray.get(health.register.remote(expectations, True), timeout=START_TIMEOUT_S)
        for spec, factory in self.subsystems:
            self.handles.append((spec.actor or spec.name, factory(settings)))
        self.handles.append((API_ACTOR, api_actor(settings, self.token)))
        ray.get([h.ping.remote() for _, h in self.handles], timeout=START_TIMEOUT_S)

    def drain(self) -> None:
        """Readiness 503, then stop actors within the drain timeout, then Redis.

        The API keeps answering (503, draining) while the subsystems stop in reverse start
        order; it stops after them, and the HealthActor last, after persisting its state.
        """
        deadline = time.monotonic() + self.settings.drain_timeout_s
        namespace = self.settings.ray_namespace
        if not ray.is_initialized():  # failed before connecting: only Redis may be ours
            if self.redis is not None:
                self.redis.stop()
            return

        def remaining() -> float:
            return max(0.1, deadline - time.monotonic())

        api = NamedActor(API_ACTOR, namespace)
        try:
            api.call_sync("set_draining", True, timeout_s=remaining())
            time.sleep(min(DRAIN_GRACE_S, remaining() / 4))  # let readiness probes see the 503
        except Exception as exc:  # draining goes on without the API: stopping is what matters
            log.warning("could not mark the API draining: %s", exc)
        names = [spec.actor or spec.name for spec, _ in reversed(self.subsystems)] + [API_ACTOR]
        for name in names:
            actor = NamedActor(name, namespace)
            try:
                actor.call_sync("stop", timeout_s=min(1.0, remaining()))
            except Exception as exc:  # a stuck actor is killed below all the same
                log.warning("%s did not stop cleanly: %s", name, exc)
            actor.kill(restart=False)
        health = NamedActor(HEALTH_ACTOR, namespace)
        try:
            health.call_sync("flush", timeout_s=min(1.0, remaining()))
        except Exception as exc:  # its state is at most one persist interval old
            log.warning("health registry did not flush: %s", exc)
        health.kill(restart=False)
        if self.redis is not None:
            self.redis.stop(timeout_s=remaining())


def down(settings: Settings) -> None:
    """Remove a detached deployment: its actors, and an embedded Redis left running."""
    connect_ray(settings)
    Deployment(settings, SUBSYSTEMS).drain()
    if settings.redis_url is None and EmbeddedRedis(settings.data_dir).stop_recorded():
        print("stopped the embedded redis-server")
    print(f"removed the deployment in namespace {settings.ray_namespace!r}")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if argv[1:] == ["down"]:
        down(settings)
        return 0
    if argv[1:]:
        print(f"usage: {argv[0]} [down]", file=sys.stderr)
        return 2
    deployment = Deployment(settings, SUBSYSTEMS)
    try:
        deployment.up()
    except BaseException:  # includes Ctrl-C during start: leave nothing half-deployed
        deployment.drain()
        raise
    # Installed after ray.init(), which sets its own SIGTERM handler.
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        say(f"API: {deployment.api_url}")
        say(f"admin token: {deployment.token_path or 'from ADMIN_TOKEN'}")
        say(f"Ray namespace: {deployment.settings.ray_namespace}; Ctrl-C or SIGTERM drains and stops")
        stop.wait()
        say("draining")
    finally:
        deployment.drain()
    say("stopped")
    return 0


def say(line: str) -> None:
    """Print for the operator; a closed stdout (a `| tee` stopped by the same Ctrl-C) must not stop the drain."""
    try:
        print(line, flush=True)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv))
