"""Total PSS of the running platform as `python driver.py` starts it (Ray, actors, Redis)."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import harness
import psutil

from store.embedded import free_port
from tests.support import wait_for


def pss_by_process(root: psutil.Process) -> dict[str, int]:
    totals: dict[str, int] = collections.Counter()
    for proc in [root, *root.children(recursive=True)]:
        try:
            cmdline = proc.cmdline()
            script = next((os.path.basename(a) for a in cmdline if a.endswith(".py")), "")
            totals[_label(proc.name(), " ".join([script, *cmdline[:1]]))] += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return totals


def _label(name: str, cmd: str) -> str:
    for key in ("redis-server", "raylet", "gcs_server", "ApiActor", "HealthActor", "driver.py"):
        if key in name or key in cmd:
            return key
    return cmd.split()[0] if cmd.split() and cmd.split()[0].endswith(".py") else name


def main() -> None:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-mem") as data:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update({"API_PORT": str(port), "DATA_DIR": data})
        process = subprocess.Popen(
            [sys.executable, "driver.py"], cwd=harness.ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200, 120)
            time.sleep(10)  # let start-up settle
            totals = pss_by_process(psutil.Process(process.pid))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
    total = sum(totals.values())
    for label, pss in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {label:<40} {pss / 2**20:8.1f} MiB")
    print(f"total PSS of the running platform: {total / 2**20:.0f} MiB ({total / 2**30:.2f} GiB; goal < 1.2 GiB)")


if __name__ == "__main__":
    main()
