"""Secret sealing: a record's secrets encrypted at rest with Fernet (AES-128-CBC + HMAC-SHA256)."""

from __future__ import annotations

import json

from cryptography.fernet import Fernet, InvalidToken


class SecretBox:
    """Seals a dict of strings into one Fernet token and opens it again.

    `open` raises ValueError for a token this key did not seal (a changed key or a corrupt
    record), never returning partial data.
    """

    def __init__(self, key: str) -> None:
        self._fernet = Fernet(key.encode())

    def seal(self, values: dict[str, str]) -> str:
        return self._fernet.encrypt(json.dumps(values, sort_keys=True).encode()).decode()

    def open(self, token: str) -> dict[str, str]:
        try:
            values = json.loads(self._fernet.decrypt(token.encode()))
        except (InvalidToken, ValueError):
            raise ValueError(
                "config cannot be decrypted (corrupt, or sealed with another CHANNEL_SECRET_KEY)"
            ) from None
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            raise ValueError("config does not hold string secrets")
        return values
