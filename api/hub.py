"""The API actor's WebSocket hub: each tenant's connected clients, each with a bounded queue."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping, Sequence

# One delivered event: (stream id, its JSON text). Texts are shared by every client of the tenant.
Event = tuple[str, str]


class Client:
    """One connection's queue of events not yet handed to its socket.

    A client more than `limit` events behind is marked `overflowed` and its queue dropped;
    its connection decides what that means (re-read the stream while replaying, close 1013
    once live).
    """

    def __init__(self, tenant_id: str, limit: int) -> None:
        self.tenant_id = tenant_id
        self.limit = limit
        self.overflowed = False
        self.ready = asyncio.Event()
        self._pending: deque[Event] = deque()

    def offer(self, events: Sequence[Event]) -> None:
        if self.overflowed:
            return
        if len(self._pending) + len(events) > self.limit:
            self.overflowed = True
            self._pending.clear()
        else:
            self._pending.extend(events)
        self.ready.set()

    def take(self) -> list[Event]:
        """Everything queued, oldest first; the queue is left empty."""
        events = list(self._pending)
        self._pending.clear()
        self.ready.clear()
        return events

    def reset(self) -> None:
        """Forget an overflow: the caller re-reads the stream from its own position."""
        self.overflowed = False
        self._pending.clear()
        self.ready.clear()


class Hub:
    """Routes delivered events to the connected clients of the events' tenant, and to no one else."""

    def __init__(self, queue_size: int) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.queue_size = queue_size
        self._tenants: dict[str, set[Client]] = {}
        self.overflows = 0

    @property
    def clients(self) -> int:
        return sum(len(clients) for clients in self._tenants.values())

    def register(self, tenant_id: str) -> Client:
        client = Client(tenant_id, self.queue_size)
        self._tenants.setdefault(tenant_id, set()).add(client)
        return client

    def unregister(self, client: Client) -> None:
        clients = self._tenants.get(client.tenant_id)
        if clients is None:
            return
        clients.discard(client)
        if not clients:
            del self._tenants[client.tenant_id]

    def publish(self, batch: Mapping[str, Sequence[Event]]) -> None:
        """Queue each tenant's events, in order, on that tenant's clients."""
        for tenant_id, events in batch.items():
            for client in self._tenants.get(tenant_id, ()):
                was_over = client.overflowed
                client.offer(events)
                self.overflows += client.overflowed and not was_over
