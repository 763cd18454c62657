"""Weighted fair order across tenants, for work that many tenants wait on at once."""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")


class FairQueue:
    """Stride scheduling: each pick advances its tenant's pass by 1 / weight, and the tenant
    with the lowest pass goes next, so while tenants are backlogged they are served in
    proportion to their weights, whatever the size of their backlogs.

    Passes persist from one call to the next (capacity often frees one slot at a time); a
    tenant that was idle starts at the current virtual time, so it neither catches up on
    the time it was idle nor falls behind tenants that were busy.
    """

    def __init__(self) -> None:
        self._pass: dict[str, float] = {}
        self._vtime = 0.0

    def order(
        self,
        backlogs: Mapping[str, Sequence[T]],
        rooms: Mapping[str, int],
        weights: Mapping[str, int],
        total: int,
    ) -> list[tuple[str, T]]:
        """Up to `total` items taken from the backlogs (each tenant's in its own order, at most
        `rooms[tenant]` of them), interleaved fairly."""
        heap = [
            (max(self._pass.get(t, 0.0), self._vtime), t)
            for t, items in backlogs.items()
            if items and rooms.get(t, 0) > 0
        ]
        heapq.heapify(heap)
        taken = dict.fromkeys(backlogs, 0)
        picked: list[tuple[str, T]] = []
        while heap and len(picked) < total:
            stride, tenant = heapq.heappop(heap)
            self._vtime = stride
            picked.append((tenant, backlogs[tenant][taken[tenant]]))
            taken[tenant] += 1
            stride += 1.0 / max(weights.get(tenant, 1), 1)
            self._pass[tenant] = stride
            if taken[tenant] < min(len(backlogs[tenant]), rooms[tenant]):
                heapq.heappush(heap, (stride, tenant))
        # A pass at or below the virtual time means nothing (a tenant restarts there): forget it.
        self._pass = {t: p for t, p in self._pass.items() if p > self._vtime}
        return picked
