"""Slack Events API webhook: signature verified, acknowledged at once, the message put in the channel's inbox.

The relay itself runs in the channel manager, which reads the inbox; this route only
verifies and records. Verification is Slack's v0 scheme: HMAC-SHA256 with the channel's
signing secret over `v0:<timestamp>:<raw body>`, the timestamp within 5 minutes, compared
in constant time. (slack_sdk's SignatureVerifier does the same but raises on a body that
is not UTF-8 or a signature that is not ASCII, which would be a 500 instead of a 401.) A
retried event (same `event_id`, or the same message seen through another event type) is
acknowledged and not recorded again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any

import redis.exceptions
from starlette.requests import Request
from starlette.responses import JSONResponse

from api.context import context
from api.errors import ApiError, read_body
from store import channels, records

log = logging.getLogger(__name__)

MAX_SKEW_S = 5 * 60
RELAYED_EVENTS = ("message", "app_mention")


async def slack(request: Request) -> JSONResponse:
    state = context(request)
    channel_id = request.path_params["channel_id"]
    raw = await channels.read_one(state.redis, channel_id) if records.is_id(channel_id) else None
    if not raw or raw.get(b"type") != b"slack":
        raise ApiError(404, "no such Slack channel")
    body = await read_body(request)
    try:
        channel = channels.Channel.parse(channel_id, raw, state.secret_box)
    except (ValueError, UnicodeDecodeError) as exc:
        log.warning("slack channel %s cannot verify requests: %s", channel_id, exc)
        raise ApiError(503, "this channel's stored config is unreadable; fix it with PATCH /channels/{id}") from None
    _verify(request, body, channel.secrets["signing_secret"])
    try:
        envelope = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ApiError(400, "body is not JSON") from None
    except RecursionError:
        raise ApiError(400, "body is nested too deep") from None
    if not isinstance(envelope, dict):
        raise ApiError(400, "body is not a JSON object")
    if envelope.get("type") == "url_verification":
        challenge = envelope.get("challenge")
        if not isinstance(challenge, str):
            raise ApiError(400, "url_verification without a challenge")
        return JSONResponse({"challenge": challenge})
    if envelope.get("type") != "event_callback":
        return JSONResponse({"ok": True, "ignored": f"envelope type {envelope.get('type')!r}"})
    event_id, event = envelope.get("event_id"), envelope.get("event")
    if not isinstance(event_id, str) or not event_id or not isinstance(event, dict):
        raise ApiError(400, "event_callback without event_id or event")
    message = _message(event)
    if message is None:
        return JSONResponse({"ok": True, "ignored": "not a user's message"})
    if not channel.enabled:
        return JSONResponse({"ok": True, "ignored": "channel disabled"})
    if not channel.allows(message.chat_id):
        return JSONResponse({"ok": True, "ignored": "chat not allowed"})
    accepted = await channels.accept_once(
        state.redis, channel, message, event_id, max_len=state.events_max_per_tenant, now=time.time()
    )
    if accepted == -1:
        raise ApiError(404, "no such Slack channel")
    if accepted == -2:
        raise ApiError(503, "this channel's inbox is full; retry later")
    if accepted == 1:
        try:
            await channels.wake(state.redis, channel_id)
        except redis.exceptions.RedisError as exc:  # the manager's reconcile finds the message all the same
            log.warning("could not wake the channel manager for %s: %s", channel_id, exc)
    return JSONResponse({"ok": True, "duplicate": accepted == 0})


def _verify(request: Request, body: bytes, signing_secret: str) -> None:
    """401 unless the request carries a fresh, valid v0 signature."""
    timestamp = request.headers.get("x-slack-request-timestamp")
    signature = request.headers.get("x-slack-signature")
    if not timestamp or not signature:
        raise ApiError(401, "missing X-Slack-Request-Timestamp or X-Slack-Signature")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise ApiError(401, "X-Slack-Request-Timestamp is not a unix time")
    if abs(time.time() - int(timestamp)) > MAX_SKEW_S:
        raise ApiError(401, "X-Slack-Request-Timestamp is more than 5 minutes off (a replay?)")
    base = b"v0:" + timestamp.encode() + b":" + body
    expected = "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    if not (signature.isascii() and hmac.compare_digest(expected.encode(), signature.encode())):
        raise ApiError(401, "X-Slack-Signature does not match")


def _message(event: dict[str, Any]) -> channels.Inbound | None:
    """The user's message an event carries; None for bots (our own replies included), edits and the rest."""
    if event.get("type") not in RELAYED_EVENTS or event.get("subtype") or event.get("bot_id"):
        return None
    chat, ts, text, user = event.get("channel"), event.get("ts"), event.get("text"), event.get("user", "")
    if not all(isinstance(v, str) and v for v in (chat, ts)) or not isinstance(text, str) or not isinstance(user, str):
        return None
    thread = event.get("thread_ts")
    return channels.Inbound(chat, ts, text, user, thread if isinstance(thread, str) else "")
