"""POST /events: a tenant's agents append to that tenant's stream only, with a validated envelope."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

from store import keys
from tests.support import Platform, http, start_platform


@pytest.fixture(scope="module")
def small_log(ray_session: dict, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """A platform whose event streams are capped at 50 per tenant."""
    deployed = start_platform(redis_url, tmp_path_factory.mktemp("events"), events_max_per_tenant=50)
    yield deployed
    deployed.close()


def test_published_events_land_in_the_tenants_stream_with_the_envelope(platform: Platform) -> None:
    a, b = platform.new_tenant("pub-a"), platform.new_tenant("pub-b")
    _, ws = platform.tenant_post(a, "/workspaces", {"name": "w", "url": "http://127.0.0.1:1/"})
    ids = []
    for n in range(3):
        status, reply = platform.tenant_post(
            a, "/events", {"event": "BUILD_DONE", "workspace_id": ws["id"], "payload": {"n": n}}
        )
        assert status == 202, reply
        ids.append(reply["id"])
    assert ids == sorted(ids, key=lambda i: tuple(int(p) for p in i.split("-")))  # increasing stream ids
    client = redis.Redis.from_url(platform.settings.redis_url)
    entries = client.xrange(keys.events(a["id"]))
    assert [e[0].decode() for e in entries] == ids
    fields = {k.decode(): v.decode() for k, v in entries[0][1].items()}
    assert fields["event"] == "BUILD_DONE" and fields["tenant_id"] == a["id"] and fields["workspace_id"] == ws["id"]
    assert json.loads(fields["payload"]) == {"n": 0} and fields["timestamp"].endswith("Z")
    assert client.xlen(keys.events(b["id"])) == 0
    # B cannot publish against A's workspace.
    status, reply = platform.tenant_post(b, "/events", {"event": "X", "workspace_id": ws["id"], "payload": 1})
    assert status == 422 and "workspace_id" in reply["error"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"event": "lower", "payload": {}}, "event"),
        ({"event": "", "payload": {}}, "event"),
        ({"event": "A" * 65, "payload": {}}, "event"),
        ({"event": "SCHEDULE_FIRED", "payload": {}}, "event"),
        ({"event": "OK"}, "payload"),
        ({"event": "OK", "payload": "x" * (64 * 1024)}, "payload"),
        ({"event": "OK", "payload": {}, "workspace_id": "nope"}, "workspace_id"),
        ({"event": "OK", "payload": {}, "tenant_id": "someone-else"}, "tenant_id"),
    ],
)
def test_bad_events_are_422_naming_the_field(platform: Platform, body: dict, field: str) -> None:
    tenant = platform.new_tenant("bad-events")
    status, reply = platform.tenant_post(tenant, "/events", body)
    assert status == 422 and field in reply["error"], reply


def test_events_need_a_tenant_token_and_json(platform: Platform) -> None:
    assert platform.post("/events", {"event": "OK", "payload": {}}, token=None)[0] == 401
    tenant = platform.new_tenant("raw")
    assert http("POST", platform.url + "/events", raw=b"{nope", token=tenant["token"])[0] == 400
    big = json.dumps({"event": "OK", "payload": "x" * (1024 * 1024)}).encode()
    assert http("POST", platform.url + "/events", raw=big, token=tenant["token"])[0] == 413


def test_the_stream_is_capped(small_log: Platform) -> None:
    tenant = small_log.new_tenant("capped")
    for n in range(300):
        assert small_log.tenant_post(tenant, "/events", {"event": "TICK", "payload": n})[0] == 202
    length = redis.Redis.from_url(small_log.settings.redis_url).xlen(keys.events(tenant["id"]))
    assert 50 <= length < 300  # approximate trimming keeps at least the cap, drops the oldest
    last = redis.Redis.from_url(small_log.settings.redis_url).xrevrange(keys.events(tenant["id"]), count=1)
    assert json.loads(last[0][1][b"payload"]) == 299
