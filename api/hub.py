"""The API actor's WebSocket hub: each tenant's connected clients, each with a bounded queue."""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import socket
from collections import deque
from collections.abc import Collection, Mapping, Sequence

from store.events import EventKey, parse_id

# One delivered event: (stream id, its JSON text). Texts are shared by every client of the tenant.
Event = tuple[str, str]
# Queued: the id as a comparable key, and the JSON text.
Queued = tuple[EventKey, str]


class Client:
    """One connection's queue of events not yet handed to its socket.

    Only ids above the newest one queued are taken, so a re-delivery never takes queue
    space. A client more than `limit` events behind is marked `overflowed`, its queue is
    dropped and the hub stops queueing for it; its connection decides what that means
    (read the stream again while replaying, close 1013 once live).
    """

    def __init__(self, tenant_id: str, limit: int, member: str = "", digest: str = "") -> None:
        self.tenant_id = tenant_id
        self.limit = limit
        # What counts it among its tenant's connections (store.connections); unique in its hub.
        self.member = member or f"local:{id(self)}"
        self.digest = digest  # of the token it was opened with
        self.overflowed = False
        self.revoked: str | None = None  # why its token stopped working (the connection closes 4401)
        self.ready = asyncio.Event()
        self.newest: EventKey = (0, 0)  # the newest id queued (or, once set, sent)
        self._pending: deque[Queued] = deque()

    def offer(self, events: Sequence[Queued]) -> None:
        fresh = [e for e in events if e[0] > self.newest]
        if not fresh:
            return
        if len(self._pending) + len(fresh) > self.limit:
            self.overflowed = True
            self._pending.clear()
        else:
            self._pending.extend(fresh)
            self.newest = fresh[-1][0]
        self.ready.set()

    def take(self) -> list[Queued]:
        """Everything queued, oldest first; the queue is left empty."""
        events = list(self._pending)
        self._pending.clear()
        self.ready.clear()
        return events


class Hub:
    """Routes delivered events to the connected clients of the events' tenant, and to no one else."""

    def __init__(self, queue_size: int) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.queue_size = queue_size
        self._tenants: dict[str, set[Client]] = {}
        self.overflows = 0
        self.delivered = 0  # events sent to clients (one per client), for the API actor's metrics
        self.appended = 0  # events appended through POST /events
        self.connections = 0  # open WebSocket handlers, registered or not
        self.followed_changed = asyncio.Event()  # a tenant got its first client (a reader reads it from now)
        # Every client until its connection ends, queued for or not (an overflowed one is not).
        self._held: dict[str, dict[str, Client]] = {}
        self._members = itertools.count(1)
        self._prefix = f"{socket.gethostname()}#{os.getpid()}.{secrets.token_hex(3)}"
        # Held while the connections' counts are renewed, and by each release: a release that
        # came during a renewal goes after it, or the renewal would count its connection again.
        self.counting = asyncio.Lock()

    def new_member(self) -> str:
        """A name for one connection among its tenant's, unique across the APIs of a deployment
        (its host, process and a random part, then a count)."""
        return f"{self._prefix}:{next(self._members)}"

    @property
    def clients(self) -> int:
        return sum(len(clients) for clients in self._tenants.values())

    def register(self, tenant_id: str, newest: EventKey = (0, 0), member: str = "", digest: str = "") -> Client:
        """A client of the tenant whose events up to `newest` need not be queued (it has them, or
        reads them from the stream itself); held until `close`."""
        client = Client(tenant_id, self.queue_size, member, digest)
        client.newest = newest
        if tenant_id not in self._tenants:
            self.followed_changed.set()
        self._tenants.setdefault(tenant_id, set()).add(client)
        self._held.setdefault(tenant_id, {})[client.member] = client
        return client

    def held(self) -> dict[str, dict[str, str]]:
        """Each tenant's connections on this hub: member -> the digest of its token."""
        return {t: {m: c.digest for m, c in clients.items()} for t, clients in self._held.items()}

    def followed(self) -> dict[str, EventKey]:
        """Each tenant with clients, and the oldest `newest` among them: a reader of this hub's
        tenants that starts a tenant there misses nothing any of its clients still needs."""
        return {t: min(c.newest for c in clients) for t, clients in self._tenants.items() if clients}

    def readmit(self, client: Client) -> None:
        """Queue for an overflowed client again; it re-reads the stream from its own position."""
        client.overflowed = False
        client.take()
        if client.revoked is not None:  # revoked while it re-read: it closes instead
            client.ready.set()
            return
        if client.tenant_id not in self._tenants:
            self.followed_changed.set()
        self._tenants.setdefault(client.tenant_id, set()).add(client)

    def revoke(self, tenant_id: str, reason: str, members: Collection[str] | None = None) -> int:
        """Close the tenant's connections (4401 with `reason`), all or those of `members`: their
        token stopped working. How many."""
        held = self._held.get(tenant_id, {})
        named = None if members is None else set(members)
        clients = [c for m, c in held.items() if named is None or m in named]
        for client in clients:
            self.unregister(client)
            client.revoked = reason
            client.ready.set()
        return len(clients)

    def close(self, client: Client) -> None:
        """The client's connection ended: neither queued for nor held."""
        self.unregister(client)
        held = self._held.get(client.tenant_id, {})
        held.pop(client.member, None)
        if not held:
            self._held.pop(client.tenant_id, None)

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
            clients = self._tenants.get(tenant_id)
            if not clients:
                continue
            queued = [(key, text) for stream_id, text in events if (key := parse_id(stream_id)) is not None]
            for client in list(clients):
                client.offer(queued)
                if client.overflowed:
                    self.overflows += 1
                    self.unregister(client)  # holds no events from now on
