"""Arbitrary JSON to the tenant endpoints and the Slack webhook never yields a 5xx (property-based, real HTTP)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.chat_apis import ChatApis, slack_request
from tests.support import Platform, http

SLACK_SECRET = "fuzz-signing-secret-0123456789"

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.text(st.characters(categories=["Cs", "Cc", "Lo"]), max_size=5),  # lone surrogates, controls
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(
    [
        "workspace_id", "name", "cron", "timezone", "prompt", "enabled", "url", "a2a_version", "restart_url",
        "event", "payload", "type", "config", "allowed_chats", "x",
    ]
)  # fmt: skip
plausible = st.dictionaries(
    field_names,
    json_values
    | st.sampled_from(["* * * * *", "*/5 * * * * *", "UTC", "http://127.0.0.1:1/", "mine", "telegram", "slack"])
    | st.sampled_from(["BUILD_DONE", "SCHEDULE_FIRED", "x"])
    | st.fixed_dictionaries({"bot_token": st.sampled_from(["1:" + "A" * 30, "xoxb-1", "bad token"])}),
)
bodies = json_values | plausible
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def check(platform: Platform, token: str, method: str, path: str, body: object) -> None:
    status, reply = http(method, platform.url + path, raw=json.dumps(body).encode(), token=token)
    assert status < 500, (method, path, body, status, reply)
    if status >= 400:
        assert isinstance(reply, dict) and isinstance(reply.get("error"), str), reply


@FUZZ
@given(body=bodies)
def test_workspace_endpoint_never_5xx(platform: Platform, body: object, apis: ChatApis) -> None:
    token = _tenant(platform, apis)["token"]
    check(platform, token, "POST", "/workspaces", body)


@FUZZ
@given(body=bodies)
def test_schedule_endpoints_never_5xx(platform: Platform, body: object, apis: ChatApis) -> None:
    tenant = _tenant(platform, apis, body)
    check(platform, tenant["token"], "POST", "/schedules", body)
    check(platform, tenant["token"], "PATCH", f"/schedules/{tenant['schedule_id']}", body)


@FUZZ
@given(body=bodies)
def test_event_endpoint_never_5xx(platform: Platform, body: object, apis: ChatApis) -> None:
    tenant = _tenant(platform, apis, body)
    check(platform, tenant["token"], "POST", "/events", body)


@FUZZ
@given(body=bodies)
def test_channel_endpoints_never_5xx(platform: Platform, body: object, apis: ChatApis) -> None:
    tenant = _tenant(platform, apis, body)
    check(platform, tenant["token"], "POST", "/channels", body)
    check(platform, tenant["token"], "PATCH", f"/channels/{tenant['channel_id']}", body)


slack_events = st.fixed_dictionaries(
    {"type": st.sampled_from(["event_callback", "url_verification", "app_rate_limited"]) | json_values},
    optional={
        "event_id": st.text(max_size=12) | json_values,
        "challenge": json_values,
        "event": st.fixed_dictionaries(
            {},
            optional={
                "type": st.sampled_from(["message", "app_mention", "reaction_added"]) | json_values,
                "channel": st.text(max_size=12) | json_values,
                "ts": st.text(max_size=20) | json_values,
                "text": json_values,
                "user": json_values,
                "thread_ts": json_values,
                "subtype": json_values,
                "bot_id": json_values,
            },
        )
        | json_values,
    },
)


@FUZZ
@given(payload=slack_events | json_values.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=64))
def test_slack_webhook_never_5xx_for_signed_requests(platform: Platform, payload: object, apis: ChatApis) -> None:
    """Signed with the channel's secret: what Slack (or someone who stole the secret) can send."""
    tenant = _tenant(platform, apis)
    body, headers = slack_request(SLACK_SECRET, payload)  # type: ignore[arg-type]
    request = urllib.request.Request(
        f"{platform.url}/webhooks/slack/{tenant['slack_id']}", data=body, method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status, reply = response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        status, reply = exc.code, json.loads(exc.read())
    assert status < 500, (payload, status, reply)
    assert isinstance(reply, dict) and (status < 400 or isinstance(reply.get("error"), str)), reply


def test_oversized_bodies_are_413(platform: Platform, apis: ChatApis) -> None:
    tenant = _tenant(platform, apis)
    big = json.dumps({"name": "x" * (1024 * 1024 + 1)}).encode()
    for method, path in (
        ("POST", "/workspaces"),
        ("POST", "/schedules"),
        ("PATCH", f"/schedules/{tenant['schedule_id']}"),
        ("POST", "/events"),
        ("POST", "/channels"),
        ("PATCH", f"/channels/{tenant['channel_id']}"),
    ):
        status, reply = http(method, platform.url + path, raw=big, token=tenant["token"])
        assert status == 413 and "error" in reply


_TENANTS: dict[str, dict] = {}


def _tenant(platform: Platform, apis: ChatApis, body: object = None) -> dict:
    """One tenant per platform, with a workspace, a schedule and channels to PATCH.

    A `body` whose workspace_id is "mine" gets the tenant's workspace id instead.
    """
    cached = _TENANTS.get(platform.url)
    if cached is None:
        tenant = platform.new_tenant("fuzz")
        _, ws = platform.tenant_post(tenant, "/workspaces", {"name": "w", "url": "http://127.0.0.1:1/"})
        body = {"workspace_id": ws["id"], "name": "s", "cron": "0 0 1 1 *", "prompt": "p"}
        _, created = platform.tenant_post(tenant, "/schedules", body)
        apis.bot("7:" + "B" * 30)  # a bot Telegram knows
        telegram = {"workspace_id": ws["id"], "type": "telegram", "config": {"bot_token": "7:" + "B" * 30}}
        status, channel = platform.tenant_post(tenant, "/channels", telegram)
        assert status == 201, channel
        slack = {
            "workspace_id": ws["id"],
            "type": "slack",
            "config": {"bot_token": "xoxb-1", "signing_secret": SLACK_SECRET},
        }
        status, slack_channel = platform.tenant_post(tenant, "/channels", slack)
        assert status == 201, slack_channel
        cached = _TENANTS[platform.url] = {
            **tenant,
            "workspace_id": ws["id"],
            "schedule_id": created["id"],
            "channel_id": channel["id"],
            "slack_id": slack_channel["id"],
        }
    if isinstance(body, dict) and body.get("workspace_id") == "mine":
        body["workspace_id"] = cached["workspace_id"]
    return cached
