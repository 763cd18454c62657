"""Metrics of the work: after fires, events, a WebSocket client, a relayed chat message and a
workspace going offline, a scrape of Ray's metrics port has every metric, and the dashboard
and alert rules name only what it has."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator

import pytest
import redis
from websockets.sync.client import connect

from driver import SUBSYSTEMS
from store import keys
from tests.a2a_agent import A2AAgent
from tests.chat_apis import ChatApis
from tests.support import Platform, start_platform, wait_for
from tests.test_alerts import EXPORTED, dashboard_expressions, metric_names, rule_expressions
from tests.ws_client import ws_url

SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = []
    for line in text.splitlines():
        if match := SERIES.match(line):
            name, labels, value = match.groups()
            found.append((name, dict(LABEL.findall(labels or "")), float(value)))
    return found


def total(series: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """The sum over every series of `name` carrying `labels` (one per Ray worker)."""
    return sum(v for n, got, v in series if n == name and all(got.get(k) == w for k, w in labels.items()))


@pytest.fixture(scope="module")
def worked(
    ray_session: dict, redis_url: str, apis: ChatApis, agent: A2AAgent, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    deployed = start_platform(
        redis_url,
        tmp_path_factory.mktemp("metrics-data"),
        subsystems=SUBSYSTEMS,
        telegram_api_base=apis.telegram_base,
        slack_api_base=apis.slack_base,
        workspace_ttl_s=2.0,
    )
    yield deployed
    deployed.close()


def test_a_scrape_has_every_work_metric_and_everything_the_rules_and_dashboard_read(
    worked: Platform, ray_session: dict, apis: ChatApis, agent: A2AAgent
) -> None:
    platform, port = worked, ray_session["metrics_port"]
    # Other modules' platforms are gone; counters are compared with what they held before this work.
    before = scrape(port)
    counters = {
        "ray_scheduler_fires_total": {"status": "ok"},
        "ray_scheduler_fire_lateness_seconds_count": {},
        "ray_events_appended_total": {},
        "ray_events_delivered_total": {},
        "ray_channel_messages_total": {"direction": "in"},
        "ray_workspace_offline_transitions_total": {},
    }
    start = {name: total(before, name, **labels) for name, labels in counters.items()}

    tenant = platform.new_tenant("metered")
    status, ws = platform.tenant_post(tenant, "/workspaces", {"name": "w", "url": agent.url})
    assert status == 201, ws
    # A workspace that beats once and goes quiet: offline after its 2 s TTL.
    assert platform.post(f"/workspaces/{ws['id']}/heartbeat", token=tenant["token"])[0] == 204
    body = {"workspace_id": ws["id"], "name": "s", "cron": "* * * * * *", "prompt": "tick"}
    assert platform.tenant_post(tenant, "/schedules", body)[0] == 201
    status, bad = platform.tenant_post(tenant, "/schedules", body)
    assert status == 201, bad
    redis.Redis.from_url(platform.settings.redis_url).hset(keys.schedule(bad["id"]), "cron", "not a cron")
    token = "777001:AAH" + "m" * 30
    apis.bot(token)
    channel = {"workspace_id": ws["id"], "type": "telegram", "config": {"bot_token": token}}
    assert platform.tenant_post(tenant, "/channels", channel)[0] == 201

    with connect(ws_url(platform.url), additional_headers={"Authorization": f"Bearer {tenant['token']}"}) as socket:
        assert platform.tenant_post(tenant, "/events", {"event": "METERED", "payload": {"n": 1}})[0] == 202
        wait_for(lambda: json.loads(socket.recv(timeout=5))["event"] == "METERED", 30, what="the event received")
        chat_message = apis.send(token, 42, "hello")
        wait_for(
            lambda: any(r["reply_to"] == chat_message for r in apis.replies(token, 42)), 60, what="the chat answered"
        )

        def complete() -> list | None:
            got = scrape(port)
            grown = all(total(got, name, **labels) > start[name] for name, labels in counters.items())
            out = total(got, "ray_channel_messages_total", direction="out") > total(
                before, "ray_channel_messages_total", direction="out"
            )
            clients = total(got, "ray_websocket_clients", subsystem="api") >= 1
            held = total(got, "ray_subsystem_quarantined_items", subsystem="scheduler") >= 1
            return got if grown and out and clients and held else None

        series = wait_for(complete, 90, interval_s=1, what="every work metric moved")

    names = {name for name, _, _ in series}
    assert EXPORTED <= names, sorted(EXPORTED - names)
    for name in ("ray_broadcaster_lag_events", "ray_broadcaster_lag_seconds"):
        assert any(n == name and labels.get("subsystem") == "broadcaster" for n, labels, _ in series), name
    reasons = {labels.get("reason") for n, labels, _ in series if n == "ray_subsystem_restarts"}
    assert reasons >= {"exception", "process", "stalled"}
    # Labels are bounded: no tenant, workspace or schedule id in any of them.
    for name, labels, _ in series:
        if name in EXPORTED:
            assert tenant["id"] not in json.dumps(labels) and ws["id"] not in json.dumps(labels), (name, labels)
    for expr in rule_expressions() + dashboard_expressions():
        assert metric_names(expr) <= names, (expr, sorted(metric_names(expr) - names))
