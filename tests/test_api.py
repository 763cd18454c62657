"""HTTP contract: probes, admin auth, body limits, validation, JSON errors."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from http.client import HTTPConnection

import pytest

from actors.runtime.handles import API_ACTOR, NamedActor
from tests.support import ADMIN_TOKEN, Platform, http, start_platform
from tests.ws_client import refused


def test_livez(platform: Platform) -> None:
    assert platform.get("/livez", token=None) == (200, {"status": "ok"})


def test_a_keep_alive_connection_is_served_with_nodelay(platform: Platform) -> None:
    """Checked on the server's side: without TCP_NODELAY, Nagle's algorithm holds each
    response's second segment until the client's delayed ACK, 40 ms per keep-alive request."""
    connection = HTTPConnection("127.0.0.1", platform.settings.api_port, timeout=5)
    try:
        for _ in range(3):
            connection.request("GET", "/livez")
            response = connection.getresponse()
            assert (response.status, response.read()) == (200, b'{"status":"ok"}')
        assert connection.sock is not None  # still the one connection
        port = connection.sock.getsockname()[1]
        api = NamedActor(API_ACTOR, platform.settings.ray_namespace)
        served = [c for c in api.call_sync("connections", timeout_s=10) if c["peer"][1] == port]
    finally:
        connection.close()
    settings = platform.settings
    user_timeout_ms = int((settings.ws_ping_interval_s + settings.ws_ping_timeout_s) * 1000)
    assert served == [{"peer": ["127.0.0.1", port], "nodelay": 1, "user_timeout_ms": user_timeout_ms}]


def test_readyz_when_every_subsystem_is_healthy(platform: Platform) -> None:
    assert platform.get("/readyz", token=None) == (200, {"status": "ready"})


def test_liveness_lists_expected_subsystems_with_the_contract_fields(platform: Platform) -> None:
    body = platform.liveness()
    assert body["healthy"] is True
    assert body["checked_at"].endswith("Z")
    api = body["subsystems"]["api"]
    for key in (
        "state",
        "healthy",
        "last_tick_at",
        "seconds_ago",
        "interval_s",
        "stale_after_s",
        "restarts",
        "last_error",
        "last_error_at",
        "next_retry_at",
        "pid",
        "node",
        "quarantined",
    ):
        assert key in api, key
    assert api["state"] == "RUNNING" and isinstance(api["seconds_ago"], float)
    assert set(api["restarts"]) == {"exception", "process", "stalled"}


@pytest.mark.parametrize(
    "token",
    [None, "wrong-token-wrong-token-wrong", ADMIN_TOKEN[:-1], ADMIN_TOKEN + "x", ""],
)
def test_admin_routes_need_the_admin_token(platform: Platform, token: str | None) -> None:
    status, body = platform.get("/admin/liveness", token=token)
    assert status == 401 and "error" in body
    status, body = platform.post("/admin/faults", {"subsystem": "api", "fault": "raise"}, token=token)
    assert status == 401 and "error" in body


def test_other_auth_schemes_are_refused(platform: Platform) -> None:
    with socket.create_connection(("127.0.0.1", platform.settings.api_port), timeout=5) as sock:
        sock.sendall(f"GET /admin/liveness HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {ADMIN_TOKEN}\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 401")


def test_body_over_one_mib_is_413(platform: Platform) -> None:
    big = json.dumps({"subsystem": "api", "fault": "raise", "pad": "x" * (1024 * 1024)}).encode()
    status, body = platform.post("/admin/faults", raw=big)
    assert status == 413 and "larger than" in body["error"]


def test_invalid_json_is_400(platform: Platform) -> None:
    status, body = platform.post("/admin/faults", raw=b"{not json")
    assert status == 400 and "JSON" in body["error"]


@pytest.mark.parametrize(
    "payload, field",
    [
        ([], "body"),
        ({"fault": "raise"}, "subsystem"),
        ({"subsystem": "api", "fault": "melt"}, "fault"),
        ({"subsystem": "api", "fault": "block", "seconds": -1}, "seconds"),
        ({"subsystem": "api", "fault": "block", "seconds": "5"}, "seconds"),
        ({"subsystem": "nobody", "fault": "raise"}, "subsystem"),
        ({"subsystem": "api", "fault": "raise", "extra": 1}, "extra"),
    ],
)
def test_bad_fault_requests_are_422_naming_the_field(platform: Platform, payload, field: str) -> None:
    status, body = platform.post("/admin/faults", payload)
    assert status == 422 and field in body["error"], body


def test_unknown_route_and_method_are_json_errors(platform: Platform) -> None:
    status, body = platform.get("/nope")
    assert status == 404 and body == {"error": "Not Found"}
    status, body = http("DELETE", platform.url + "/livez")
    assert status == 405 and "error" in body


def test_subsystem_that_refuses_faults_gives_409(platform: Platform) -> None:
    with platform.ticker("no-faults", fault_injection=False):
        platform.wait_state("no-faults", "RUNNING")
        status, body = platform.post("/admin/faults", {"subsystem": "no-faults", "fault": "exit"})
        assert status == 409 and "ENABLE_FAULT_INJECTION" in body["error"]
        assert platform.subsystem("no-faults")["restarts"] == {"exception": 0, "process": 0, "stalled": 0}


def test_api_raise_fault_is_counted_and_recovered(platform: Platform) -> None:
    platform.fault("api", "raise")
    sub = platform.wait_state("api", "RUNNING", restarts_exception=1)
    assert sub["last_error"] == "RuntimeError: injected fault: raise"


@pytest.fixture(scope="module")
def platform_without_faults(ray_session: dict, redis_url: str, tmp_path_factory) -> Iterator[Platform]:
    deployed = start_platform(redis_url, tmp_path_factory.mktemp("nofaults"), fault_injection=False)
    yield deployed
    deployed.close()


def test_faults_are_404_unless_enabled(platform_without_faults: Platform) -> None:
    status, body = platform_without_faults.post("/admin/faults", {"subsystem": "api", "fault": "exit"})
    assert status == 404 and "error" in body
    assert platform_without_faults.get("/livez")[0] == 200


async def test_a_websocket_waits_for_a_new_deployments_broadcaster_with_1013(platform: Platform) -> None:
    """This platform runs no broadcaster: until one has its positions, events could be missed live."""
    tenant = platform.new_tenant("early")
    code, reason, received = await refused(platform.url, token=tenant["token"])
    assert (code, received) == (1013, []) and "broadcaster is starting" in reason
