"""Slack Web API `chat.postMessage` through slack_sdk's async client (base URL SLACK_API_BASE)."""

from __future__ import annotations

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from actors.channels.chat import ChatApiError
from store.channels import Inbound

MESSAGE_MAX = 40_000  # characters; Slack truncates a longer text
REVOKED = {"invalid_auth", "not_authed", "token_revoked", "token_expired", "account_inactive", "no_permission"}


def split(text: str) -> list[str]:
    return [text[i : i + MESSAGE_MAX] for i in range(0, len(text), MESSAGE_MAX)]


async def post_message(
    session: aiohttp.ClientSession, base: str, token: str, inbound: Inbound, text: str, timeout_s: float
) -> None:
    """Post `text` in the message's channel (in its thread, if it was in one); ChatApiError if Slack refuses."""
    client = AsyncWebClient(token=token, base_url=base, session=session, timeout=max(1, int(timeout_s)))
    try:
        await client.chat_postMessage(channel=inbound.chat_id, text=text, thread_ts=inbound.thread or None)
    except SlackApiError as exc:
        response = exc.response
        error = response.get("error") if isinstance(response.data, dict) else None
        retry_after = response.headers.get("Retry-After") if response.status_code == 429 else None
        raise ChatApiError(
            f"chat.postMessage: {error or 'failed'}",
            status=response.status_code,
            revoked=error in REVOKED,
            retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
            transient=response.status_code >= 500 or (response.status_code == 429 and not retry_after),
        ) from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ChatApiError(f"chat.postMessage: {type(exc).__name__}: {exc}", transient=True) from None
