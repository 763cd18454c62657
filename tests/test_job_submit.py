"""`ray job submit` against a `ray start --head` this test starts; `ray job stop` drains it."""

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


@pytest.fixture
def head() -> Iterator[dict[str, str]]:
    """A one-node cluster from `ray start --head --block`, stopped by its pid afterwards."""
    # `ray start --head` turns token auth on only when a token exists; make sure one does.
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=ray_env(), capture_output=True, check=True)
    temp_dir = tempfile.mkdtemp(prefix="rayj", dir="/tmp")  # short: Ray's unix sockets live here
    # Every port this head listens on is chosen free, so it never collides with the
    # session's own Ray (whose dashboard agent already holds Ray's default 52365).
    names = ("gcs", "dashboard", "metrics", "agent_http", "agent_grpc", "runtime_env", "client")
    ports = {name: free_port() for name in names}
    process = subprocess.Popen(
        [
            str(BIN / "ray"), "start", "--head", "--block",
            f"--port={ports['gcs']}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={ports['dashboard']}",
            f"--metrics-export-port={ports['metrics']}",
            f"--dashboard-agent-listen-port={ports['agent_http']}",
            f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
            f"--runtime-env-agent-port={ports['runtime_env']}",
            f"--ray-client-server-port={ports['client']}",
            "--num-cpus=2", f"--temp-dir={temp_dir}",
        ],
        env=ray_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    address = f"http://127.0.0.1:{ports['dashboard']}"
    try:
        wait_for(lambda: job_cli(address, "list").returncode == 0, 120, interval_s=1, what="jobs API")
        yield {"address": address, "metrics": str(ports["metrics"])}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


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


def test_job_submit_runs_the_platform_and_job_stop_drains_it(head: dict[str, str], tmp_path: Path) -> None:
    address, api_port, job_id = head["address"], free_port(), "platform-under-test"
    url = f"http://127.0.0.1:{api_port}"
    runtime_env = {"env_vars": {"API_PORT": str(api_port), "DATA_DIR": str(tmp_path), "ADMIN_TOKEN": ADMIN_TOKEN}}
    submit_args = ["submit", "--no-wait", "--submission-id", job_id, "--working-dir", "."]
    submit_args += ["--runtime-env-json", json.dumps(runtime_env), "--", "python", "driver.py"]

    def submit() -> subprocess.CompletedProcess[str] | None:
        # Right after start the head may answer "No available agent to submit job": try again.
        result = job_cli(address, *submit_args)
        return None if result.returncode != 0 and "No available agent" in result.stderr else result

    submitted = wait_for(submit, 60, interval_s=1, what="job agent accepts the submission")
    assert submitted.returncode == 0, submitted.stderr
    try:
        try:
            wait_for(lambda: http("GET", url + "/readyz")[0] == 200, 120, interval_s=1, what="readyz 200")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; job logs:\n{job_cli(address, 'logs', job_id).stdout[-3000:]}") from None
        assert job_status(address, job_id) == "RUNNING"
        status, body = http("GET", url + "/admin/liveness", token=ADMIN_TOKEN)
        assert status == 200 and body["subsystems"]["api"]["state"] == "RUNNING"

        def metric() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{head['metrics']}/metrics", timeout=5) as r:
                return bool(re.search(r'ray_subsystem_healthy\{[^}]*subsystem="api"[^}]*\} 1', r.read().decode()))

        wait_for(metric, 60, interval_s=1, what="health gauge on the metrics export port")
    finally:
        stopped = job_cli(address, "stop", job_id)
    assert stopped.returncode == 0, stopped.stderr
    # A driver that drains before the supervisor's wait ends may be recorded as SUCCEEDED.
    final = wait_for(
        lambda: (lambda s: s if s in ("STOPPED", "SUCCEEDED", "FAILED") else None)(job_status(address, job_id)),
        60,
        interval_s=1,
        what="job finished",
    )
    assert final in ("STOPPED", "SUCCEEDED"), final
    logs = job_cli(address, "logs", job_id).stdout
    assert "draining" in logs and "stopped" in logs, logs[-2000:]
    with pytest.raises(OSError):
        http("GET", url + "/livez", timeout_s=2)
