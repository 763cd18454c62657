"""Redis killed and restarted on the same port: subsystems back off, then recover by themselves."""

from __future__ import annotations

import asyncio
import signal

from store.embedded import EmbeddedRedis, free_port
from tests.support import ADMIN_TOKEN, http, start_platform, wait_for
from tests.ws_client import refused


def test_subsystems_back_off_while_redis_is_down_and_recover(ray_session: dict, tmp_path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", port=free_port())
    server.start()
    platform = start_platform(server.url, tmp_path / "data")
    try:
        tenant = platform.new_tenant("outage")
        with platform.ticker("redis-user"):
            before = platform.wait_state("redis-user", "RUNNING")
            assert server.process is not None
            server.process.send_signal(signal.SIGKILL)
            server.process.wait()
            down = platform.wait_state("redis-user", "BACKOFF")
            assert "Error" in down["last_error"]
            assert down["restarts"]["exception"] >= 1
            assert platform.get("/livez")[0] == 200
            # The API answers what needs Redis with 503 and a JSON error, at once (never a hang, never a 500).
            for method, path, body in (
                ("GET", "/workspaces", None),
                ("POST", "/events", {"event": "E", "payload": {}}),
                ("POST", "/admin/tenants", {"name": "late"}),
            ):
                token = ADMIN_TOKEN if path.startswith("/admin") else tenant["token"]
                status, reply = http(method, platform.url + path, body, token=token, timeout_s=5)  # or raises
                assert (status, reply) == (503, {"error": "storage unavailable, try again"}), (path, status, reply)
            # A WebSocket is closed with 1013 (try again later), with a reason.
            code, reason, received = asyncio.run(refused(platform.url, token=tenant["token"]))
            assert (code, received) == (1013, []) and "unavailable" in reason
            server.start()  # same data dir, same port
            after = platform.wait_state("redis-user", "RUNNING", timeout_s=45)
            assert after["pid"] == before["pid"]
            assert after["restarts"]["process"] == 0 and after["restarts"]["stalled"] == 0
            ticks = after["progress"]["ticks"]
            wait_for(lambda: platform.subsystem("redis-user")["progress"]["ticks"] > ticks, 10, what="ticks resume")
            wait_for(lambda: platform.get("/readyz")[0] == 200, 30, what="ready again")
    finally:
        platform.close()
        server.stop()
