"""The one thin wrapper around Ray calls: named actors, deadlines, kills, process identity."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

log = logging.getLogger(__name__)

HEALTH_ACTOR = "health"
API_ACTOR = "api"

# What a call to a named actor raises when the actor is gone, restarting or slow.
ACTOR_UNAVAILABLE = (RayActorError, GetTimeoutError, asyncio.TimeoutError, ValueError)

ACTOR_OPTIONS: dict[str, Any] = {
    "lifetime": "detached",
    "get_if_exists": True,
    "max_restarts": -1,
    "max_task_retries": 0,
    "num_cpus": 0,
}


def identity() -> tuple[int, str | None]:
    """This process's pid and Ray node id (None outside Ray)."""
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    return os.getpid(), node


class NamedActor:
    """A lazily resolved handle to a named actor; every call has a deadline and no retry.

    A call that fails because the actor is gone drops the handle so the next call looks the
    name up again (a `down` and a new deployment give a new actor under the same name).
    """

    def __init__(self, name: str, namespace: str) -> None:
        self.name = name
        self.namespace = namespace
        self._handle: Any = None

    def handle(self) -> Any:
        if self._handle is None:
            self._handle = ray.get_actor(self.name, namespace=self.namespace)
        return self._handle

    async def call(self, method: str, *args: Any, timeout_s: float) -> Any:
        """Await `method(*args)` on the actor; raises one of ACTOR_UNAVAILABLE on failure."""
        try:
            ref = getattr(self.handle(), method).remote(*args)
            return await asyncio.wait_for(ref, timeout_s)
        except RayActorError:
            self._handle = None
            raise
        except ValueError:  # not found by name
            self._handle = None
            raise

    def call_sync(self, method: str, *args: Any, timeout_s: float) -> Any:
        """Blocking form of `call`, for the driver."""
        try:
            ref = getattr(self.handle(), method).remote(*args)
            return ray.get(ref, timeout=timeout_s)
        except (RayActorError, ValueError):
            self._handle = None
            raise

    def kill(self, *, restart: bool) -> bool:
        """Kill the actor; with `restart` Ray starts it again. Returns whether it existed."""
        try:
            handle = self.handle()
        except ValueError:
            return False
        ray.kill(handle, no_restart=not restart)
        if not restart:
            self._handle = None
        return True

    def exists(self) -> bool:
        try:
            self.handle()
        except ValueError:
            return False
        return True
