"""The scheduler end to end: real Redis, real Ray, a real a2a-sdk agent on loopback."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from driver import SUBSYSTEMS
from store import keys
from store.embedded import EmbeddedRedis, free_port
from store.records import new_id
from tests.a2a_agent import A2AAgent, BlackHole
from tests.support import Platform, http, start_platform, sync_redis, wait_for


@pytest.fixture(scope="module")
def scheduler_platform(ray_session: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """Its own redis-server: the scheduler's due index is global to a Redis."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("sched-redis"), port=free_port())
    server.start()
    deployed = start_platform(
        server.url, tmp_path_factory.mktemp("sched-data"), subsystems=SUBSYSTEMS, fire_timeout_s=2.0
    )
    yield deployed
    deployed.close()
    server.stop()


def workspace(platform: Platform, tenant: dict, url: str, version: str = "1.0") -> dict:
    status, body = platform.tenant_post(tenant, "/workspaces", {"name": "w", "url": url, "a2a_version": version})
    assert status == 201, body
    return body


def schedule(platform: Platform, tenant: dict, ws: dict, cron: str = "*/2 * * * * *", **extra) -> dict:
    body = {"workspace_id": ws["id"], "name": "s", "cron": cron, "prompt": f"run for {tenant['name']}", **extra}
    status, created = platform.tenant_post(tenant, "/schedules", body)
    assert status == 201, created
    return created


def read(platform: Platform, tenant: dict, schedule_id: str) -> dict:
    status, body = platform.tenant_get(tenant, f"/schedules/{schedule_id}")
    assert status == 200, body
    return body


def test_fires_reach_an_a2a_sdk_agent_in_both_protocol_versions(scheduler_platform: Platform, agent: A2AAgent) -> None:
    platform = scheduler_platform
    tenant = platform.new_tenant("deliveries")
    v1 = schedule(platform, tenant, workspace(platform, tenant, agent.url, "1.0"))
    v03 = schedule(platform, tenant, workspace(platform, tenant, agent.url, "0.3"))
    assert v1["next_run_at"] is not None
    for created in (v1, v03):
        done = wait_for(
            lambda c=created: (lambda s: s if s["run_count"] >= 2 else None)(read(platform, tenant, c["id"])), 30
        )
        assert done["last_status"] == "ok" and done["last_error"] is None
        assert done["next_run_at"] > created["next_run_at"]
        assert done["last_run_at"] is not None
    [first_v1, *_] = agent.bodies_for(f"cron-{v1['id']}-")
    assert first_v1["headers"]["a2a-version"] == "1.0"
    message_id = first_v1["body"]["params"]["message"]["messageId"]
    slot = int(re.fullmatch(rf"cron-{v1['id']}-(\d+)", message_id).group(1))
    assert slot % 2 == 0
    assert first_v1["body"] == {
        "jsonrpc": "2.0",
        "id": first_v1["body"]["id"],
        "method": "SendMessage",
        "params": {
            "message": {"messageId": message_id, "role": "ROLE_USER", "parts": [{"text": "run for deliveries"}]}
        },
    }
    [first_v03, *_] = agent.bodies_for(f"cron-{v03['id']}-")
    assert "a2a-version" not in first_v03["headers"]
    m03 = first_v03["body"]["params"]["message"]["messageId"]
    assert first_v03["body"] == {
        "jsonrpc": "2.0",
        "id": first_v03["body"]["id"],
        "method": "message/send",
        "params": {
            "message": {"messageId": m03, "role": "user", "parts": [{"kind": "text", "text": "run for deliveries"}]}
        },
    }
    handled = {m["messageId"] for m in agent.messages}
    assert message_id in handled and m03 in handled
    events = sync_redis(platform.settings.redis_url).xrange(keys.events(tenant["id"]))
    fired = [fields for _, fields in events if fields[b"event"] == b"SCHEDULE_FIRED"]
    assert len(fired) >= 4
    sub = platform.subsystem("scheduler")
    assert sub["state"] == "RUNNING" and sub["restarts"] == {"exception": 0, "process": 0, "stalled": 0}


def test_poison_schedules_are_quarantined_and_the_others_fire_on_time(
    scheduler_platform: Platform, agent: A2AAgent
) -> None:
    platform = scheduler_platform
    client = sync_redis(platform.settings.redis_url)
    healthy = []
    for n in range(5):
        tenant = platform.new_tenant(f"healthy-{n}")
        ws = workspace(platform, tenant, agent.url)
        healthy += [(tenant, schedule(platform, tenant, ws)) for _ in range(4)]
    victim = platform.new_tenant("victim")
    ws = workspace(platform, victim, agent.url)
    doomed_ws = workspace(platform, victim, agent.url)
    bad = {
        kind: schedule(platform, victim, doomed_ws if kind == "workspace" else ws)
        for kind in ("cron", "timezone", "utf8", "workspace")
    }
    client.hset(keys.schedule(bad["cron"]["id"]), "cron", "every day at noon")
    client.hset(keys.schedule(bad["timezone"]["id"]), "timezone", "Mars/Olympus")
    client.hset(keys.schedule(bad["utf8"]["id"]), "prompt", b"\xff\xfe broken")
    assert http("DELETE", platform.url + f"/workspaces/{doomed_ws['id']}", token=victim["token"])[0] == 204

    before = {s["id"]: read(platform, t, s["id"])["run_count"] for t, s in healthy}
    for kind, created in bad.items():
        got = wait_for(
            lambda c=created: (lambda s: s if s["last_status"] == "quarantined" else None)(
                read(platform, victim, c["id"])
            ),
            30,
            what=f"{kind} quarantined",
        )
        assert got["last_error"], kind
        assert got["consecutive_failures"] >= 3
    assert "UnicodeDecodeError" in read(platform, victim, bad["utf8"]["id"])["last_error"]
    assert "does not exist" in read(platform, victim, bad["workspace"]["id"])["last_error"]
    assert "timezone" in read(platform, victim, bad["timezone"]["id"])["last_error"]
    # Two more slots of every healthy schedule, on time, while the four stay quarantined.
    wait_for(
        lambda: all(read(platform, t, s["id"])["run_count"] >= before[s["id"]] + 2 for t, s in healthy),
        30,
        what="two more fires of every healthy schedule",
    )
    for tenant, created in healthy:
        assert read(platform, tenant, created["id"])["last_status"] == "ok"
    sub = wait_for(lambda: (lambda s: s if s["quarantined"] == 4 else None)(platform.subsystem("scheduler")), 10)
    assert sub["state"] == "RUNNING" and sub["restarts"]["exception"] == 0
    events = client.xrange(keys.events(victim["id"]))
    assert sum(1 for _, f in events if f[b"event"] == b"SCHEDULE_QUARANTINED") == 4

    # A PATCH that fixes the cron releases it.
    status, fixed = http(
        "PATCH", platform.url + f"/schedules/{bad['cron']['id']}", {"cron": "*/2 * * * * *"}, token=victim["token"]
    )
    assert status == 200 and fixed["last_status"] is None and fixed["consecutive_failures"] == 0
    # So do PATCHes that fix the prompt's bytes and point at a workspace that exists.
    for kind, change in (("utf8", {"prompt": "fixed"}), ("workspace", {"workspace_id": ws["id"]})):
        status, fixed = http("PATCH", platform.url + f"/schedules/{bad[kind]['id']}", change, token=victim["token"])
        assert status == 200 and fixed["last_status"] is None, fixed
    for kind in ("cron", "utf8", "workspace"):
        wait_for(lambda k=kind: read(platform, victim, bad[k]["id"])["last_status"] == "ok", 30, what=f"{kind} fires")
    wait_for(lambda: platform.subsystem("scheduler")["quarantined"] == 1, 10, what="count drops")


def slots_of(agent: A2AAgent, schedule_id: str) -> list[int]:
    return sorted(
        int(r["body"]["params"]["message"]["messageId"].rsplit("-", 1)[1])
        for r in agent.bodies_for(f"cron-{schedule_id}-")
    )


def test_dead_workspaces_get_errors_and_delay_nobody(scheduler_platform: Platform, agent: A2AAgent) -> None:
    platform = scheduler_platform
    hole = BlackHole().start()
    try:
        stuck = platform.new_tenant("stuck")
        silent = schedule(platform, stuck, workspace(platform, stuck, hole.url))
        refused = schedule(platform, stuck, workspace(platform, stuck, f"http://127.0.0.1:{free_port()}/"))
        others = platform.new_tenant("others")
        fine = [schedule(platform, others, workspace(platform, others, agent.url)) for _ in range(3)]
        got = wait_for(
            lambda: (lambda s: s if s["last_status"] == "error" else None)(read(platform, stuck, silent["id"])), 30
        )
        assert "no answer within 2 s" in got["last_error"]
        got = wait_for(
            lambda: (lambda s: s if s["last_status"] == "error" else None)(read(platform, stuck, refused["id"])), 30
        )
        assert "Connect" in got["last_error"]
        assert hole.connections >= 1
        # Several more slots while the black hole holds connections open.
        wait_for(lambda: all(len(slots_of(agent, c["id"])) >= 4 for c in fine), 30, what="4 slots of each")
        assert hole.connections >= 1
        for created in fine:
            slots = slots_of(agent, created["id"])
            # Every 2-second slot between the first and the last was delivered: none skipped.
            assert slots == list(range(slots[0], slots[-1] + 1, 2)), slots
            assert read(platform, others, created["id"])["last_status"] == "ok"
        for created in (silent, refused):  # errors do not quarantine: the workspace may come back
            assert read(platform, stuck, created["id"])["last_status"] in ("error", None)
    finally:
        hole.stop()


def test_schedules_are_isolated_between_tenants(scheduler_platform: Platform, agent: A2AAgent) -> None:
    platform = scheduler_platform
    a, b = platform.new_tenant("iso-a"), platform.new_tenant("iso-b")
    ws_a = workspace(platform, a, agent.url)
    mine = schedule(platform, a, ws_a, cron="0 0 1 1 *")
    path = f"/schedules/{mine['id']}"
    assert platform.tenant_get(b, path)[0] == 404
    assert http("PATCH", platform.url + path, {"name": "taken"}, token=b["token"])[0] == 404
    assert http("DELETE", platform.url + path, token=b["token"])[0] == 404
    assert platform.tenant_get(b, "/schedules") == (200, {"schedules": [], "next_cursor": None})
    body = {"workspace_id": ws_a["id"], "name": "x", "cron": "* * * * *", "prompt": "p"}
    status, reply = platform.tenant_post(b, "/schedules", body)
    assert status == 422 and "workspace_id" in reply["error"]
    assert read(platform, a, mine["id"])["name"] == "s"
    assert http("DELETE", platform.url + path, token=a["token"])[0] == 204
    assert platform.tenant_get(a, path)[0] == 404


@pytest.mark.parametrize(
    "change, field",
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * *"}, "cron"),
        ({"timezone": "Nowhere/Else"}, "timezone"),
        ({"workspace_id": "0" * 32}, "workspace_id"),
        ({"enabled": "yes"}, "enabled"),
        ({"prompt": ""}, "prompt"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_schedule_fields_are_422_naming_the_field(
    scheduler_platform: Platform, agent: A2AAgent, change: dict, field: str
) -> None:
    platform = scheduler_platform
    tenant = platform.new_tenant("validation")
    ws = workspace(platform, tenant, agent.url)
    body = {"workspace_id": ws["id"], "name": "n", "cron": "0 0 1 1 *", "prompt": "p", **change}
    status, reply = platform.tenant_post(tenant, "/schedules", body)
    assert status == 422 and field in reply["error"], reply
    created = schedule(platform, tenant, ws, cron="0 0 1 1 *")
    status, reply = http("PATCH", platform.url + f"/schedules/{created['id']}", change, token=tenant["token"])
    assert status == 422 and field in reply["error"], reply


def test_a_key_of_the_wrong_type_is_one_items_failure(scheduler_platform: Platform, agent: A2AAgent) -> None:
    platform = scheduler_platform
    client = sync_redis(platform.settings.redis_url)
    tenant = platform.new_tenant("wrongtype")
    fine = schedule(platform, tenant, workspace(platform, tenant, agent.url))
    bogus = new_id(keys.shard_of(tenant["id"]))  # an id of the tenant's, as every one of its records has
    client.set(keys.schedule(bogus), "not a hash")
    due = keys.tenant_due(tenant["id"])
    client.zadd(due, {bogus: int(time.time())})
    client.zadd(keys.schedules_due_tenants(keys.shard_of(tenant["id"])), {tenant["id"]: int(time.time())})
    before = platform.subsystem("scheduler")["quarantined"]
    wait_for(lambda: client.zscore(due, bogus) is None, 30, what="bogus entry quarantined")
    assert client.sismember(keys.schedules_quarantined(keys.shard_of(bogus)), bogus) == 0  # no record to mark
    runs = read(platform, tenant, fine["id"])["run_count"]
    wait_for(lambda: read(platform, tenant, fine["id"])["run_count"] > runs + 1, 30, what="others keep firing")
    sub = platform.subsystem("scheduler")
    assert sub["state"] == "RUNNING" and sub["restarts"]["exception"] == 0
    assert sub["quarantined"] == before
    client.delete(keys.schedule(bogus))
