"""Telegram Bot API over HTTPS: getUpdates long polling and sendMessage (base URL TELEGRAM_API_BASE)."""

from __future__ import annotations

from typing import Any

import aiohttp

from actors.channels.chat import ChatApiError
from store.channels import Inbound

MESSAGE_MAX = 4096  # Telegram's limit on one message's text, in UTF-16 code units
UPDATES_PER_POLL = 100


async def call(
    session: aiohttp.ClientSession, base: str, token: str, method: str, body: dict[str, Any], timeout_s: float
) -> Any:
    """One Bot API method; its `result`, or ChatApiError. 401 (revoked), 404 (unknown token) and 403 are `revoked`.

    The token is part of the URL; it is cut out of every error text (errors reach logs,
    `last_error` and events).
    """
    try:
        async with session.post(
            f"{base}/bot{token}/{method}", json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            try:
                reply = await response.json(content_type=None)
            except ValueError:
                reply = None
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        detail = f"{type(exc).__name__}: {exc}".replace(token, "<token>")
        raise ChatApiError(f"{method}: {detail}", transient=True) from None
    if isinstance(reply, dict) and reply.get("ok") is True:
        return reply.get("result")
    reply = reply if isinstance(reply, dict) else {}
    code = reply.get("error_code") if isinstance(reply.get("error_code"), int) else status
    description = f"{method}: {reply.get('description') or 'no description'}".replace(token, "<token>")
    parameters = reply.get("parameters") if isinstance(reply.get("parameters"), dict) else {}
    retry_after = parameters.get("retry_after")
    wait_s = float(retry_after) if isinstance(retry_after, int | float) and retry_after >= 0 else None
    raise ChatApiError(
        description,
        status=code,
        revoked=code in (401, 403, 404),
        retry_after=wait_s if code == 429 else None,
        transient=code >= 500 or code == 409 or (code == 429 and wait_s is None),
    )


async def get_me(session: aiohttp.ClientSession, base: str, token: str, timeout_s: float) -> dict[str, Any]:
    """The bot's own user: a quick check that the token is accepted."""
    result = await call(session, base, token, "getMe", {}, timeout_s)
    if not isinstance(result, dict) or not isinstance(result.get("id"), int):
        raise ChatApiError("getMe: result is not a user", transient=True)
    return result


async def get_updates(
    session: aiohttp.ClientSession, base: str, token: str, offset: int, timeout_s: float
) -> list[dict[str, Any]]:
    """Long-poll for updates at or after `offset` (which confirms the ones before it)."""
    body = {"offset": offset, "timeout": int(timeout_s), "limit": UPDATES_PER_POLL, "allowed_updates": ["message"]}
    result = await call(session, base, token, "getUpdates", body, timeout_s + 10)
    if not isinstance(result, list) or not all(
        isinstance(u, dict) and isinstance(u.get("update_id"), int) for u in result
    ):
        raise ChatApiError("getUpdates: result is not a list of updates", transient=True)
    return result


def message_of(update: dict[str, Any]) -> Inbound | None:
    """The text message an update carries; None for anything else (edits, photos, joins...)."""
    message = update.get("message")
    if not isinstance(message, dict) or not isinstance(message.get("text"), str):
        return None
    chat = message.get("chat") if isinstance(message.get("chat"), dict) else {}
    if not isinstance(chat.get("id"), int) or not isinstance(message.get("message_id"), int):
        return None
    sender = message.get("from") if isinstance(message.get("from"), dict) else {}
    name = sender.get("username") or sender.get("id") or ""
    return Inbound(str(chat["id"]), str(message["message_id"]), message["text"], str(name))


def split(text: str) -> list[str]:
    """The text in messages of at most MESSAGE_MAX UTF-16 code units each (an emoji counts 2)."""
    chunks, start, units = [], 0, 0
    for i, char in enumerate(text):
        width = 2 if ord(char) > 0xFFFF else 1
        if units + width > MESSAGE_MAX:
            chunks.append(text[start:i])
            start, units = i, 0
        units += width
    if start < len(text):
        chunks.append(text[start:])
    return chunks


async def send_message(
    session: aiohttp.ClientSession, base: str, token: str, inbound: Inbound, text: str, timeout_s: float
) -> None:
    """Answer `inbound` in its chat, as a reply to it, with one message (see `split`).

    Only 401/404 on sending mean the token is gone; 403 here is this chat's (the bot was
    blocked or removed), so it is not `revoked`.
    """
    body = {
        "chat_id": int(inbound.chat_id),
        "text": text,
        "reply_parameters": {"message_id": int(inbound.message_id), "allow_sending_without_reply": True},
    }
    try:
        await call(session, base, token, "sendMessage", body, timeout_s)
    except ChatApiError as exc:
        exc.revoked = exc.status in (401, 404)
        raise
