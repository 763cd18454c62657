"""Chat relay queues: each chat's messages one at a time and in order, many chats at once."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from actors.runtime.supervised import RestartPolicy, describe

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRY = RestartPolicy(initial_backoff_s=1.0, max_backoff_s=30.0)


class ChatQueues(Generic[T]):
    """Per-chat FIFO queues, each drained by its own task while it has items.

    `handle(item)` runs for one item at a time per chat, so a chat whose agent hangs delays
    only the messages behind it (`handle` bounds its own concurrency where it does I/O). An
    item whose `handle` raises is retried after a backoff (1 s, 2 s ... 30 s) and stays at
    its chat's head: order is kept and nothing is skipped; `handle` decides itself when an
    item is answered with an error instead. `room()` waits while `room` items are queued.
    """

    def __init__(self, handle: Callable[[T], Awaitable[None]], *, room: int, sleep=asyncio.sleep) -> None:
        self._handle = handle
        self._room = room
        self._sleep = sleep
        self._chats: dict[str, deque[T]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._handling: set[str] = set()  # chats whose `handle` is running now
        self._closing = False
        self._has_room = asyncio.Event()
        self._has_room.set()
        self.backlog = 0
        self.handled = 0
        self.retries = 0

    def add(self, chat: str, item: T) -> None:
        self._chats.setdefault(chat, deque()).append(item)
        self.backlog += 1
        if self.backlog >= self._room:
            self._has_room.clear()
        if chat not in self._workers:
            self._workers[chat] = asyncio.get_running_loop().create_task(self._drain(chat), name=f"chat {chat}")

    async def room(self) -> None:
        """Wait until the backlog is below `room`."""
        await self._has_room.wait()

    @property
    def in_flight(self) -> int:
        return len(self._workers)

    async def _drain(self, chat: str) -> None:
        queue = self._chats[chat]
        attempt = 0
        try:
            while queue and not self._closing:
                self._handling.add(chat)
                try:
                    await self._handle(queue[0])
                    failed: Exception | None = None
                except Exception as exc:  # the item stays at the head: retried, never skipped
                    failed = exc
                finally:
                    self._handling.discard(chat)
                if failed is not None:
                    if self._closing:
                        break  # closing: the item stays unhandled, for whoever runs it next
                    self.retries += 1
                    delay = RETRY.base_delay_s(attempt)
                    attempt += 1
                    log.warning("chat %s: handling failed (%s); retry in %.0f s", chat, describe(failed), delay)
                    await self._sleep(delay)
                    continue
                attempt = 0
                queue.popleft()
                self.handled += 1
                self.backlog -= 1
                if self.backlog < self._room:
                    self._has_room.set()
        finally:
            del self._workers[chat]
            if not queue:
                del self._chats[chat]

    async def close(self, *, finish_current: bool = False) -> None:
        """Stop every chat's task and wait for them; unhandled items are dropped from memory.

        With `finish_current`, an item being handled now is let finish (nothing after it
        starts); otherwise it is cancelled too.
        """
        self._closing = True
        workers = list(self._workers.items())
        for chat, task in workers:
            if not (finish_current and chat in self._handling):
                task.cancel()
        await asyncio.gather(*(task for _, task in workers), return_exceptions=True)
