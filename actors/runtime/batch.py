"""Coalesce many callers' writes into one round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Batch(Generic[T]):
    """`await submit(item)` returns `flush(items)`'s answer for that item; items submitted while a
    flush is in flight go together in the next one, so under load one round trip serves many
    callers and with one caller it costs what a direct call costs.

    `flush` answers one value per item, in order; an Exception among them is raised to that
    item's caller only, and an exception `flush` raises goes to every caller of that batch.
    """

    def __init__(self, flush: Callable[[list[T]], Awaitable[Sequence[Any]]], *, max_size: int = 512) -> None:
        self._flush = flush
        self._max_size = max_size
        self._pending: list[tuple[T, asyncio.Future[Any]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return await future

    async def _run(self) -> None:
        batch: list[tuple[T, asyncio.Future[Any]]] = []
        try:
            while self._pending:
                batch, self._pending = self._pending[: self._max_size], self._pending[self._max_size :]
                try:
                    answers = await self._flush([item for item, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), answer in zip(batch, answers, strict=True):
                    if future.done():
                        continue
                    if isinstance(answer, Exception):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
        except asyncio.CancelledError:
            for _, future in batch + self._pending:
                future.cancel()
            self._pending = []
            raise
        finally:
            self._task = None
