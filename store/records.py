"""Records as Redis hashes: every field a string, None as "", and the helpers to read them."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any


def new_id() -> str:
    return uuid.uuid4().hex


def now_rfc3339(ts: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if ts is None else ts, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_hash(record: dict[str, Any]) -> dict[str, str]:
    """JSON-ish values as hash strings: None -> "", bool -> "true"/"false", numbers -> str."""
    out = {}
    for key, value in record.items():
        if value is None:
            out[key] = ""
        elif isinstance(value, bool):
            out[key] = "true" if value else "false"
        else:
            out[key] = str(value)
    return out


def decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    """A hash read as bytes, decoded strictly: invalid UTF-8 raises UnicodeDecodeError."""
    return {k.decode(): v.decode() for k, v in raw.items()}


def optional(value: str) -> str | None:
    return value if value != "" else None
