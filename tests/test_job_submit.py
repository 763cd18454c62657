"""`ray job submit` against a three-node cluster this module starts; `ray job stop` drains it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from store.embedded import free_port
from tests.support import ADMIN_TOKEN, http, wait_for

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def ray_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # `python` in the job is this venv's
    env["RAY_AUTH_MODE"] = "token"
    return env


def ray_start(*args: str) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """`ray start --block` with every port it listens on chosen free; stopped by its pid afterwards.

    Free ports, so it never collides with the session's own Ray (whose dashboard agent
    already holds Ray's default 52365) or with another node of the same cluster.
    """
    chosen = {name: free_port() for name in ("metrics", "agent_http", "agent_grpc", "runtime_env")}
    command = [
        str(BIN / "ray"), "start", "--block", *args,
        f"--metrics-export-port={chosen['metrics']}",
        f"--dashboard-agent-listen-port={chosen['agent_http']}",
        f"--dashboard-agent-grpc-port={chosen['agent_grpc']}",
        f"--runtime-env-agent-port={chosen['runtime_env']}",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env=ray_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )
    return process, chosen


def stop_node(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    """Three nodes on this machine: `ray start --head` (resource n0) and two `ray start --address` (n1, n2)."""
    # `ray start --head` turns token auth on only when a token exists; make sure one does.
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=ray_env(), capture_output=True, check=True)
    temp_dir = tempfile.mkdtemp(prefix="rayj", dir="/tmp")  # short: Ray's unix sockets live here
    gcs, dashboard, client = free_port(), free_port(), free_port()
    head, ports = ray_start(
        "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}", "--num-cpus=2", '--resources={"n0": 1}', f"--temp-dir={temp_dir}",
    )  # fmt: skip
    nodes, metrics = [head], [ports["metrics"]]
    address = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for(lambda: job_cli(address, "list").returncode == 0, 120, interval_s=1, what="jobs API")
        for n in (1, 2):  # one at a time: two raylets starting at once on one machine can collide
            worker, worker_ports = ray_start(f"--address=127.0.0.1:{gcs}", "--num-cpus=1", f'--resources={{"n{n}": 1}}')
            nodes.append(worker)
            metrics.append(worker_ports["metrics"])
            wait_for(lambda n=n: f"n{n}" in node_ids(address), 120, interval_s=0.5, what=f"node n{n} joined")
        ids = node_ids(address)
        yield {"address": address, "metrics": metrics, "nodes": ids}
    finally:
        for process in reversed(nodes):  # workers first, the head last
            stop_node(process)
        shutil.rmtree(temp_dir, ignore_errors=True)


def node_ids(address: str) -> dict[str, str]:
    """Each alive node's id, by its marker resource (n0 is the head)."""
    result = subprocess.run(
        [str(BIN / "ray"), "list", "nodes", "--address", address, "--format", "json", "--filter", "state=ALIVE"],
        env=ray_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    nodes = json.loads(result.stdout) if result.returncode == 0 else []
    return {
        marker: node["node_id"]
        for node in nodes
        for marker in ("n0", "n1", "n2")
        if marker in (node.get("resources_total") or {})
    }


def job_cli(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ray"), "job", args[0], "--address", address, *args[1:]],
        cwd=ROOT,
        env=ray_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def job_status(address: str, job_id: str) -> str:
    """The job's status word as `ray job status` reports it."""
    result = job_cli(address, "status", job_id)
    out = result.stdout + result.stderr
    match = re.search(r"Status for job '[^']+': (\w+)", out)
    if match:
        return match.group(1)
    for phrase, status in (("was stopped", "STOPPED"), ("succeeded", "SUCCEEDED"), ("failed", "FAILED")):
        if f"Job '{job_id}' {phrase}" in out:
            return status
    return out


def submit(address: str, job_id: str, env: dict[str, str], *, on: str) -> None:
    """Submit the platform as a job whose driver runs on the node with marker resource `on`."""
    args = ["submit", "--no-wait", "--submission-id", job_id, "--working-dir", "."]
    args += ["--entrypoint-resources", json.dumps({on: 1})]
    args += ["--runtime-env-json", json.dumps({"env_vars": env}), "--", "python", "driver.py"]

    def accepted() -> subprocess.CompletedProcess[str] | None:
        # Right after start the head may answer "No available agent to submit job": try again.
        result = job_cli(address, *args)
        return None if result.returncode != 0 and "No available agent" in result.stderr else result

    submitted = wait_for(accepted, 60, interval_s=1, what="job agent accepts the submission")
    assert submitted.returncode == 0, submitted.stderr


def wait_ready(address: str, job_id: str, url: str) -> None:
    try:
        wait_for(lambda: http("GET", url + "/readyz")[0] == 200, 120, interval_s=1, what="readyz 200")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; job logs:\n{job_cli(address, 'logs', job_id).stdout[-3000:]}") from None


def wait_finished(address: str, job_id: str) -> str:
    return wait_for(
        lambda: (lambda s: s if s in ("STOPPED", "SUCCEEDED", "FAILED") else None)(job_status(address, job_id)),
        60,
        interval_s=1,
        what="job finished",
    )


def test_job_submit_runs_the_platform_and_job_stop_drains_it(cluster: dict[str, Any], tmp_path: Path) -> None:
    """The job's driver runs on a worker node (n1); the API still runs, and answers, on the head."""
    address, api_port, job_id = cluster["address"], free_port(), "platform-under-test"
    url = f"http://127.0.0.1:{api_port}"
    submit(address, job_id, {"API_PORT": str(api_port), "DATA_DIR": str(tmp_path), "ADMIN_TOKEN": ADMIN_TOKEN}, on="n1")
    try:
        wait_ready(address, job_id, url)
        assert job_status(address, job_id) == "RUNNING"
        status, body = http("GET", url + "/admin/liveness", token=ADMIN_TOKEN)
        assert status == 200 and body["subsystems"]["api"]["state"] == "RUNNING"
        assert body["subsystems"]["api"]["node"] == cluster["nodes"]["n0"]  # the head

        def metric() -> bool:
            # Each node exports the metrics of the actors it runs: the HealthActor's node has the gauge.
            for port in cluster["metrics"]:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    if re.search(r'ray_subsystem_healthy\{[^}]*subsystem="api"[^}]*\} 1', r.read().decode()):
                        return True
            return False

        wait_for(metric, 60, interval_s=1, what="health gauge on a node's metrics export port")
    finally:
        stopped = job_cli(address, "stop", job_id)
    assert stopped.returncode == 0, stopped.stderr
    # A driver that drains before the supervisor's wait ends may be recorded as SUCCEEDED.
    final = wait_finished(address, job_id)
    assert final in ("STOPPED", "SUCCEEDED"), final
    logs = job_cli(address, "logs", job_id).stdout
    assert "draining" in logs and "stopped" in logs, logs[-2000:]
    with pytest.raises(OSError):
        http("GET", url + "/livez", timeout_s=2)


def test_the_api_runs_on_the_node_api_node_names(cluster: dict[str, Any], tmp_path: Path) -> None:
    """API_NODE names a worker (n2) by its node id; a node that does not exist fails the start."""
    address, api_port = cluster["address"], free_port()
    url = f"http://127.0.0.1:{api_port}"
    env = {"API_PORT": str(api_port), "DATA_DIR": str(tmp_path), "ADMIN_TOKEN": ADMIN_TOKEN, "RAY_NAMESPACE": "placed"}
    submit(address, "no-such-node", {**env, "API_NODE": "f" * 56}, on="n1")
    assert wait_finished(address, "no-such-node") == "FAILED"
    assert f"API_NODE={'f' * 56}: no alive Ray node" in job_cli(address, "logs", "no-such-node").stdout

    submit(address, "api-on-n2", {**env, "API_NODE": cluster["nodes"]["n2"]}, on="n1")
    try:
        wait_ready(address, "api-on-n2", url)
        body = http("GET", url + "/admin/liveness", token=ADMIN_TOKEN)[1]
        assert body["subsystems"]["api"]["node"] == cluster["nodes"]["n2"]
    finally:
        assert job_cli(address, "stop", "api-on-n2").returncode == 0
    assert wait_finished(address, "api-on-n2") in ("STOPPED", "SUCCEEDED")
