"""Tenants and workspaces over HTTP: tokens, isolation between tenants, validation."""

from __future__ import annotations

import redis

from store import keys
from tests.support import Platform, http


def new_tenant(platform: Platform, name: str) -> dict:
    status, body = platform.post("/admin/tenants", {"name": name})
    assert status == 201, body
    assert set(body) == {"id", "name", "token"}
    return body


def test_tenant_creation_needs_the_admin_token(platform: Platform) -> None:
    assert platform.post("/admin/tenants", {"name": "x"}, token=None)[0] == 401
    assert platform.post("/admin/tenants", {"name": ""})[0] == 422
    assert platform.post("/admin/tenants", {"nom": "x"})[0] == 422


def test_workspace_lifecycle_and_isolation(platform: Platform) -> None:
    a, b = new_tenant(platform, "a"), new_tenant(platform, "b")
    body = {"name": "agent", "url": "http://127.0.0.1:9/", "a2a_version": "0.3"}
    status, ws = platform.post("/workspaces", body, token=a["token"])
    assert status == 201 and ws["a2a_version"] == "0.3" and ws["restart_url"] is None
    url = f"/workspaces/{ws['id']}"
    assert platform.get(url, token=a["token"]) == (200, ws)
    assert platform.get("/workspaces", token=a["token"]) == (200, {"workspaces": [ws], "next_cursor": None})
    # Tenant B sees nothing of A's.
    assert platform.get(url, token=b["token"])[0] == 404
    assert platform.get("/workspaces", token=b["token"]) == (200, {"workspaces": [], "next_cursor": None})
    assert http("DELETE", platform.url + url, token=b["token"])[0] == 404
    assert platform.post(url + "/heartbeat", token=b["token"])[0] == 404
    # Heartbeat sets the liveness key with its TTL.
    assert platform.post(url + "/heartbeat", token=a["token"])[0] == 204
    client = redis.Redis.from_url(platform.settings.redis_url)
    assert 0 < client.pttl(keys.workspace_alive(ws["id"])) <= 90_000
    assert platform.get(url, token=a["token"])[1]["last_heartbeat_at"] is not None
    assert http("DELETE", platform.url + url, token=a["token"])[0] == 204
    assert platform.get(url, token=a["token"])[0] == 404
    assert client.exists(keys.workspace_alive(ws["id"])) == 0


def test_tokens_are_not_stored_in_plain_text(platform: Platform) -> None:
    tenant = new_tenant(platform, "secretive")
    client = redis.Redis.from_url(platform.settings.redis_url)
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        values = [key]
        if kind == b"hash":
            values += client.hvals(key)
        elif kind == b"string":
            values.append(client.get(key))
        assert all(tenant["token"].encode() not in v for v in values if v), key


def test_tenant_routes_need_a_valid_token(platform: Platform) -> None:
    assert platform.get("/workspaces", token=None)[0] == 401
    assert platform.get("/workspaces", token="not-a-token")[0] == 401
    status, body = platform.get("/workspaces", token=platform.settings.admin_token)
    assert status == 401 and "error" in body


def test_bad_workspace_bodies_are_422_naming_the_field(platform: Platform) -> None:
    token = new_tenant(platform, "v")["token"]
    cases = [
        ({"url": "http://127.0.0.1:1/"}, "name"),
        ({"name": "x"}, "url"),
        ({"name": "x", "url": "ftp://host/"}, "url"),
        ({"name": "x", "url": "http://127.0.0.1:1/", "a2a_version": "2.0"}, "a2a_version"),
        ({"name": "x", "url": "http://127.0.0.1:1/", "restart_url": "nope"}, "restart_url"),
        ({"name": "x", "url": "http://127.0.0.1:1/", "owner": "me"}, "owner"),
        ({"name": 5, "url": "http://127.0.0.1:1/"}, "name"),
        ({"name": "\ud800", "url": "http://127.0.0.1:1/"}, "name"),
    ]
    for body, field in cases:
        status, reply = platform.post("/workspaces", body, token=token)
        assert status == 422 and field in reply["error"], (body, reply)
