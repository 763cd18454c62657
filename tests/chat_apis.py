"""Loopback stand-ins for Telegram's Bot API and Slack's Web API, speaking their wire formats.

Telegram (https://core.telegram.org/bots/api): `POST /bot<token>/getUpdates` long-polls (it
holds the request until an update arrives or `timeout` seconds pass; `offset` confirms the
updates before it; a second concurrent poll ends the first with 409) and
`POST /bot<token>/sendMessage`, and `getMe`. Errors are `{"ok": false, "error_code", "description",
"parameters": {"retry_after"}}` with the same HTTP status. Slack
(https://docs.slack.dev/reference/methods/chat.postMessage): `POST /api/chat.postMessage`
with a bearer token answers `{"ok": true, "channel", "ts"}` or `{"ok": false, "error"}`.
Also: `slack_request`, which signs an Events API request the way Slack does (v0 HMAC-SHA256).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from actors.channels.manager import ChannelManager
from store.embedded import free_port
from tests.support import Platform, start_platform


@dataclass
class Bot:
    token: str
    updates: list[dict[str, Any]] = field(default_factory=list)
    next_update_id: int = 1000
    next_message_id: int = 1
    revoked: bool = False
    retry_after: int | None = None  # the next getUpdates answers 429 with this retry_after
    sent: list[dict[str, Any]] = field(default_factory=list)
    polls: list[tuple[float, int]] = field(default_factory=list)  # (when, offset)
    rate_limited_at: list[float] = field(default_factory=list)
    arrived: dict[int, float] = field(default_factory=dict)  # message id -> when the user sent it
    failing_polls: int = 0  # the next n getUpdates answer 502
    reply_retry_after: int | None = None  # the next sendMessage answers 429 with this retry_after
    replies_limited_at: list[float] = field(default_factory=list)
    generation: int = 0
    conflicts: list[float] = field(default_factory=list)  # when a poll was ended by a second poller's (409)
    wakeup: asyncio.Event | None = None


def _error(code: int, description: str, **parameters: Any) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=code)


class ChatApis:
    """Both platforms on one loopback port, in a thread; every method here is thread-safe."""

    def __init__(self) -> None:
        self.port = free_port()
        self.telegram_base = f"http://127.0.0.1:{self.port}"
        self.slack_base = f"http://127.0.0.1:{self.port}/api"
        self.lock = threading.Lock()
        self.bots: dict[str, Bot] = {}
        self.slack_posts: list[dict[str, Any]] = []
        self.slack_revoked: set[str] = set()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        if not started.wait(10):
            raise RuntimeError("the Bot API and Slack stand-in did not start")

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/bot{token}/getMe", self._get_me)
        app.router.add_post("/bot{token}/getUpdates", self._get_updates)
        app.router.add_post("/bot{token}/sendMessage", self._send_message)
        app.router.add_post("/api/chat.postMessage", self._post_message)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        started.set()
        self.loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)

    # -- driving the fake --------------------------------------------------------------------

    def bot(self, token: str) -> Bot:
        with self.lock:
            return self.bots.setdefault(token, Bot(token))

    def send(self, token: str, chat_id: int, text: str) -> int:
        """A user writes `text` in chat `chat_id` to the bot; returns the message id."""
        bot = self.bot(token)
        with self.lock:
            message_id = bot.next_message_id
            bot.next_message_id += 1
            message = {
                "message_id": message_id,
                "from": {"id": chat_id, "is_bot": False, "first_name": "user", "username": f"user{chat_id}"},
                "chat": {"id": chat_id, "type": "private"},
                "date": int(time.time()),
                "text": text,
            }
            bot.updates.append({"update_id": bot.next_update_id, "message": message})
            bot.arrived[message_id] = time.time()
            bot.next_update_id += 1
        self.loop.call_soon_threadsafe(self._wake, bot)
        return message_id

    def send_other(self, token: str, chat_id: int) -> None:
        """An update that carries no text message (an edited message): only the offset moves past it."""
        bot = self.bot(token)
        with self.lock:
            edited = {"message_id": 1, "chat": {"id": chat_id, "type": "private"}, "date": 0, "text": "edit"}
            bot.updates.append({"update_id": bot.next_update_id, "edited_message": edited})
            bot.next_update_id += 1
        self.loop.call_soon_threadsafe(self._wake, bot)

    def revoke(self, token: str) -> None:
        self.bot(token).revoked = True
        self.loop.call_soon_threadsafe(self._wake, self.bot(token))

    def rotate(self, token: str, new_token: str) -> None:
        """The bot's owner revokes `token` and gets `new_token` for the same bot (its updates wait)."""
        with self.lock:
            bot = self.bots.pop(token)
            bot.token, bot.revoked = new_token, False
            self.bots[new_token] = bot

    def rate_limit(self, token: str, retry_after: int) -> None:
        self.bot(token).retry_after = retry_after

    def rate_limit_replies(self, token: str, retry_after: int) -> None:
        self.bot(token).reply_retry_after = retry_after

    def fail_polls(self, token: str, count: int) -> None:
        self.bot(token).failing_polls = count

    def replies(self, token: str, chat_id: int | None = None) -> list[dict[str, Any]]:
        bot = self.bot(token)
        with self.lock:
            return [dict(s) for s in bot.sent if chat_id is None or s["chat_id"] == chat_id]

    def pending(self, token: str) -> int:
        """Updates not yet confirmed by an offset."""
        bot = self.bot(token)
        with self.lock:
            return len(bot.updates)

    def conflicts(self) -> dict[str, int]:
        """Each bot's polls ended by 409 because a second poller asked while it was open."""
        with self.lock:
            return {token: len(bot.conflicts) for token, bot in self.bots.items() if bot.conflicts}

    def posts(self, channel: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(p) for p in self.slack_posts if channel is None or p["channel"] == channel]

    # -- Telegram --------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> Bot | None:
        """The bot whose token is in the path, unless it is unknown or revoked."""
        bot = self.bots.get(request.match_info["token"])
        return None if bot is None or bot.revoked else bot

    def _wake(self, bot: Bot) -> None:
        if bot.wakeup is not None:
            bot.wakeup.set()

    async def _get_me(self, request: web.Request) -> web.Response:
        bot = self._authorized(request)
        if bot is None:
            return _error(401, "Unauthorized")
        bot_id = int(bot.token.partition(":")[0])
        return web.json_response({"ok": True, "result": {"id": bot_id, "is_bot": True, "username": f"bot{bot_id}"}})

    async def _get_updates(self, request: web.Request) -> web.Response:
        bot = self._authorized(request)
        if bot is None:
            return _error(401, "Unauthorized")
        body = await request.json()
        offset, timeout, limit = int(body.get("offset", 0)), float(body.get("timeout", 0)), int(body.get("limit", 100))
        if bot.retry_after is not None:
            retry_after, bot.retry_after = bot.retry_after, None
            bot.rate_limited_at.append(time.time())
            return _error(429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after)
        if bot.failing_polls:
            bot.failing_polls -= 1
            return _error(502, "Bad Gateway")
        bot.generation += 1
        generation = bot.generation
        bot.wakeup = bot.wakeup or asyncio.Event()
        with self.lock:
            bot.polls.append((time.time(), offset))
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                bot.updates = [u for u in bot.updates if u["update_id"] >= offset]  # confirmed by the offset
                ready = bot.updates[:limit]
            if ready or time.monotonic() >= deadline:
                return web.json_response({"ok": True, "result": ready})
            bot.wakeup.clear()
            try:
                await asyncio.wait_for(bot.wakeup.wait(), deadline - time.monotonic())
            except TimeoutError:
                pass
            if bot.revoked:
                return _error(401, "Unauthorized")
            if bot.generation != generation:
                # A poll whose client has gone (a poller stopped) is no concurrent poller.
                if request.transport is not None and not request.transport.is_closing():
                    with self.lock:
                        bot.conflicts.append(time.time())
                return _error(409, "Conflict: terminated by other getUpdates request")

    async def _send_message(self, request: web.Request) -> web.Response:
        bot = self._authorized(request)
        if bot is None:
            return _error(401, "Unauthorized")
        body = await request.json()
        text, chat_id = body.get("text"), body.get("chat_id")
        if not isinstance(chat_id, int):
            return _error(400, "Bad Request: chat not found")
        if not isinstance(text, str) or not text.strip() or len(text) > 4096:
            return _error(400, "Bad Request: message text is empty or too long")
        if bot.reply_retry_after is not None:
            retry_after, bot.reply_retry_after = bot.reply_retry_after, None
            bot.replies_limited_at.append(time.time())
            return _error(429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after)
        reply_to = (body.get("reply_parameters") or {}).get("message_id")
        with self.lock:
            bot.sent.append({"chat_id": chat_id, "text": text, "reply_to": reply_to, "at": time.time()})
            message_id = bot.next_message_id
            bot.next_message_id += 1
        message = {"message_id": message_id, "chat": {"id": chat_id, "type": "private"}, "date": 0, "text": text}
        return web.json_response({"ok": True, "result": message})

    # -- Slack -----------------------------------------------------------------------------

    async def _post_message(self, request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not token:
            return web.json_response({"ok": False, "error": "not_authed"})
        if token in self.slack_revoked:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        raw = await request.read()
        if request.content_type == "application/json":
            body = json.loads(raw)
        else:
            body = dict((await request.post()).items())
        if not body.get("channel") or not body.get("text"):
            return web.json_response({"ok": False, "error": "no_text" if body.get("channel") else "channel_not_found"})
        ts = f"{time.time():.6f}"
        with self.lock:
            post = {
                "token": token,
                "channel": body["channel"],
                "text": body["text"],
                "thread_ts": body.get("thread_ts"),
            }
            self.slack_posts.append({**post, "at": time.time()})
        return web.json_response({"ok": True, "channel": body["channel"], "ts": ts, "message": {"text": body["text"]}})


def slack_request(
    signing_secret: str, payload: dict[str, Any] | bytes, timestamp: int | None = None
) -> tuple[bytes, dict]:
    """An Events API request body (a payload as JSON, or raw bytes) and its headers, signed as Slack signs them (v0)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(signing_secret.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()
    headers = {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}", "Content-Type": "application/json"}
    return body, headers


def start_channel_platform(redis_url: str, data_dir: Path, apis: ChatApis, **overrides: Any) -> Platform:
    """Health, API and the channel manager, pointed at `apis` for Telegram and Slack."""
    return start_platform(
        redis_url,
        data_dir,
        subsystems=[ChannelManager],
        telegram_api_base=apis.telegram_base,
        slack_api_base=apis.slack_base,
        **overrides,
    )
