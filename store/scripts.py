"""Lua scripts, the one way store/ runs them: EVALSHA, loaded into Redis on first use."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript


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
        """Run with `keys` and `args`; with `pipe` (a pipeline of `redis`), queue it there instead."""
        script = self._bound.get(redis)
        if script is None:
            script = self._bound[redis] = redis.register_script(self.source)
        return await script(keys=list(keys), args=list(args), client=pipe)
