"""The driver as users run it: a fresh local platform, re-attachment, draining, bad settings."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from actors.runtime.handles import HEALTH_ACTOR, NamedActor
from actors.scheduler import Scheduler
from driver import SUBSYSTEMS, Deployment, StartRefused
from settings import Settings
from store.embedded import EmbeddedRedis, answers, free_port
from tests.support import ADMIN_TOKEN, http, stranger_redis, wait_for

ROOT = Path(__file__).resolve().parent.parent

SUBSYSTEM_NAMES = [cls.spec.name for cls in SUBSYSTEMS]


def driver(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen[bytes]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    full_env.update(env)
    return subprocess.Popen(
        [sys.executable, "driver.py", *args],
        cwd=ROOT,
        env=full_env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
    process.send_signal(sig)
    return process.wait(timeout_s)


def admin_get(url: str, token: str) -> tuple[int, dict]:
    return http("GET", url + "/admin/liveness", token=token)


def test_fresh_local_platform_comes_up_and_drains(tmp_path: Path) -> None:
    """README command 1 in a fresh directory: own local Ray, embedded Redis, generated token."""
    port = free_port()
    data = tmp_path / "data"
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "driver.log"
    process = driver({"API_PORT": str(port), "DATA_DIR": str(data)}, log=log)
    try:
        wait_for(lambda: http("GET", url + "/readyz")[0] == 200, 90, interval_s=0.5, what="readyz 200")
        token_file = data / "admin_token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        status, body = admin_get(url, token)
        assert status == 200 and body["healthy"] is True
        states = {name: sub["state"] for name, sub in body["subsystems"].items()}
        assert states == dict.fromkeys(["api", *SUBSYSTEM_NAMES], "RUNNING")
        output = log.read_text()
        assert f"API: {url}" in output and f"admin token: {token_file}" in output
        redis_url = EmbeddedRedis(data).url  # the port and password the driver recorded
        assert answers(redis_url)
        process.send_signal(signal.SIGTERM)
        seen = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(http("GET", url + "/readyz")), 10, 0.02)
        assert seen[1] == {"status": "unready", "unhealthy": [], "draining": True}
    finally:
        code = stop(process)
    assert code == 0, log.read_text()
    assert "stopped" in log.read_text()
    assert not answers(redis_url)
    assert (data / "appendonly.aof").exists() or (data / "appendonlydir").exists()


def test_bad_setting_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "driver.py"],
        cwd=ROOT,
        env={**os.environ, "API_PORT": "eighty", "DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "API_PORT" in result.stderr


def test_second_driver_reattaches_and_never_duplicates(ray_session: dict, redis_url: str, tmp_path: Path) -> None:
    """Driver 1 dies hard (detached actors live on); driver 2 re-attaches to the same actors."""
    namespace = f"reattach{os.getpid()}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "RAY_ADDRESS": ray_session["gcs_address"],
        "RAY_AUTH_MODE": "token",  # as the README says for attaching to a Ray 2.60 cluster
        "RAY_NAMESPACE": namespace,
        "REDIS_URL": redis_url,
        "API_PORT": str(port),
        "DATA_DIR": str(tmp_path),
        "ADMIN_TOKEN": "reattach-admin-token-0123456789",
    }
    first = driver(env, log=tmp_path / "first.log")
    wait_for(lambda: http("GET", url + "/readyz")[0] == 200, 90, interval_s=0.5, what="first driver ready")
    pids = {n: s["pid"] for n, s in admin_get(url, env["ADMIN_TOKEN"])[1]["subsystems"].items()}
    stop(first, signal.SIGKILL)
    assert http("GET", url + "/livez")[0] == 200  # detached: the platform outlives its driver

    second = driver(env, log=tmp_path / "second.log")
    try:
        wait_for(lambda: "API:" in (tmp_path / "second.log").read_text(), 90, interval_s=0.5, what="second up")
        named = sorted(
            a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == namespace
        )
        assert named == sorted(["api", "health", *SUBSYSTEM_NAMES])
        body = admin_get(url, env["ADMIN_TOKEN"])[1]
        assert {n: s["pid"] for n, s in body["subsystems"].items()} == pids
        for sub in body["subsystems"].values():
            assert sub["restarts"] == {"exception": 0, "process": 0, "stalled": 0}
    finally:
        assert stop(second) == 0
    named = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == namespace]
    assert named == []
    wait_for(lambda: not _listening(port), 10, what="API stopped")


def _listening(port: int) -> bool:
    try:
        http("GET", f"http://127.0.0.1:{port}/livez", timeout_s=1)
    except OSError:
        return False
    return True


def test_down_removes_a_deployment_whose_driver_died(ray_session: dict, tmp_path: Path) -> None:
    """A driver killed hard leaves detached actors and its Redis; `driver.py down` removes both."""
    namespace = f"down{os.getpid()}"
    port = free_port()
    env = {
        "RAY_ADDRESS": ray_session["gcs_address"],
        "RAY_AUTH_MODE": "token",
        "RAY_NAMESPACE": namespace,
        "API_PORT": str(port),
        "DATA_DIR": str(tmp_path),
    }
    first = driver(env, log=tmp_path / "run.log")
    wait_for(lambda: http("GET", f"http://127.0.0.1:{port}/readyz")[0] == 200, 90, interval_s=0.5, what="ready")
    redis_url = EmbeddedRedis(tmp_path).url
    stop(first, signal.SIGKILL)
    assert answers(redis_url)
    down = driver(env, "down", log=tmp_path / "down.log")
    assert down.wait(60) == 0, (tmp_path / "down.log").read_text()
    named = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == namespace]
    assert named == []
    wait_for(lambda: not answers(redis_url), 10, what="embedded Redis stopped")
    wait_for(lambda: not _listening(port), 10, what="API stopped")


def test_a_redis_without_the_password_on_the_recorded_port_stops_the_driver(tmp_path: Path) -> None:
    with stranger_redis(tmp_path) as plain:
        result = subprocess.run(
            [sys.executable, "driver.py"],
            cwd=ROOT,
            env={**os.environ, "API_PORT": str(free_port()), "DATA_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1, result.stderr[-2000:]
        assert "start error:" in result.stderr and "does not accept this platform's Redis password" in result.stderr
        assert plain.dbsize() == 0


def test_replicas_that_ask_for_more_cpus_than_a_ray_of_its_own_has_are_refused_at_start(
    ray_session: dict, redis_url: str, tmp_path: Path
) -> None:
    """Nothing would add nodes for them: they would wait forever. The error names the settings."""
    settings = Settings(
        ray_namespace="too-many-cpus",
        redis_url=redis_url,
        data_dir=tmp_path,
        api_port=free_port(),
        admin_token=ADMIN_TOKEN,
        scheduler_replicas=3,
        replica_cpus=1.0,  # 3 CPUs; the session's Ray has 2
    )
    with pytest.raises(StartRefused, match=r"REPLICA_CPUS=1 CPU each \(3 in all\).* 2 CPUs: lower REPLICA_CPUS"):
        Deployment(settings, [Scheduler]).up()
    assert not NamedActor(HEALTH_ACTOR, "too-many-cpus").exists()  # nothing was started
