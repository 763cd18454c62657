"""Slack channels: signed Events API webhooks relayed to the workspace and answered with chat.postMessage."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from actors.channels.manager import NO_ANSWER
from store import keys
from tests.a2a_agent import A2AAgent
from tests.chat_apis import ChatApis, slack_request, start_channel_platform
from tests.support import Platform, wait_for

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


@pytest.fixture(scope="module")
def agent() -> Iterator[A2AAgent]:
    started = A2AAgent(hold_prefix="hold").start()
    yield started
    started.released.set()
    started.stop()


@pytest.fixture(scope="module")
def relay(
    ray_session: dict, redis_url: str, apis: ChatApis, agent: A2AAgent, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    """(After `agent`, so that it drains before the agent stops.)"""
    deployed = start_channel_platform(redis_url, tmp_path_factory.mktemp("slack"), apis)
    yield deployed
    deployed.close()


@pytest.fixture
def slack(relay: Platform, agent: A2AAgent) -> dict[str, Any]:
    """A tenant, a workspace served by `agent`, and a Slack channel bound to it."""
    tenant = relay.new_tenant("slack")
    status, workspace = relay.tenant_post(tenant, "/workspaces", {"name": "agent", "url": agent.url})
    assert status == 201, workspace
    token = f"xoxb-{uuid.uuid4().hex}"
    config = {"bot_token": token, "signing_secret": SECRET}
    status, channel = relay.tenant_post(
        tenant, "/channels", {"workspace_id": workspace["id"], "type": "slack", "config": config}
    )
    assert status == 201, channel
    wait_for(lambda: relay.tenant_get(tenant, f"/channels/{channel['id']}")[1]["status"] == "running", 30)
    return {"tenant": tenant, "channel": channel, "token": token, "url": f"{relay.url}/webhooks/slack/{channel['id']}"}


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def message_event(text: str, *, chat: str = "C0001", ts: str | None = None, **event: Any) -> dict[str, Any]:
    ts = ts or f"{time.time():.6f}"
    return {
        "type": "event_callback",
        "team_id": "T0001",
        "event_id": f"Ev{uuid.uuid4().hex[:10].upper()}",
        "event_time": int(time.time()),
        "event": {"type": "message", "channel": chat, "user": "U0001", "text": text, "ts": ts, **event},
    }


def asked(agent: A2AAgent, channel_id: str) -> list[str]:
    bodies = agent.bodies_for(f"channel-slack-{channel_id}:")
    return [b["body"]["params"]["message"]["parts"][0]["text"] for b in bodies]


def test_url_verification_is_answered(slack: dict[str, Any]) -> None:
    body, headers = slack_request(SECRET, {"type": "url_verification", "token": "x", "challenge": "3eZbrw1aB"})
    assert post(slack["url"], body, headers) == (200, {"challenge": "3eZbrw1aB"})


def test_a_signed_event_is_relayed_and_answered_with_chat_post_message(
    slack: dict[str, Any], apis: ChatApis, agent: A2AAgent
) -> None:
    top = message_event("hello from slack", chat="C0101")
    threaded = message_event("in a thread", chat="C0101", thread_ts="1700000000.000100")
    for payload in (top, threaded):
        assert post(slack["url"], *slack_request(SECRET, payload)) == (200, {"ok": True, "duplicate": False})
    wait_for(lambda: len(apis.posts("C0101")) == 2, 30, what="two replies posted")
    posts = {p["text"]: p for p in apis.posts("C0101")}
    assert posts["echo: hello from slack"]["thread_ts"] is None
    assert posts["echo: in a thread"]["thread_ts"] == "1700000000.000100"
    assert all(p["token"] == slack["token"] for p in posts.values())
    message_id = f"channel-slack-{slack['channel']['id']}:C0101:{top['event']['ts']}"
    assert [b["body"]["params"]["message"]["messageId"] for b in agent.bodies_for(message_id)] == [message_id]


def test_forged_stale_or_unsigned_requests_get_401_and_nothing_is_relayed(
    slack: dict[str, Any], apis: ChatApis, agent: A2AAgent
) -> None:
    forged_body, forged = slack_request("not-the-secret", message_event("forged", chat="C0202"))
    stale_body, stale = slack_request(SECRET, message_event("replayed", chat="C0202"), int(time.time()) - 6 * 60)
    bare_body, _ = slack_request(SECRET, message_event("unsigned", chat="C0202"))
    tampered_body, tampered = slack_request(SECRET, message_event("original", chat="C0202"))
    tampered_body = tampered_body.replace(b"original", b"tampered")
    for body, headers in (
        (forged_body, forged),
        (stale_body, stale),
        (bare_body, {"Content-Type": "application/json"}),
        (tampered_body, tampered),
        (bare_body, {"X-Slack-Request-Timestamp": "soon", "X-Slack-Signature": "v0=00"}),
        (bare_body, {"X-Slack-Request-Timestamp": "\u00b2", "X-Slack-Signature": "v0=00"}),
        (bare_body, {**forged, "X-Slack-Signature": "v0=\u00e9"}),
        (b"\xff\xfe not UTF-8", forged),
    ):
        status, reply = post(slack["url"], body, headers)
        assert status == 401 and reply["error"], reply
    # A valid event after them is relayed; none of the refused ones ever was.
    assert post(slack["url"], *slack_request(SECRET, message_event("genuine", chat="C0202")))[0] == 200
    wait_for(lambda: apis.posts("C0202"), 30, what="the genuine event answered")
    assert asked(agent, slack["channel"]["id"]) == ["genuine"]
    assert [p["text"] for p in apis.posts("C0202")] == ["echo: genuine"]


def test_a_retried_event_is_handled_once(slack: dict[str, Any], apis: ChatApis, agent: A2AAgent) -> None:
    payload = message_event("sent once, delivered three times", chat="C0303")
    replies = []
    for retry in range(3):
        body, headers = slack_request(SECRET, payload)
        if retry:
            headers |= {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"}
        replies.append(post(slack["url"], body, headers))
    # The same message seen through another event type (app_mention) is the same message too.
    mention = {**payload, "event_id": "EvOTHER0001", "event": {**payload["event"], "type": "app_mention"}}
    replies.append(post(slack["url"], *slack_request(SECRET, mention)))
    assert [r[1]["duplicate"] for r in replies] == [False, True, True, True]
    wait_for(lambda: apis.posts("C0303"), 30, what="answered")
    follow = message_event("next", chat="C0303")
    post(slack["url"], *slack_request(SECRET, follow))
    wait_for(lambda: len(apis.posts("C0303")) == 2, 30, what="the next message answered")
    assert asked(agent, slack["channel"]["id"]) == ["sent once, delivered three times", "next"]


def test_the_webhook_acknowledges_before_the_workspace_answers(
    slack: dict[str, Any], apis: ChatApis, agent: A2AAgent
) -> None:
    status, _ = post(slack["url"], *slack_request(SECRET, message_event("hold the answer", chat="C0404")))
    assert status == 200
    wait_for(lambda: "hold the answer" in asked(agent, slack["channel"]["id"]), 30, what="relayed")
    assert apis.posts("C0404") == []  # acknowledged while the workspace has not answered
    agent.released.set()
    wait_for(lambda: apis.posts("C0404"), 30, what="answered once released")


def test_bot_messages_and_bad_requests_are_not_relayed(slack: dict[str, Any], relay: Platform) -> None:
    bot_echo = message_event("echo: our own reply", chat="C0505", bot_id="B0001")
    assert post(slack["url"], *slack_request(SECRET, bot_echo)) == (
        200,
        {"ok": True, "ignored": "not a user's message"},
    )
    status, reply = post(slack["url"], *slack_request(SECRET, b"not json"))
    assert status == 400, reply
    unknown = f"{relay.url}/webhooks/slack/{uuid.uuid4().hex}"
    assert post(unknown, *slack_request(SECRET, message_event("to nobody")))[0] == 404
    status, record = relay.tenant_get(slack["tenant"], f"/channels/{slack['channel']['id']}")
    assert record["message_count"] == 0


def test_a_revoked_slack_token_quarantines_and_the_message_waits_for_the_new_one(
    slack: dict[str, Any], relay: Platform, apis: ChatApis
) -> None:
    apis.slack_revoked.add(slack["token"])
    post(slack["url"], *slack_request(SECRET, message_event("while revoked", chat="C0606")))
    channel_path = f"/channels/{slack['channel']['id']}"
    wait_for(lambda: relay.tenant_get(slack["tenant"], channel_path)[1]["status"] == "quarantined", 30)
    assert "invalid_auth" in relay.tenant_get(slack["tenant"], channel_path)[1]["last_error"]
    new_token = f"xoxb-{uuid.uuid4().hex}"
    config = {"bot_token": new_token, "signing_secret": SECRET}
    assert relay.tenant_patch(slack["tenant"], channel_path, {"config": config})[0] == 200
    wait_for(lambda: apis.posts("C0606"), 30, what="the waiting message answered with the new token")
    assert [(p["token"], p["text"]) for p in apis.posts("C0606")] == [(new_token, "echo: while revoked")]


def test_a_workspace_that_cannot_answer_gets_the_chat_a_plain_notice_and_the_event_the_detail(
    slack: dict[str, Any], relay: Platform, apis: ChatApis
) -> None:
    tenant = slack["tenant"]
    status, dead = relay.tenant_post(tenant, "/workspaces", {"name": "down", "url": "http://127.0.0.1:1/"})
    assert status == 201
    channel_path = f"/channels/{slack['channel']['id']}"
    assert relay.tenant_patch(tenant, channel_path, {"workspace_id": dead["id"]})[0] == 200
    wait_for(lambda: relay.tenant_get(tenant, channel_path)[1]["status"] == "running", 30)
    post(slack["url"], *slack_request(SECRET, message_event("anyone there?", chat="C0707")))
    wait_for(lambda: apis.posts("C0707"), 30, what="a notice posted")
    assert [p["text"] for p in apis.posts("C0707")] == [NO_ANSWER]  # no address, no error text
    client = redis.Redis.from_url(relay.settings.redis_url)
    out = [
        json.loads(f[b"payload"])
        for _, f in client.xrange(keys.events(tenant["id"]))
        if f[b"event"] == b"CHANNEL_MESSAGE" and json.loads(f[b"payload"])["direction"] == "out"
    ]
    assert out[-1]["status"] == "error" and "127.0.0.1:1" in out[-1]["error"]
