"""What the HTTP layer needs from the platform, as a protocol (the API actor implements it)."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from typing import Any, Protocol

LIVENESS_DEADLINE_S = 2.0
# POST /admin/faults: the next tick raises; it awaits forever; the event loop blocks; the process exits.
FAULTS = ("raise", "hang", "block", "exit")


@dataclass(frozen=True)
class Encoded:
    """A JSON body encoded once for every reader, also gzipped (the liveness body shrinks 20x or more)."""

    json: bytes
    gzip: bytes

    @classmethod
    def of(cls, body: bytes) -> Encoded:
        return cls(body, gzip.compress(body, compresslevel=1, mtime=0))


class Unavailable(Exception):
    """The registry (or another actor) did not answer within its deadline."""


class NotQuarantined(Exception):
    """A release named an item its subsystem does not hold in quarantine."""


class UnknownSubsystem(Exception):
    """A fault named a subsystem the registry does not expect."""


class FaultRefused(Exception):
    """The subsystem refused the fault (for example, injection disabled in its process)."""


class Backend(Protocol):
    @property
    def draining(self) -> bool: ...

    async def liveness(self) -> Encoded:
        """The /admin/liveness body: the store's memory, the draining flag and the registry's snapshot,
        as JSON; raises Unavailable past LIVENESS_DEADLINE_S."""
        ...

    async def readiness(self) -> dict[str, Any]:
        """`{"ready": bool, "unhealthy": [names]}`; raises Unavailable past the deadline."""
        ...

    async def quarantine(self) -> dict[str, Any]:
        """`{"items": [{"subsystem", "key", "tenant_id", "error", "since", "failures"}], "unreachable": [names]}`."""
        ...

    async def release(self, subsystem: str, key: str) -> None:
        """Release one quarantined item; raises UnknownSubsystem, NotQuarantined, FaultRefused
        (the subsystem refused, saying why) or Unavailable."""
        ...

    async def inject_fault(self, subsystem: str, fault: str, seconds: float | None) -> None:
        """Deliver a fault; raises UnknownSubsystem, FaultRefused or Unavailable."""
        ...

    async def verify_bot(self, token: str) -> str | None:
        """Why Telegram refuses this bot token (getMe), or None if it answers; Unavailable if it does not."""
        ...

    async def refuse_url(self, url: str) -> str | None:
        """Why the platform's egress would refuse requests to `url` (naming the setting that allows it), or None."""
        ...
