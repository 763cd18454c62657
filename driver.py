"""Entry point: Ray (local or RAY_ADDRESS), Redis (embedded or REDIS_URL), actors, API.

    python driver.py          run in the foreground; Ctrl-C or SIGTERM drains and stops
    python driver.py down     remove a detached deployment left running
    python driver.py status   print a running deployment's liveness; exit 0 ready, 1 not
It runs unchanged as `ray job submit --working-dir . -- python driver.py`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from redis.exceptions import RedisClusterException

from actors.api import ApiActor
from actors.broadcaster import Broadcaster
from actors.channels.manager import ChannelManager
from actors.health_sweep import HealthSweep
from actors.liveness_monitor import LivenessMonitor
from actors.runtime.handles import (
    ACTOR_UNAVAILABLE,
    HEALTH_ACTOR,
    NamedActor,
    alive_node,
    alive_nodes,
    attach_ray,
    cluster_cpus,
    connect_ray,
    deploy,
    named_actors,
    ray_connected,
)
from actors.runtime.health import HealthActor
from actors.runtime.subsystem import Subsystem, SubsystemSpec
from actors.scheduler import Scheduler
from settings import NODE_HOST, Settings, is_fernet_key
from store import layout
from store.client import connect
from store.embedded import EmbeddedRedis

log = logging.getLogger("driver")

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0  # a replica scaled away: its fires in flight end (or are delivered again by another)
# How long /readyz answers 503 (draining) before anything stops.
DRAIN_GRACE_S = 0.5
# How often the driver looks for nodes that joined or left (API_PER_NODE).
NODE_FOLLOW_S = 5.0

# The platform's subsystems, in start order. The API actor is started after them and
# stopped before them; it is registered like the others.
SUBSYSTEMS: list[type[Subsystem]] = [Scheduler, Broadcaster, LivenessMonitor, HealthSweep, ChannelManager]


def replicated(cls: type[Subsystem], spec: SubsystemSpec, settings: Settings) -> bool:
    """Whether `spec` is one of several replicas of `cls`: spread over the nodes, asking REPLICA_CPUS."""
    return spec.group_name != spec.name or cls.replicas(settings) > 1


class StartRefused(RuntimeError):
    """The driver will not start as configured, and has touched nothing (a running deployment goes on)."""


async def prepare_store(url: str, *, running: bool = False) -> int:
    """Check that REDIS_URL reaches the kind of Redis it names, and bring its key layout up to date
    (store.layout) before any actor uses it; how many keys moved. StartRefused if it cannot."""
    try:
        redis = connect(url)
    except ValueError as exc:
        raise StartRefused(f"REDIS_URL: {exc}") from None
    try:
        return await layout.prepare(redis, running=running)
    except RedisClusterException as exc:
        raise StartRefused(f"REDIS_URL names a Redis Cluster but reaches no cluster node: {exc}") from None
    except (layout.WrongServer, layout.MoveWhileRunning) as exc:
        raise StartRefused(str(exc)) from None
    finally:
        await redis.aclose()


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
    return _stored_secret(path, lambda: Fernet.generate_key().decode(), is_fernet_key, replace=False)


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


class Deployment:
    """The platform's actors in one namespace: created or re-attached, drained in reverse."""

    def __init__(self, settings: Settings, subsystems: Sequence[type[Subsystem]] = ()) -> None:
        self.settings = settings
        # With an API on every node, each reads its own clients' streams: no broadcaster.
        self.subsystems = [cls for cls in subsystems if not (settings.api_per_node and cls is Broadcaster)]
        self.redis: EmbeddedRedis | None = None
        self.token = ""
        self.token_path: Path | None = None
        self.actors: list[NamedActor] = []
        self.api_placed: dict[str, str] = {}  # API actor name -> the node this driver started it on

    @property
    def api_url(self) -> str:
        return self.settings.api_url

    def up(self) -> None:
        """Start Redis if embedded, then health, the subsystems and the API; wait until each answers."""
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if settings.redis_url is None:
            self.redis = EmbeddedRedis(settings.data_dir, maxmemory=settings.redis_maxmemory)
            settings = self.settings = dataclasses.replace(settings, redis_url=self.redis.start())
        self.token, self.token_path = admin_token(settings)
        settings = self.settings = dataclasses.replace(settings, channel_secret_key=channel_secret_key(settings))
        connect_ray(settings)
        try:
            self._check_replica_cpus()
        except StartRefused:
            if self.redis is not None:  # started just now: nothing else was
                self.redis.stop()
            raise
        running = NamedActor(HEALTH_ACTOR, settings.ray_namespace).exists()
        # In a thread of its own: `up` may be called from a running event loop (tests, notebooks).
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            moved = pool.submit(asyncio.run, prepare_store(settings.redis_url, running=running)).result()
        if moved:
            say(f"moved {moved} keys of the store into its sharded key layout")
        namespace = settings.ray_namespace
        health = deploy(HealthActor, settings, name=HEALTH_ACTOR, namespace=namespace)
        self.actors = [health]
        deadline = time.monotonic() + START_TIMEOUT_S
        while not health.call_sync("ping", timeout_s=START_TIMEOUT_S)["loaded"]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"health registry could not load from Redis within {START_TIMEOUT_S:g} s")
            time.sleep(0.1)
        api_nodes = self.api_nodes()
        specs = [s for cls in self.subsystems for s in cls.specs_for(settings)] + [s for s, _ in api_nodes]
        expectations = [dataclasses.asdict(s.expectation(namespace)) for s in specs]
        health.call_sync("register", expectations, True, timeout_s=START_TIMEOUT_S)
        self.actors += [self.start(cls, spec=s) for cls in self.subsystems for s in cls.specs_for(settings)]
        for cls in self.subsystems:  # a re-run with fewer replicas stops the ones past the count
            self._retire_replicas(cls.spec_for(settings), len(cls.specs_for(settings)))
        if settings.api_per_node and self._retire(Broadcaster.spec):  # left by a run without API_PER_NODE
            say("stopped the broadcaster: with API_PER_NODE each API reads its own clients' streams")
        if not settings.api_per_node:  # APIs on other nodes, left by a run with API_PER_NODE
            self._retire_replicas(ApiActor.spec, 1)
        self.actors += [self.start(ApiActor, self.token, spec=spec, node=node) for spec, node in api_nodes]
        if settings.api_per_node:  # past the count of nodes: a node left since the last run
            for spec in self._running_replicas(ApiActor.spec):
                if spec.actor_name not in self.api_placed:
                    self._retire(spec)
        for actor in self.actors:
            actor.call_sync("ping", timeout_s=max(0.1, deadline - time.monotonic()))

    def start(
        self,
        cls: type[Subsystem],
        *args: Any,
        spec: SubsystemSpec | None = None,
        node: str | None = None,
        **kwargs: Any,
    ) -> NamedActor:
        """Deploy a subsystem class as its detached, restarted actor (or attach to it); what `up` does for each.

        `spec` replaces the class's own (`spec_for`); `args` and `kwargs` go to its constructor.
        """
        spec = spec or cls.spec_for(self.settings)
        namespace = self.settings.ray_namespace
        spread = node is None and replicated(cls, spec, self.settings)  # a replica placed on a node stays there
        if cls is ApiActor and node is not None:
            self.api_placed[spec.actor_name] = node
        return deploy(
            cls,
            self.settings,
            *args,
            name=spec.actor_name,
            namespace=namespace,
            node=node,
            spread=spread,
            num_cpus=self.settings.replica_cpus if spread else 0,
            spec=spec,
            **kwargs,
        )

    def api_nodes(self) -> list[tuple[SubsystemSpec, str]]:
        """Each API actor's spec and node: `api` on API_NODE; with API_PER_NODE one on each other
        alive node as well (`place_apis`)."""
        settings = self.settings
        first = alive_node(settings.api_node)
        if first is None:
            raise RuntimeError(f"API_NODE={settings.api_node}: no alive Ray node by that name in the cluster")
        if not settings.api_per_node:
            return [(ApiActor.spec, settings.api_node)]
        placed = place_apis(first, alive_nodes(), known_apis(self._api_actors(), self._beats(), self.api_placed))
        return [(api_spec(name), node) for name, node in placed.items()]

    def _beats(self) -> dict[str, Any]:
        """The HealthActor's view of every expected subsystem, by name."""
        return self._health().call_sync("snapshot", timeout_s=STOP_TIMEOUT_S)["subsystems"]

    def _api_actors(self) -> set[str]:
        """The names of the API actors that exist (alive or restarting)."""
        return {name for name in named_actors(self.settings.ray_namespace) if replica_index(name) is not None}

    def follow_nodes(self) -> None:
        """With API_PER_NODE the APIs follow the Ray cluster's nodes: a node that joined gets an
        API, and the API of a node that left (its actor went with the node it is kept on) is no
        longer expected, so liveness and /readyz stop waiting for it. That includes `api` when
        API_NODE's node is lost; it is started again if that node comes back."""
        if not self.settings.api_per_node:
            return
        namespace = self.settings.ray_namespace
        running = self._api_actors()
        known, alive = known_apis(running, self._beats(), self.api_placed), set(alive_nodes())
        start, retire = follow_apis(alive_node(self.settings.api_node), alive, running, known)
        for name, node in retire.items():
            ran = self._retire(api_spec(name))
            self.api_placed.pop(name, None)
            why = "its node left the Ray cluster" if node not in alive else "another API serves its node"
            say(f"{name}: {'stopped' if ran else 'no longer expected'}: {why}")
        if not start:
            return
        new = [(api_spec(name), node) for name, node in start.items()]
        expectations = [dataclasses.asdict(spec.expectation(namespace)) for spec, _ in new]
        self._health().call_sync("register", expectations, timeout_s=30)
        for spec, node in new:
            self.start(ApiActor, self.token, spec=spec, node=node)
            say(f"{spec.name}: started on node {node}")

    def _health(self) -> NamedActor:
        return NamedActor(HEALTH_ACTOR, self.settings.ray_namespace)

    def _check_replica_cpus(self) -> None:
        """Replicas ask Ray for REPLICA_CPUS each. On a Ray of its own (no RAY_ADDRESS) nothing adds
        nodes, so asking for more CPUs than it has would leave replicas waiting forever: refused,
        with the settings to change. On a cluster, the autoscaler may add nodes for them."""
        settings = self.settings
        asks = [
            (s.actor_name, settings.replica_cpus)
            for cls in self.subsystems
            for s in cls.specs_for(settings)
            if replicated(cls, s, settings)
        ]
        wanted = sum(cpus for _, cpus in asks)
        have = cluster_cpus()
        if wanted <= have:
            return
        message = (
            f"{len(asks)} replicas ask Ray for REPLICA_CPUS={settings.replica_cpus:g} CPU each ({wanted:g} in all), "
            f"but the Ray cluster has {have:g} CPUs"
        )
        if not settings.ray_address:
            raise StartRefused(
                f"{message}: lower REPLICA_CPUS, or SCHEDULER_REPLICAS, CHANNEL_MANAGER_REPLICAS, LIVENESS_REPLICAS"
            )
        say(f"{message}; they wait until the autoscaler adds nodes")

    def scale(self, cls: type[Subsystem], replicas: int) -> list[NamedActor]:
        """Run `replicas` replicas of a subsystem now: the missing ones are registered and started, the
        ones past the count drained (their shards go to the others at once) and forgotten."""
        spec = cls.spec_for(self.settings)
        wanted = [spec.replica(i) for i in range(replicas)]
        namespace = self.settings.ray_namespace
        health = NamedActor(HEALTH_ACTOR, namespace)
        health.call_sync("register", [dataclasses.asdict(s.expectation(namespace)) for s in wanted], timeout_s=30)
        started = [self.start(cls, spec=s) for s in wanted]
        for actor in started:
            actor.call_sync("ping", timeout_s=START_TIMEOUT_S)
        self._retire_replicas(spec, replicas)
        return started

    def _running_replicas(self, spec: SubsystemSpec) -> list[SubsystemSpec]:
        """Replica 0 of the subsystem, then each further one that runs, by index (the APIs of an
        API per node may have gaps: a node that left took its API)."""
        names = named_actors(self.settings.ray_namespace)
        indexes = sorted(i for name in names if (i := replica_index(name, spec)) is not None and i > 0)
        return [spec.replica(i) for i in [0, *indexes]]

    def _retire_replicas(self, spec: SubsystemSpec, keep: int) -> None:
        """Stop the replicas of `spec` that run past the first `keep`."""
        for extra in self._running_replicas(spec)[max(keep, 1) :]:
            self._retire(extra)

    def _retire(self, spec: SubsystemSpec) -> bool:
        """Stop the actor of `spec` if it runs, and forget it; whether it ran."""
        namespace = self.settings.ray_namespace
        actor = NamedActor(spec.actor_name, namespace)
        if not actor.exists():
            self._health().call_sync("unregister", spec.name, timeout_s=30)
            return False
        # Its shards first go to the others as their work in flight ends (handed over, not cut
        # short), within a bound: what is left then is delivered again by the next holder.
        deadline = time.monotonic() + 2 * self.settings.shard_lease_s
        try:
            held = actor.call_sync("leave_shards", timeout_s=STOP_TIMEOUT_S)
            while held and time.monotonic() < deadline:
                time.sleep(0.2)
                held = actor.call_sync("shards_held", timeout_s=STOP_TIMEOUT_S)
        except Exception as exc:  # stopped all the same below
            log.warning("%s did not hand its shards over: %s", spec.actor_name, exc)
        try:
            actor.call_sync("stop", timeout_s=STOP_TIMEOUT_S)
        except Exception as exc:  # killed all the same; its leases run out
            log.warning("%s did not stop cleanly: %s", spec.actor_name, exc)
        actor.kill(restart=False)
        self._health().call_sync("unregister", spec.name, timeout_s=30)
        return True

    def drain(self) -> None:
        """Readiness 503, then stop actors within the drain timeout, then Redis.

        The API keeps answering (503, draining) while the subsystems stop in reverse start
        order; it stops after them, and the HealthActor last, after persisting its state.
        """
        deadline = time.monotonic() + self.settings.drain_timeout_s
        namespace = self.settings.ray_namespace
        if not ray_connected():  # failed before connecting: only Redis may be ours
            if self.redis is not None:
                self.redis.stop()
            return

        def remaining() -> float:
            return max(0.1, deadline - time.monotonic())

        apis = [s.actor_name for s in self._running_replicas(ApiActor.spec)]
        for name in apis:
            try:
                NamedActor(name, namespace).call_sync("set_draining", True, timeout_s=remaining())
            except Exception as exc:  # draining goes on without the API: stopping is what matters
                log.warning("could not mark %s draining: %s", name, exc)
        time.sleep(min(DRAIN_GRACE_S, remaining() / 4))  # let readiness probes see the 503
        # Every replica that runs (a scale() or an earlier run may have started more than settings say).
        specs = [cls.spec_for(self.settings) for cls in reversed(self.subsystems)]
        names = [s.actor_name for spec in specs for s in self._running_replicas(spec)]
        names += apis
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


def replica_index(actor_name: str, spec: SubsystemSpec = ApiActor.spec) -> int | None:
    """Which replica of `spec` (the API by default) an actor of that name is; None if none."""
    if actor_name == spec.actor_name:
        return 0
    suffix = actor_name.removeprefix(f"{spec.actor_name}-")
    return int(suffix) if suffix != actor_name and suffix.isascii() and suffix.isdigit() else None


def api_spec(actor_name: str) -> SubsystemSpec:
    """The spec of the API actor of that name (`api` or `api-N`)."""
    return ApiActor.spec.replica(replica_index(actor_name) or 0)


def api_names(beats: Mapping[str, Any]) -> set[str]:
    """The names of the API actors among the expected subsystems."""
    return {name for name in beats if replica_index(name) is not None}


def known_apis(running: Collection[str], beats: Mapping[str, Any], started: Mapping[str, str]) -> dict[str, str | None]:
    """Every API actor that runs (`running`) or is expected (among `beats`, the registry's view)
    -> its node: where it beats from (it is kept on its node), else where this driver started it
    (`started`; it has not beaten yet), None if neither is known."""
    return {name: (beats.get(name) or {}).get("node") or started.get(name) for name in {*running, *api_names(beats)}}


def follow_apis(
    first: str | None, alive: Collection[str], running: Collection[str], known: Mapping[str, str | None]
) -> tuple[dict[str, str], dict[str, str | None]]:
    """One look of following the nodes (`place_apis`): the APIs to start, placed and with no actor
    running, and the APIs to retire, known and not placed; each -> its node."""
    placed = place_apis(first, alive, known)
    start = {name: node for name, node in placed.items() if name not in running}
    retire = {name: known[name] for name in sorted(set(known) - set(placed), key=lambda n: replica_index(n) or 0)}
    return start, retire


def place_apis(first: str | None, alive: Collection[str], apis: Mapping[str, str | None]) -> dict[str, str]:
    """Where the APIs of an API per node run, actor name -> node, in the order of their names.

    `api` runs on `first` (API_NODE's node; None: it is not alive). Each API known (`apis`:
    each one that runs or is expected -> its node, None if unknown) keeps its name on its node
    while that node is alive and has no API of a lower name: one whose actor went while its
    node is still alive is started again under its own name. Each alive node left gets the
    lowest `api-N` not known (a name is handed out again only once its old API is forgotten),
    in the order of the nodes' ids.
    """
    api = ApiActor.spec.actor_name
    placed = {api: first} if first is not None else {}
    for name, node in sorted(apis.items(), key=lambda item: replica_index(item[0]) or 0):
        if name != api and node in alive and node not in placed.values():
            placed[name] = node
    used = {*placed, *apis}
    free = (n for i in itertools.count(1) if (n := ApiActor.spec.replica(i).actor_name) not in used)
    for node in sorted(set(alive) - set(placed.values())):
        placed[next(free)] = node
    return dict(sorted(placed.items(), key=lambda item: replica_index(item[0]) or 0))


def down(settings: Settings) -> None:
    """Remove a detached deployment: its actors, and an embedded Redis left running."""
    connect_ray(settings)
    Deployment(settings, SUBSYSTEMS).drain()
    if settings.redis_url is None and EmbeddedRedis(settings.data_dir).stop_recorded():
        print("stopped the embedded redis-server")
    print(f"removed the deployment in namespace {settings.ray_namespace!r}")


STATUS_TIMEOUT_S = 5.0


def status(settings: Settings) -> int:
    """Print every expected subsystem of the deployment in RAY_ADDRESS (else the Ray running on this
    machine) and RAY_NAMESPACE; 0 if all are healthy, 1 if not (naming them) or if none answers."""
    try:
        attach_ray(settings)
    except ConnectionError as exc:
        print(f"not ready: no running Ray to ask (set RAY_ADDRESS): {exc}", file=sys.stderr)
        return 1
    health = NamedActor(HEALTH_ACTOR, settings.ray_namespace)
    try:
        snapshot = health.call_sync("snapshot", timeout_s=STATUS_TIMEOUT_S)
    except ACTOR_UNAVAILABLE as exc:
        print(f"not ready: no health registry in namespace {settings.ray_namespace!r} ({type(exc).__name__})")
        return 1
    print(liveness_table(snapshot))
    if not snapshot.get("loaded"):
        print("not ready: the health registry is still loading")
        return 1
    unhealthy = [f"{name} ({s['state']})" for name, s in snapshot["subsystems"].items() if not s["healthy"]]
    if unhealthy:
        print(f"not ready: {', '.join(unhealthy)}")
        return 1
    api = snapshot["subsystems"].get("api") or {}
    if (api.get("progress") or {}).get("draining"):
        print("not ready: draining (the API answers /readyz 503 until it stops)")
        return 1
    print(f"ready: {len(snapshot['subsystems'])} subsystems healthy")
    return 0


def liveness_table(snapshot: dict[str, Any]) -> str:
    """The registry's snapshot as a fixed-width table, one subsystem per line."""
    header = ("SUBSYSTEM", "STATE", "LAST TICK", "RESTARTS e/p/s", "QUARANTINED", "PID", "LAST ERROR")
    rows = [header]
    for name, s in snapshot["subsystems"].items():
        ago = "never" if s["seconds_ago"] is None else f"{s['seconds_ago']:.1f} s ago"
        restarts = "/".join(str(s["restarts"][r]) for r in ("exception", "process", "stalled"))
        error = (s["last_error"] or "")[:60]
        rows.append((name, s["state"], ago, restarts, str(s["quarantined"]), str(s["pid"] or "-"), error))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


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
    if argv[1:] == ["status"]:
        return status(settings)
    if argv[1:]:
        print(f"usage: {argv[0]} [down|status]", file=sys.stderr)
        return 2
    deployment = Deployment(settings, SUBSYSTEMS)
    try:
        deployment.up()
    except StartRefused as exc:
        print(f"start error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # a start error the operator can act on: said plainly, nothing left running
        deployment.drain()
        print(f"start error: {exc}", file=sys.stderr)
        return 1
    except BaseException:  # includes Ctrl-C during start: leave nothing half-deployed
        deployment.drain()
        raise
    # Installed after ray.init(), which sets its own SIGTERM handler.
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        settings = deployment.settings
        on_nodes = f"port {settings.api_port} of each API's node (API_HOST={NODE_HOST})"
        say(f"API: {on_nodes if settings.api_host == NODE_HOST else deployment.api_url}")
        say(f"admin token: {deployment.token_path or 'from ADMIN_TOKEN'}")
        say(f"Ray namespace: {deployment.settings.ray_namespace}; Ctrl-C or SIGTERM drains and stops")
        while not stop.wait(NODE_FOLLOW_S):
            try:
                deployment.follow_nodes()
            except Exception as exc:  # tried again at the next look; the platform runs on meanwhile
                log.warning("could not follow the Ray cluster's nodes: %s", exc)
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
