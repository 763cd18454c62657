"""Integration helpers: a deployed platform, a small test subsystem, HTTP and polling."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis
from redis.cluster import RedisCluster

from actors.runtime.handles import HEALTH_ACTOR, NamedActor, deploy
from actors.runtime.subsystem import Subsystem, SubsystemSpec
from actors.runtime.supervised import RestartPolicy
from driver import Deployment
from settings import Settings
from store import shards
from store.client import CLUSTER_SCHEMES, connect
from store.embedded import free_port, redis_binary

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
LOOPBACK = ("127.0.0.0/8",)
T = TypeVar("T")


def sync_redis(url: str) -> redis.Redis:
    """A blocking client of REDIS_URL (a single Redis or, for redis+cluster://, a Redis Cluster)."""
    scheme, _, rest = url.partition("://")
    if scheme in CLUSTER_SCHEMES:
        return RedisCluster.from_url(f"{CLUSTER_SCHEMES[scheme]}://{rest}")  # type: ignore[return-value]
    return redis.Redis.from_url(url)


def lease_holders(redis_url: str, namespace: str, kind: str) -> dict[int, str]:
    """Each shard of `kind` whose lease is valid now, and its holder (a replica's name), read from Redis."""

    async def read() -> dict[int, str]:
        redis = connect(redis_url)
        try:
            now, found = await shards.holders(redis, namespace, kind)
        finally:
            await redis.aclose()
        return {s: h.replica for s, h in found.items() if h.owner and h.expires > now}

    return asyncio.run(read())


def wait_for(condition: Callable[[], T], timeout_s: float, interval_s: float = 0.1, what: str = "") -> T:
    """Poll `condition` until it returns something truthy; fail with the last value seen."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            last = condition()
        except Exception as exc:  # a condition that raises is "not yet", e.g. connection refused
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or condition}: last {last!r}")
        time.sleep(interval_s)


def http(
    method: str, url: str, body: Any = None, *, token: str | None = None, raw: bytes | None = None, timeout_s: float = 5
) -> tuple[int, Any]:
    """One real HTTP request; returns (status, decoded JSON body or text)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
    try:
        return status, json.loads(payload) if payload else None
    except json.JSONDecodeError:
        return status, payload.decode(errors="replace")


class Ticker(Subsystem):
    """A test subsystem whose tick does real Redis I/O (INCR ticker:{name}).

    With `tenants`, each tick also runs one item per tenant through `self.items`; a tenant
    named in `poison` raises, like one tenant's bad row.
    """

    def __init__(
        self, settings: Settings, *, tenants: tuple[str, ...] = (), poison: tuple[str, ...] = (), **runtime: Any
    ) -> None:
        super().__init__(settings, **runtime)
        self.redis = self.own(connect(settings.redis_url, timeout_s=1.0))
        self.ticks = 0
        self.tenants = tenants
        self.poison = set(poison)
        self.done: dict[str, int] = dict.fromkeys(tenants, 0)

    async def tick(self) -> None:
        self.ticks = await self.redis.incr(f"ticker:{self.name}")
        for tenant in self.tenants:
            await self.items.run(tenant, lambda t=tenant: self._work_for(t), version=tenant in self.poison)

    async def _work_for(self, tenant: str) -> None:
        if tenant in self.poison:
            raise ValueError(f"corrupt row of {tenant}")
        self.done[tenant] = await self.redis.incr(f"ticker:{self.name}:{tenant}")

    def progress(self) -> dict[str, Any]:
        return {"ticks": self.ticks, "done": self.done}

    async def heal(self, tenant: str) -> None:
        """The tenant's row was fixed: its version changes, so quarantine lifts."""
        self.poison.discard(tenant)


@dataclass
class Platform:
    """A deployment in its own namespace on the session's Ray, with helpers to drive it."""

    settings: Settings
    deployment: Deployment
    added: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.deployment.api_url

    def get(self, path: str, *, token: str | None = ADMIN_TOKEN, timeout_s: float = 5) -> tuple[int, Any]:
        return http("GET", self.url + path, token=token, timeout_s=timeout_s)

    def post(self, path: str, body: Any = None, *, token: str | None = ADMIN_TOKEN, **kw: Any) -> tuple[int, Any]:
        return http("POST", self.url + path, body, token=token, **kw)

    def pid_of(self, actor: str) -> int:
        """The process id of a named actor of this deployment."""
        return NamedActor(actor, self.settings.ray_namespace).call_sync("ping", timeout_s=10)["pid"]

    def liveness(self) -> dict[str, Any]:
        status, body = self.get("/admin/liveness")
        assert status == 200, (status, body)
        return body

    def subsystem(self, name: str) -> dict[str, Any]:
        return self.liveness()["subsystems"][name]

    def wait_state(self, name: str, state: str, timeout_s: float = 30, **expect: Any) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            sub = self.subsystem(name)
            if sub["state"] != state:
                return None
            for key, value in expect.items():
                if key.startswith("restarts_"):
                    if sub["restarts"][key.removeprefix("restarts_")] != value:
                        return None
                elif sub[key] != value:
                    return None
            return sub

        return wait_for(check, timeout_s, what=f"{name} {state} {expect}")

    def fault(self, name: str, fault: str, seconds: float | None = None) -> None:
        body: dict[str, Any] = {"subsystem": name, "fault": fault}
        if seconds is not None:
            body["seconds"] = seconds
        status, reply = self.post("/admin/faults", body)
        assert status == 202, (status, reply)

    def add_subsystem(
        self, cls: type[Subsystem], spec: SubsystemSpec, *, settings: Settings | None = None, **kwargs: Any
    ) -> NamedActor:
        """Register `spec` with the HealthActor and deploy `cls` with the driver's `deploy`."""
        namespace = self.settings.ray_namespace
        NamedActor(HEALTH_ACTOR, namespace).call_sync("register", [asdict(spec.expectation(namespace))], timeout_s=30)
        # the deployment's settings: its Redis URL and channel key are filled in at start
        actor = deploy(
            cls, settings or self.deployment.settings, name=spec.actor_name, namespace=namespace, spec=spec, **kwargs
        )
        actor.call_sync("ping", timeout_s=30)
        self.added.append(spec.name)
        return actor

    def add_ticker(
        self,
        name: str,
        interval_s: float = 1.0,
        policy: RestartPolicy | None = None,
        fault_injection: bool = True,
        **options: Any,
    ) -> NamedActor:
        """Start a Ticker actor named `name` and register it with the HealthActor."""
        spec = SubsystemSpec(name, interval_s=interval_s, policy=policy or RestartPolicy())
        settings = dataclasses.replace(self.deployment.settings, enable_fault_injection=fault_injection)
        return self.add_subsystem(Ticker, spec, settings=settings, **options)

    @contextlib.contextmanager
    def ticker(self, name: str, **kwargs: Any) -> Iterator[NamedActor]:
        """`add_ticker`, removed again when the block ends, whether its test passed or not."""
        actor = self.add_ticker(name, **kwargs)
        try:
            yield actor
        finally:
            self.remove_subsystem(name)

    def remove_subsystem(self, name: str) -> None:
        NamedActor(name, self.settings.ray_namespace).kill(restart=False)
        NamedActor(HEALTH_ACTOR, self.settings.ray_namespace).call_sync("unregister", name, timeout_s=30)
        self.added.remove(name)

    def new_tenant(self, name: str) -> dict[str, Any]:
        status, body = self.post("/admin/tenants", {"name": name})
        assert status == 201, body
        return body

    def tenant_post(self, tenant: dict[str, Any], path: str, body: Any) -> tuple[int, Any]:
        return self.post(path, body, token=tenant["token"])

    def tenant_get(self, tenant: dict[str, Any], path: str) -> tuple[int, Any]:
        return self.get(path, token=tenant["token"])

    def tenant_patch(self, tenant: dict[str, Any], path: str, body: Any) -> tuple[int, Any]:
        return http("PATCH", self.url + path, body, token=tenant["token"])

    def tenant_delete(self, tenant: dict[str, Any], path: str) -> tuple[int, Any]:
        return http("DELETE", self.url + path, token=tenant["token"])

    def close(self) -> None:
        for name in list(self.added):
            NamedActor(name, self.settings.ray_namespace).kill(restart=False)
        self.deployment.drain()


def start_platform(
    redis_url: str, data_dir: Path, *, fault_injection: bool = True, subsystems: Sequence[Any] = (), **overrides: Any
) -> Platform:
    """Deploy health + API (and `subsystems`, as driver.SUBSYSTEMS lists them) in a fresh namespace.

    The test agents listen on loopback, so the egress allows 127.0.0.0/8 unless told otherwise.
    """
    overrides.setdefault("egress_allow_cidrs", LOOPBACK)
    settings = Settings(
        ray_namespace=f"t{uuid.uuid4().hex[:10]}",
        redis_url=redis_url,
        data_dir=data_dir,
        api_port=free_port(),
        admin_token=ADMIN_TOKEN,
        enable_fault_injection=fault_injection,
        **overrides,
    )
    deployment = Deployment(settings, subsystems)
    deployment.up()
    platform = Platform(settings, deployment)
    wait_for(lambda: platform.get("/readyz")[0] == 200, 30, what="readyz 200")
    return platform


@contextlib.contextmanager
def stranger_redis(data_dir: Path) -> Iterator[Any]:
    """A plain redis-server (no password: not the platform's) on the port recorded in
    `data_dir/redis.port`, as someone else's server left where ours was; a client of it."""
    port = free_port()
    (data_dir / "redis.port").write_text(f"{port}\n")
    server = subprocess.Popen(
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        plain = redis.Redis(port=port)
        wait_for(lambda: plain.ping(), 10, what="the stranger answers")
        yield plain
    finally:
        server.terminate()
        server.wait(10)
