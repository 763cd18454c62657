"""What the HTTP layer needs from the platform, as a protocol (the API actor implements it)."""

from __future__ import annotations

from typing import Any, Protocol

LIVENESS_DEADLINE_S = 2.0
# POST /admin/faults: the next tick raises; it awaits forever; the event loop blocks; the process exits.
FAULTS = ("raise", "hang", "block", "exit")


class Unavailable(Exception):
    """The registry (or another actor) did not answer within its deadline."""


class UnknownSubsystem(Exception):
    """A fault named a subsystem the registry does not expect."""


class FaultRefused(Exception):
    """The subsystem refused the fault (for example, injection disabled in its process)."""


class Backend(Protocol):
    @property
    def draining(self) -> bool: ...

    async def liveness(self) -> bytes:
        """The registry snapshot as JSON; raises Unavailable past LIVENESS_DEADLINE_S."""
        ...

    async def readiness(self) -> dict[str, Any]:
        """`{"ready": bool, "unhealthy": [names]}`; raises Unavailable past the deadline."""
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
