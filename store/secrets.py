"""Secret sealing: a record's secrets encrypted at rest with Fernet (AES-128-CBC + HMAC-SHA256)."""

from __future__ import annotations

import json

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

KEY_SETTING = "CHANNEL_SECRET_KEY"


class SecretBox:
    """Seals secrets into Fernet tokens and opens them again; one box seals every record's secrets.

    `keys` is one Fernet key or several, comma-separated (key rotation): the first seals,
    every one of them opens. `open` raises ValueError for a token none of them sealed (a
    changed key or a corrupt record), never returning partial data.
    """

    def __init__(self, keys: str) -> None:
        fernets = [Fernet(key.strip().encode()) for key in keys.split(",") if key.strip()]
        if not fernets:
            raise ValueError(f"{KEY_SETTING} holds no key")
        self._fernet = MultiFernet(fernets)

    def seal(self, values: dict[str, str]) -> str:
        return self.seal_text(json.dumps(values, sort_keys=True))

    def open(self, token: str) -> dict[str, str]:
        try:
            values = json.loads(self.open_text(token))
        except ValueError:
            raise ValueError(f"config cannot be decrypted (corrupt, or sealed with another {KEY_SETTING})") from None
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            raise ValueError("config does not hold string secrets")
        return values

    def seal_text(self, text: str) -> str:
        return self._fernet.encrypt(text.encode()).decode()

    def open_text(self, token: str) -> str:
        """The sealed text; ValueError if no key of this box sealed `token`."""
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except (InvalidToken, UnicodeError):
            raise ValueError(f"secret cannot be decrypted (corrupt, or sealed with another {KEY_SETTING})") from None
