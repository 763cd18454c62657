"""Lua scripts, the one way store/ runs them: EVALSHA, loaded into Redis on first use."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterPipeline
from redis.commands.core import AsyncScript
from redis.exceptions import OutOfMemoryError, ResponseError


class Lua:
    """One Lua script, run by its SHA-1 on any client (and inside pipelines).

    redis-py loads it with SCRIPT LOAD when Redis answers NOSCRIPT (a new or restarted
    server), so the source crosses the wire once per server, not on every call.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self._bound: weakref.WeakKeyDictionary[aioredis.Redis, AsyncScript] = weakref.WeakKeyDictionary()

    async def __call__(
        self, redis: aioredis.Redis, keys: Sequence[str], args: Sequence[Any] = (), *, pipe: Any = None
    ) -> Any:
        """Run with `keys` and `args`; with `pipe` (a pipeline of `redis`), queue it there instead.

        A Redis Cluster pipeline refuses EVALSHA (redis-py cannot load a script on the node a
        slot moved to mid-pipeline), so there the source goes with each call, as EVAL.
        """
        if isinstance(pipe, ClusterPipeline):
            try:
                return pipe.eval(self.source, len(keys), *keys, *args)
            except ResponseError as exc:
                raise translated(exc) from None
        script = self._bound.get(redis)
        if script is None:
            script = self._bound[redis] = redis.register_script(self.source)
        try:
            return await script(keys=list(keys), args=list(args), client=pipe)
        except ResponseError as exc:
            raise translated(exc) from None


def translated(exc: Exception) -> Exception:
    """A script's error as redis-py would name it had the command been sent alone.

    Redis refuses a script at its first write when the store is full (maxmemory), before it
    has written anything, but wraps the OOM in "Error running script": it is an
    OutOfMemoryError all the same, so callers see one kind of "store full".
    """
    if (
        isinstance(exc, ResponseError)
        and not isinstance(exc, OutOfMemoryError)
        and "OOM command not allowed" in str(exc)
    ):
        return OutOfMemoryError(str(exc))
    return exc
