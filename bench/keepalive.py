"""Sequential requests on one keep-alive connection: the API actor against plain uvicorn.

One client, one connection, one request at a time (what an SDK with a connection pool
does): `GET /livez` and `POST /events`. Baseline in the same run: the same Starlette app
(`api.app.create_app`, same Redis, same tenant) served by uvicorn binding host and port
itself, in a process of its own. The rounds alternate between the two servers so both see
the same machine load. Without TCP_NODELAY on the accepted sockets, every response waits
for the client's delayed ACK: about 40 ms per request.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import time
from typing import Any

import harness
import uvicorn

from api.app import create_app
from api.backend import Backend
from api.context import ApiContext
from settings import Settings
from store.client import connect
from store.embedded import free_port
from tests.support import ADMIN_TOKEN, wait_for
from tests.support import http as http_request

REQUESTS = 300  # per endpoint, per round
ROUNDS = 3
WARM_UP = 20


class IdleBackend(Backend):
    """The baseline app's platform: never draining; /livez and /events do not call it."""

    draining = False

    async def liveness(self) -> bytes:
        raise NotImplementedError

    async def readiness(self) -> dict[str, Any]:
        return {"ready": True, "unhealthy": []}

    async def inject_fault(self, subsystem: str, fault: str, seconds: float | None) -> None:
        raise NotImplementedError


def serve_baseline(port: int, settings: Settings) -> None:
    context = ApiContext.build(
        settings, backend=IdleBackend(), redis=connect(settings.redis_url), admin_token=ADMIN_TOKEN
    )
    uvicorn.run(
        create_app(context), host="127.0.0.1", port=port, log_level="warning", lifespan="off", ws="websockets-sansio"
    )


def timed(port: int, method: str, path: str, body: bytes | None, token: str | None, n: int) -> list[float]:
    """`n` requests one after another on one connection; the latency of each."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    latencies = []
    try:
        for _ in range(n):
            start = time.perf_counter()
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            latencies.append(time.perf_counter() - start)
            assert response.status in (200, 202), (path, response.status)
            assert not response.will_close, "the server closed the keep-alive connection"
    finally:
        connection.close()
    return latencies


def main() -> None:
    event = json.dumps({"event": "BENCH", "payload": {"n": 1}}).encode()
    endpoints = {"GET /livez": ("GET", "/livez", None), "POST /events": ("POST", "/events", event)}
    with harness.platform() as platform:
        tenant = platform.new_tenant("keepalive")
        # 900 POST /events in a row on each side: past the default rate quota (100/s), on purpose
        unlimited = {"quotas": {"events_per_s": 1_000_000}}
        path = f"{platform.url}/admin/tenants/{tenant['id']}"
        status, body = http_request("PATCH", path, unlimited, token=ADMIN_TOKEN)
        assert status == 200, body
        port = free_port()
        baseline = multiprocessing.get_context("spawn").Process(
            target=serve_baseline, args=(port, platform.deployment.settings)
        )
        baseline.start()
        try:
            wait_for(lambda: timed(port, "GET", "/livez", None, None, 1), 30, what="baseline serving")
            servers = {"platform": platform.settings.api_port, "baseline": port}
            results: dict[tuple[str, str], list[float]] = {}
            for _ in range(ROUNDS):
                for server, server_port in servers.items():
                    for name, (method, path, body) in endpoints.items():
                        timed(server_port, method, path, body, tenant["token"], WARM_UP)
                        got = timed(server_port, method, path, body, tenant["token"], REQUESTS)
                        results.setdefault((server, name), []).extend(got)
        finally:
            baseline.terminate()
            baseline.join(10)
    print(f"{REQUESTS * ROUNDS} sequential requests per endpoint on one keep-alive connection, {ROUNDS} rounds")
    for name in endpoints:
        ours, theirs = results[("platform", name)], results[("baseline", name)]
        print(f"{name}: platform {harness.summary(ours)}")
        print(f"{name}: baseline {harness.summary(theirs)}")
        print(f"{name}: ratio platform / baseline: {harness.ratios(ours, theirs)} (goal: within 1.2x at p50)")


if __name__ == "__main__":
    main()
