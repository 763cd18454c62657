"""Arbitrary JSON to the tenant endpoints never yields a 5xx (property-based, real HTTP)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import Platform, http

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
    ["workspace_id", "name", "cron", "timezone", "prompt", "enabled", "url", "a2a_version", "restart_url", "x"]
)
plausible = st.dictionaries(
    field_names, json_values | st.sampled_from(["* * * * *", "*/5 * * * * *", "UTC", "http://127.0.0.1:1/", "mine"])
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
def test_workspace_endpoint_never_5xx(platform: Platform, body: object) -> None:
    token = _tenant(platform)["token"]
    check(platform, token, "POST", "/workspaces", body)


@FUZZ
@given(body=bodies)
def test_schedule_endpoints_never_5xx(platform: Platform, body: object) -> None:
    tenant = _tenant(platform)
    if isinstance(body, dict) and body.get("workspace_id") == "mine":
        body["workspace_id"] = tenant["workspace_id"]
    check(platform, tenant["token"], "POST", "/schedules", body)
    check(platform, tenant["token"], "PATCH", f"/schedules/{tenant['schedule_id']}", body)


def test_oversized_bodies_are_413(platform: Platform) -> None:
    tenant = _tenant(platform)
    big = json.dumps({"name": "x" * (1024 * 1024 + 1)}).encode()
    for method, path in (
        ("POST", "/workspaces"),
        ("POST", "/schedules"),
        ("PATCH", f"/schedules/{tenant['schedule_id']}"),
    ):
        status, reply = http(method, platform.url + path, raw=big, token=tenant["token"])
        assert status == 413 and "error" in reply


_TENANTS: dict[str, dict] = {}


def _tenant(platform: Platform) -> dict:
    """One tenant per platform, with a workspace and a schedule to PATCH."""
    cached = _TENANTS.get(platform.url)
    if cached is None:
        tenant = platform.new_tenant("fuzz")
        _, ws = platform.tenant_post(tenant, "/workspaces", {"name": "w", "url": "http://127.0.0.1:1/"})
        body = {"workspace_id": ws["id"], "name": "s", "cron": "0 0 1 1 *", "prompt": "p"}
        _, created = platform.tenant_post(tenant, "/schedules", body)
        cached = _TENANTS[platform.url] = {**tenant, "workspace_id": ws["id"], "schedule_id": created["id"]}
    return cached
