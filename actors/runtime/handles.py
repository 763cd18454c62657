"""The one thin wrapper around Ray calls: named actors, deadlines, kills, process identity."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from settings import Settings

log = logging.getLogger(__name__)

HEALTH_ACTOR = "health"
API_ACTOR = "api"


class ActorNotFound(LookupError):
    """No actor of that name exists in the namespace."""


class RemoteError(Exception):
    """The called method itself raised; `cause` is its exception (when Ray could carry it)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


# What a call to a named actor raises when the actor is gone, restarting or slow. An error
# raised by the method itself arrives as RemoteError and is not in here.
ACTOR_UNAVAILABLE = (RayActorError, GetTimeoutError, asyncio.TimeoutError, ActorNotFound)

ACTOR_OPTIONS: dict[str, Any] = {
    "lifetime": "detached",
    "get_if_exists": True,
    "max_restarts": -1,
    "max_task_retries": 0,
    "num_cpus": 0,
}


# Every node has a resource `node:<its IP>`; the head also has this one.
HEAD_NODE_RESOURCE = "node:__internal_head__"
# A node resource is 1 per node: asking for a sliver pins without limiting how many land there.
NODE_SLIVER = 0.001


def placement(node: str) -> dict[str, Any]:
    """Actor options that keep an actor on `node`, also when Ray restarts it.

    `node` is "head", a node's IP address, or a Ray node id (as `Settings.api_node`).
    """
    if node == "head":
        return {"resources": {HEAD_NODE_RESOURCE: NODE_SLIVER}}
    if _is_address(node):
        return {"resources": {f"node:{node}": NODE_SLIVER}}
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=False)}


def alive_node(node: str) -> str | None:
    """The id of an alive node that `node` (as in `placement`) names, or None."""
    for info in ray.nodes():
        if not info.get("Alive"):
            continue
        resources = info.get("Resources") or {}
        if (
            (node == "head" and HEAD_NODE_RESOURCE in resources)
            or (_is_address(node) and f"node:{node}" in resources)
            or info.get("NodeID") == node
        ):
            return info["NodeID"]
    return None


def alive_nodes() -> list[str]:
    """The ids of the alive nodes of the connected Ray cluster."""
    return [info["NodeID"] for info in ray.nodes() if info.get("Alive")]


def named_actors(namespace: str) -> set[str]:
    """The names of the named actors of `namespace` that are alive or restarting."""
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == namespace}


def cluster_cpus() -> float:
    """The CPUs of every node of the connected Ray cluster."""
    return float(ray.cluster_resources().get("CPU", 0))


def _is_address(node: str) -> bool:
    try:
        ipaddress.ip_address(node)
    except ValueError:
        return False
    return True


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


def attach_ray(settings: Settings) -> None:
    """Attach to RAY_ADDRESS, or else to the Ray running on this machine; ConnectionError if there is none."""
    options: dict[str, Any] = {"namespace": settings.ray_namespace, "logging_level": logging.WARNING}
    ray.init(address=settings.ray_address or "auto", **options)


def ray_connected() -> bool:
    return ray.is_initialized()


def identity() -> tuple[int, str | None]:
    """This process's pid and Ray node id (None outside Ray)."""
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    return os.getpid(), node


@functools.cache
def _actor_class(cls: type) -> Any:
    return ray.remote(cls)


def deploy(
    cls: type,
    *args: Any,
    name: str,
    namespace: str,
    node: str | None = None,
    spread: bool = False,
    num_cpus: float = 0,
    **kwargs: Any,
) -> NamedActor:
    """Create `cls(*args, **kwargs)` as the detached actor `name`, restarted by Ray whenever it dies.

    An actor of that name that already exists is attached to instead (a re-run driver never
    makes a second one). With `node` (see `placement`) it runs, and restarts, on that node;
    with `spread` (a subsystem's replicas), Ray's SPREAD strategy places such actors over
    the nodes, best effort. `num_cpus` is what it asks Ray for (none by default: the actors
    here wait on I/O). Returns its handle; nothing waits for the constructor (call `ping`
    for that).
    """
    options = {
        **ACTOR_OPTIONS,
        **(placement(node) if node else {"scheduling_strategy": "SPREAD"} if spread else {}),
    }
    options["num_cpus"] = num_cpus
    handle = _actor_class(cls).options(name=name, namespace=namespace, **options).remote(*args, **kwargs)
    return NamedActor(name, namespace, handle)


class NamedActor:
    """A lazily resolved handle to a named actor; every call has a deadline and no retry.

    A call that fails because the actor is gone drops the handle so the next call looks the
    name up again (a `down` and a new deployment give a new actor under the same name).
    """

    def __init__(self, name: str, namespace: str, handle: Any = None) -> None:
        self.name = name
        self.namespace = namespace
        self._handle: Any = handle

    def handle(self) -> Any:
        """The actor's handle; raises ActorNotFound if no such actor exists."""
        if self._handle is None:
            try:
                self._handle = ray.get_actor(self.name, namespace=self.namespace)
            except ValueError:
                raise ActorNotFound(f"no actor {self.name!r} in namespace {self.namespace!r}") from None
        return self._handle

    async def call(self, method: str, *args: Any, timeout_s: float) -> Any:
        """Await `method(*args)` on the actor; raises one of ACTOR_UNAVAILABLE on failure."""
        try:
            ref = getattr(self.handle(), method).remote(*args)
            return await asyncio.wait_for(ref, timeout_s)
        except RayActorError:
            self._handle = None
            raise
        except RayTaskError as exc:
            raise RemoteError(exc.cause or exc) from None

    def call_sync(self, method: str, *args: Any, timeout_s: float) -> Any:
        """Blocking form of `call`, for the driver."""
        try:
            ref = getattr(self.handle(), method).remote(*args)
            return ray.get(ref, timeout=timeout_s)
        except RayActorError:
            self._handle = None
            raise
        except RayTaskError as exc:
            raise RemoteError(exc.cause or exc) from None

    def exists(self) -> bool:
        """Whether an actor of this name is there (alive or being restarted)."""
        try:
            self.handle()
        except ActorNotFound:
            return False
        return True

    def kill(self, *, restart: bool) -> bool:
        """Kill the actor; with `restart` Ray starts it again. Returns whether it existed."""
        try:
            handle = self.handle()
        except ActorNotFound:
            return False
        ray.kill(handle, no_restart=not restart)
        if not restart:
            self._handle = None
        return True
