"""`ray job submit` against a three-node cluster this module starts; `ray job stop` drains it.
Scheduler replicas run one per node, and lose no slot when a node's raylet is killed; the
APIs of an API per node follow nodes that join and leave."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from store import connections, keys
from store.embedded import free_port
from tests.a2a_agent import A2AAgent
from tests.support import ADMIN_TOKEN, http, lease_holders, sync_redis, wait_for
from tests.test_scheduler_faults import message_counts
from tests.ws_client import Subscriber, Writer, ws_url

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
        processes = dict(zip(("n0", "n1", "n2"), nodes, strict=True))
        yield {"address": address, "gcs": f"127.0.0.1:{gcs}", "metrics": metrics, "nodes": ids, "processes": processes}
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
        for marker in (node.get("resources_total") or {})
        if re.fullmatch(r"n\d+", marker)
    }


class Liveness:
    """/admin/liveness through the port the APIs of an API per node share. Each API serves a
    snapshot of its own, up to a second old, and the kernel hands each connection to any of
    them: two reads in a row may go back in time. Reads here never do: a body older than the
    newest one seen is asked for again, and one far older (an API stuck on an old snapshot,
    not one of a second ago delivered late on a loaded machine) fails the test."""

    FAR_S = 5.0

    def __init__(self, url: str) -> None:
        self.url, self.newest = url, 0.0

    def __call__(self) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while True:
            body = http("GET", self.url + "/admin/liveness", token=ADMIN_TOKEN)[1]
            checked_at = datetime.fromisoformat(body["checked_at"]).timestamp()
            if checked_at >= self.newest:
                self.newest = checked_at
                return body["subsystems"]
            if self.newest - checked_at > self.FAR_S or time.monotonic() > deadline:
                raise AssertionError(f"liveness checked {self.newest - checked_at:.1f} s before one already read")
            time.sleep(0.05)


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


@pytest.fixture(scope="class")
def per_node(
    cluster: dict[str, Any], fresh_redis: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A platform with API_PER_NODE=1 on the three nodes: `api`, `api-1` and `api-2` RUNNING, one
    on each node, all serving one port. For one class: its job holds n0 until it stops."""
    address, api_port, job_id = cluster["address"], free_port(), "api-per-node"
    url, redis_url = f"http://127.0.0.1:{api_port}", fresh_redis()
    env = {
        "API_PORT": str(api_port),
        "DATA_DIR": str(tmp_path_factory.mktemp("per-node")),
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "REDIS_URL": redis_url,
        "RAY_NAMESPACE": "per-node",
        "API_PER_NODE": "1",
        "ENABLE_FAULT_INJECTION": "1",
    }
    submit(address, job_id, env, on="n0")
    names, liveness = ["api", "api-1", "api-2"], Liveness(url)
    try:
        wait_ready(address, job_id, url)
        apis = wait_for(lambda: (s := liveness()) and all(s[n]["state"] == "RUNNING" for n in names) and s, 60)
        assert sorted(apis[n]["node"] for n in names) == sorted(cluster["nodes"].values())
        assert "broadcaster" not in apis
        yield {"url": url, "redis_url": redis_url, "names": names, "liveness": liveness}
    finally:
        job_cli(address, "stop", job_id)
        wait_finished(address, job_id)


class TestAnApiOnEveryNode:
    """Three API actors on three nodes, one platform for the class."""

    def test_an_api_on_every_node_and_a_rolling_restart_deliver_each_event_once_in_order(
        self, per_node: dict[str, Any]
    ) -> None:
        """Acceptance d: API_PER_NODE runs an API actor on each of the three nodes, all on one port
        (this machine's kernel spreads the clients over them); each is restarted in turn with the
        `exit` fault while events flow, and every client, reconnecting with `last_event_id`, gets
        every event of its tenant once and in order."""
        url, redis_url, names, liveness = (per_node[k] for k in ("url", "redis_url", "names", "liveness"))
        tenants = [http("POST", url + "/admin/tenants", {"name": f"ws-{n}"}, token=ADMIN_TOKEN)[1] for n in range(3)]
        per_tenant = 1_500  # in batches of 5 every 50 ms: about 15 s, longer than the rolling restart
        during: list[bool] = []

        async def run() -> tuple[list[list[str]], dict[str, list[Subscriber]]]:
            # From the start of the (new, empty) streams: a client that loses its first connection
            # before any event has no id of its own to resume from, and would start from "now".
            clients = {
                t["id"]: [Subscriber(url, t["token"], reconnect=True, last_event_id="0-0") for _ in range(4)]
                for t in tenants
            }
            readers = [asyncio.create_task(c.run(per_tenant, timeout_s=180)) for cs in clients.values() for c in cs]
            await asyncio.wait_for(asyncio.gather(*(c.opened.wait() for cs in clients.values() for c in cs)), 30)
            writing = asyncio.create_task(
                Writer(redis_url).paced([t["id"] for t in tenants], per_tenant, batch=5, pause_s=0.05)
            )
            for name in names:  # a rolling restart, one API actor at a time, while events flow
                before = await asyncio.to_thread(wait_for, lambda n=name: liveness()[n]["pid"], 30)
                during.append(not writing.done())
                await asyncio.to_thread(restart, url, name)
                await asyncio.to_thread(
                    wait_for,
                    lambda n=name, p=before: (a := liveness()[n])["pid"] != p and a["state"] == "RUNNING",
                    60,
                    what=f"{name} running again",
                )
            written = await writing
            written_at = time.time()
            try:
                await asyncio.gather(*readers)
            except TimeoutError:
                # Whether a short client's last connection opened before or after the last write
                # tells the live path (the API's reader) from the replay.
                def state(c: Subscriber) -> tuple[Any, ...]:
                    return len(c.ids), c.connections, c.closes[-3:], round(c.connected_at[-1] - written_at, 2)

                seen = {t: [state(c) for c in cs] for t, cs in clients.items()}
                raise AssertionError(
                    f"clients short of {per_tenant} events (count, connections, last closes, last open minus "
                    f"the last write's end, s): {seen}; APIs {liveness()}"
                ) from None
            return written, clients

        written, clients = asyncio.run(run())
        for tenant, ids in zip(tenants, written, strict=True):
            for client in clients[tenant["id"]]:
                assert client.ids == ids  # every event, once, in order, across its reconnects
        reconnected = sum(c.connections - 1 for cs in clients.values() for c in cs)
        assert reconnected >= 1, "no client was on a restarted API"
        assert any(during), "every restart came after the events: only replays were tested"

    def test_a_tenants_websockets_are_counted_and_revoked_across_the_apis(self, per_node: dict[str, Any]) -> None:
        """36 connections of one tenant spread over the three APIs: its `ws_connections` quota of 12
        admits 12 in all (not 12 on each), and still after a lease (each API renews its own), and
        its token replaced through one API closes all 12 (4401) on every API, after which none
        counts."""
        url, names, liveness = per_node["url"], per_node["names"], per_node["liveness"]
        tenant = http("POST", url + "/admin/tenants", {"name": "sockets"}, token=ADMIN_TOKEN)[1]
        status, body = http(
            "PATCH", f"{url}/admin/tenants/{tenant['id']}", {"quotas": {"ws_connections": 12}}, token=ADMIN_TOKEN
        )
        assert status == 200, body
        headers = {"Authorization": f"Bearer {tenant['token']}"}

        async def run() -> tuple[list[int | None], list[int | None]]:
            opened = [await ws_connect(ws_url(url), additional_headers=headers, open_timeout=10) for _ in range(36)]
            closing = [asyncio.create_task(closed_with(c)) for c in opened]
            pending = set(closing)
            try:
                async with asyncio.timeout(30):  # the 24 past the quota are closed at once
                    while len(pending) > 12:
                        _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            except TimeoutError:
                raise AssertionError(f"{36 - len(pending)} of 36 connections refused, not 24") from None

            def spread() -> list[int] | None:  # as each API last beat (every 2 s)
                on = [liveness()[n]["progress"]["ws_clients"] for n in names]
                return on if sum(on) == 12 else None

            on = await asyncio.to_thread(wait_for, spread, 20, what="the 12 in the APIs' beats")
            assert sorted(on)[-2] > 0, f"the 12 are not spread over the APIs: {on}"
            await asyncio.sleep(connections.LEASE_MS / 1000 + 1)  # counted still: renewed, not left to run out
            refused_tasks = [t for t in closing if t.done()]  # a late refusal would be among them by now
            refused = [t.result() for t in refused_tasks]
            usage = (await asyncio.to_thread(http, "GET", url + "/tenant", token=tenant["token"]))[1]["usage"]
            assert usage["ws_connections"] == 12, usage
            extra = await ws_connect(ws_url(url), additional_headers=headers, open_timeout=10)
            assert await asyncio.wait_for(closed_with(extra), 10) == 4429
            status, _ = await asyncio.to_thread(
                http, "POST", f"{url}/admin/tenants/{tenant['id']}/token", token=ADMIN_TOKEN
            )
            assert status == 200
            _, still_open = await asyncio.wait(pending, timeout=30)
            assert not still_open, f"{len(still_open)} of 12 connections still open after the token was replaced"
            revoked = [t.result() for t in closing if t not in refused_tasks]
            return refused, revoked

        refused, revoked = asyncio.run(run())
        assert refused == [4429] * 24  # 12 in all, over every API
        assert revoked == [4401] * 12  # on whichever API each was
        admin_view = f"{url}/admin/tenants/{tenant['id']}"
        wait_for(lambda: http("GET", admin_view, token=ADMIN_TOKEN)[1]["usage"]["ws_connections"] == 0, 10)


async def closed_with(connection: ClientConnection) -> int | None:
    """The close code of a connection that gets no event: when it is closed."""
    try:
        while True:
            await connection.recv()
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


def restart(url: str, name: str) -> None:
    """The `exit` fault: the actor's process exits at once, and Ray starts it again on its node.
    Asked of whichever API answers on the shared port (one that is restarting may not)."""

    def asked() -> bool:
        try:
            body = {"subsystem": name, "fault": "exit"}
            return http("POST", url + "/admin/faults", body, token=ADMIN_TOKEN)[0] == 202
        except OSError:
            return False

    wait_for(asked, 30, interval_s=0.2, what=f"the exit fault of {name} taken")


def raylet_pid(node: subprocess.Popen[bytes]) -> int:
    """The raylet that a `ray start --block` process started (its child)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            line = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        name, rest = line[line.index("(") + 1 : line.rindex(")")], line[line.rindex(")") + 2 :].split()
        if name == "raylet" and int(rest[1]) == node.pid:
            return int(stat.parent.name)
    raise AssertionError(f"no raylet under pid {node.pid}")


def test_scheduler_replicas_run_one_per_node_and_a_raylet_killed_mid_burst_loses_no_slot(
    cluster: dict[str, Any], fresh_redis: Callable[[], str], tmp_path: Path
) -> None:
    """Acceptance a (one replica per node) and b. Node n2 does not come back: only the test after it
    (which adds a node of its own) runs without it."""
    address, api_port, job_id = cluster["address"], free_port(), "replicas-on-three-nodes"
    url, redis_url = f"http://127.0.0.1:{api_port}", fresh_redis()
    agent = A2AAgent(delay_s=1.0).start()  # 600 fires at 3 x 64 in flight take about 4 s
    env = {
        "API_PORT": str(api_port),
        "DATA_DIR": str(tmp_path),
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "REDIS_URL": redis_url,
        "RAY_NAMESPACE": "replicas",
        "SCHEDULER_REPLICAS": "3",
        "SHARD_LEASE_S": "5",
        "FIRE_TIMEOUT_S": "10",  # a fire lost with its node is delivered again 15 s after its claim
        "EGRESS_ALLOW_CIDRS": "127.0.0.0/8",
    }
    submit(address, job_id, env, on="n0")
    try:
        wait_ready(address, job_id, url)
        names = ["scheduler", "scheduler-1", "scheduler-2"]

        def placed() -> dict[str, str] | None:
            subsystems = http("GET", url + "/admin/liveness", token=ADMIN_TOKEN)[1]["subsystems"]
            running = all(subsystems[n]["state"] == "RUNNING" and subsystems[n]["progress"]["shards"] for n in names)
            return {n: subsystems[n]["node"] for n in names} if running else None

        nodes = wait_for(placed, 60, what="three replicas running with shards")
        assert sorted(nodes.values()) == sorted(cluster["nodes"].values())  # one on each node
        victim = next(n for n, node in nodes.items() if node == cluster["nodes"]["n2"])

        made = []
        for n in range(20):
            tenant = http("POST", url + "/admin/tenants", {"name": f"burst-{n}"}, token=ADMIN_TOKEN)[1]
            status, ws = http("POST", url + "/workspaces", {"name": "w", "url": agent.url}, token=tenant["token"])
            assert status == 201, ws
            made.append((tenant, ws))
        slot = int(time.time()) + 60  # 600 schedules are made over HTTP first, on a loaded machine
        cron = f"{slot % 60} {slot // 60 % 60} * * * *"  # once an hour: one slot each
        expected = set()
        for tenant, ws in made:
            for _ in range(30):
                body = {"workspace_id": ws["id"], "name": "s", "cron": cron, "prompt": "tick"}
                status, created = http("POST", url + "/schedules", body, token=tenant["token"])
                assert status == 201, created
                expected.add(f"cron-{created['id']}-{slot}")
        assert time.time() < slot - 2, "the schedules took longer to make than the lead time"

        owners = lease_holders(redis_url, "replicas", "scheduler")
        held = [shard for shard, name in owners.items() if name == victim]
        pid = http("GET", url + "/admin/liveness", token=ADMIN_TOKEN)[1]["subsystems"][victim]["pid"]
        wait_for(lambda: len(agent.requests) >= 60, 60, interval_s=0.02, what="the burst under way")
        os.kill(raylet_pid(cluster["processes"]["n2"]), signal.SIGKILL)
        # What the victim had claimed and not recorded, until its process is gone with its node.
        client = sync_redis(redis_url)
        in_flight: set[str] = set()
        deadline = time.monotonic() + 30
        while True:
            alive = Path(f"/proc/{pid}").exists()
            for shard in held:
                members = client.zrange(keys.schedules_inflight(shard), 0, -1)
                in_flight |= {"cron-" + m.decode().replace(":", "-") for m in members}
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists(), "the replica outlived its raylet"

        wait_for(lambda: expected <= set(message_counts(agent)), 120, interval_s=0.5, what="all 600 delivered")
        counts = message_counts(agent)
        assert set(counts) == expected  # every slot, and nothing else
        again = {m for m, c in counts.items() if c > 1}
        assert again <= in_flight, again - in_flight  # only what was in flight on the lost node, same messageId
        assert max(counts.values()) <= 2, counts.most_common(3)
        assert in_flight, "the kill came after the burst"
    finally:
        job_cli(address, "stop", job_id)
        wait_finished(address, job_id)
        agent.stop()


def test_the_apis_follow_a_node_that_joins_and_one_that_leaves(
    cluster: dict[str, Any], fresh_redis: Callable[[], str], tmp_path: Path
) -> None:
    """With API_PER_NODE a node that joins after the start gets an API of its own, and when that
    node is lost its API is no longer expected: /readyz answers 200 again without a restart."""
    address, api_port, job_id = cluster["address"], free_port(), "apis-follow-nodes"
    url = f"http://127.0.0.1:{api_port}"
    env = {
        "API_PORT": str(api_port),
        "DATA_DIR": str(tmp_path),
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "REDIS_URL": fresh_redis(),
        "RAY_NAMESPACE": "follow",
        "API_PER_NODE": "1",
    }

    liveness = Liveness(url)

    def apis() -> dict[str, dict[str, Any]]:
        return {name: s for name, s in liveness().items() if re.fullmatch(r"api(-\d+)?", name)}

    def said() -> list[str]:  # what the job's driver said of the nodes, for a failure's message
        return [line for line in job_cli(address, "logs", job_id).stdout.splitlines() if "node" in line]

    submit(address, job_id, env, on="n0")
    joined: subprocess.Popen[bytes] | None = None
    try:
        wait_ready(address, job_id, url)

        def settled() -> set[str] | None:  # a node killed by a test before may be declared dead meanwhile
            alive, running = set(node_ids(address).values()), apis()
            up = {a["node"] for a in running.values() if a["state"] == "RUNNING"}
            return alive if up == alive and len(running) == len(alive) else None

        before = wait_for(settled, 120, interval_s=1, what="an API on each alive node, and no other")
        joined = ray_start(f"--address={cluster['gcs']}", "--num-cpus=1", '--resources={"n9": 1}')[0]
        node = wait_for(lambda: node_ids(address).get("n9"), 120, interval_s=0.5, what="node n9 joined")
        on_it = wait_for(
            lambda: [n for n, a in apis().items() if a["node"] == node and a["state"] == "RUNNING"],
            60,
            what="an API started on the node that joined",
        )
        one = [n for n, a in apis().items() if a["node"] == node]
        assert len(on_it) == 1 and one == on_it, f"{on_it} ran on n9, now {one}; the job said {said()}"
        assert len(apis()) == len(before) + 1 and http("GET", url + "/readyz")[0] == 200

        os.kill(raylet_pid(joined), signal.SIGKILL)
        wait_for(lambda: on_it[0] not in apis(), 120, interval_s=0.5, what=f"{on_it[0]} no longer expected")
        left = {n: (a["node"], a["state"]) for n, a in apis().items()}
        if {node for node, _ in left.values()} != before:
            raise AssertionError(f"left {left}, before {before}, n9 {node}, on it {on_it}; the job said {said()}")
        wait_for(lambda: http("GET", url + "/readyz")[0] == 200, 30, what="readyz 200 without the lost node's API")
        logs = job_cli(address, "logs", job_id).stdout
        assert f"{on_it[0]}: started on node {node}" in logs
        assert re.search(rf"{on_it[0]}: (no longer expected|stopped): its node left the Ray cluster", logs)
    finally:
        job_cli(address, "stop", job_id)
        wait_finished(address, job_id)
        if joined is not None:
            stop_node(joined)
