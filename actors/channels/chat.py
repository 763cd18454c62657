"""Chat platform failures, as the channel manager acts on them: retry, wait, or quarantine."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ChatApiError(Exception):
    """A call to Telegram or Slack that did not succeed.

    `revoked`: the credentials are no longer accepted (the channel is quarantined).
    `retry_after`: the platform asked us to wait this many seconds (rate limit).
    `transient`: worth retrying (5xx, connection errors); otherwise the request itself was refused.
    """

    description: str
    status: int = 0
    revoked: bool = False
    retry_after: float | None = None
    transient: bool = False

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.description}" if self.status else self.description
