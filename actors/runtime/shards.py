"""ShardOwner: a replica's share of its subsystem's shards, held by leases (store.shards).

A subsystem that does tenant work calls `refresh()` from its tick, so a replica whose loop
is wedged stops renewing and its shards go to the others when their leases run out; what
it writes after that is refused by the fence. A refresh announces the replica, works out
which shards rendezvous hashing gives it among the live replicas, takes or renews those,
and lets go of the ones another replica should have as soon as their work in flight is
done (`busy`), so a handover neither drops nor doubles work that is under way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis

from actors.runtime.subsystem import TRANSIENT_ERRORS
from store import shards
from store.keys import ALL_SHARDS
from store.shards import Fence

log = logging.getLogger(__name__)

SAFETY = 0.8  # a lease is used for this share of its time from when it was asked for: clocks drift
WAITING_RETRY_S = 0.5  # how often a replica asks for shards it wants and another still holds


class ShardOwner:
    def __init__(
        self,
        redis: aioredis.Redis,
        namespace: str,
        kind: str,
        member: str,
        *,
        lease_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.namespace = namespace
        self.kind = kind
        self.member = member
        self.lease_s = lease_s
        self.clock = clock
        self.tokens: dict[int, str] = {}  # shard -> token of the lease held
        self.valid_until: dict[int, float] = {}  # shard -> until when (this clock) to use it
        self.wanted: set[int] = set()
        self.members: list[str] = []
        self.owner = ""  # "<member>#<incarnation>": this process, as its leases name it
        self.leaving = False
        self._next_at = float("-inf")

    async def refresh(self, busy: Callable[[int], bool] = lambda shard: False) -> None:
        """Renew, take and give up leases, if it is time to (every third of a lease; more often
        while a wanted shard is still another's, or one to give up is still `busy`)."""
        now = self.clock()
        if now < self._next_at:
            return
        lease_ms = int(self.lease_s * 1000)
        if not self.owner:
            self.owner = await shards.incarnation(self.redis, self.namespace, self.kind, self.member)
        if self.leaving:  # the others take its shards as it lets go of them
            await shards.leave(self.redis, self.namespace, self.kind, self.member)
            self.members, self.wanted = [], set()
        else:
            self.members = await shards.announce(self.redis, self.namespace, self.kind, self.member, lease_ms)
            self.wanted = set(shards.assigned(self.members, ALL_SHARDS).get(self.member, ()))
        for shard in sorted(set(self.tokens) - self.wanted):
            if not busy(shard):
                await shards.release(self.redis, self.namespace, self.kind, self.owner, shard, self.tokens[shard])
                self._drop(shard)
        asked = {shard: self.tokens.get(shard, "") for shard in sorted(self.wanted | set(self.tokens))}
        found = await shards.acquire(self.redis, self.namespace, self.kind, self.owner, lease_ms, asked)
        for shard, lease in found.items():
            if lease.held:
                if self.tokens.get(shard) != lease.token_or_owner and shard in self.tokens:
                    log.warning("%s: lease of shard %d was lost and taken again", self.member, shard)
                self.tokens[shard] = lease.token_or_owner
                self.valid_until[shard] = now + self.lease_s * SAFETY
            else:
                self._drop(shard)
        waiting = bool(self.wanted - set(self.tokens)) or bool(set(self.tokens) - self.wanted)
        self._next_at = now + (WAITING_RETRY_S if waiting else self.lease_s / 3)

    def start_leaving(self) -> None:
        """Want no shard from now on (a replica scaled away): each is let go, from the next
        refresh, once its work in flight is done; `tokens` empties as they go."""
        self.leaving = True
        self._next_at = float("-inf")

    def _drop(self, shard: int) -> None:
        self.tokens.pop(shard, None)
        self.valid_until.pop(shard, None)

    def held(self) -> list[int]:
        """The shards whose lease it holds, valid now by its own clock."""
        now = self.clock()
        return sorted(s for s, until in self.valid_until.items() if until > now)

    def owned(self) -> list[int]:
        """The shards to start new work in: held, and still its to keep."""
        return [s for s in self.held() if s in self.wanted]

    def fence(self, shard: int) -> Fence | None:
        """The fence of a shard it holds (None if it does not: no write for that shard)."""
        if shard not in self.tokens or self.valid_until.get(shard, 0.0) <= self.clock():
            return None
        return shards.fence_of(shard, self.namespace, self.kind, self.tokens[shard])

    async def leave(self) -> None:
        """Let go of every lease and leave the members (a replica stopping): the others take over
        at once. Best effort: if Redis cannot be reached, the leases run out by themselves."""
        try:
            for shard, token in list(self.tokens.items()):
                await shards.release(self.redis, self.namespace, self.kind, self.owner, shard, token)
                self._drop(shard)
            await shards.leave(self.redis, self.namespace, self.kind, self.member)
        except TRANSIENT_ERRORS as exc:
            log.warning("%s could not let go of its shards: %s", self.member, exc)
