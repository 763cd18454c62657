"""Run every benchmark in turn; each prints its own figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    "beat_cost.py",
    "ingestion.py",
    "liveness_latency.py",
    "status_page.py",
    "keepalive.py",
    "detection.py",
    "scheduler_burst.py",
    "scheduler_replicas.py",
    "broadcaster.py",
    "workspace_liveness.py",
    "channels.py",
    "noisy_neighbours.py",
    "game_day.py",
    "memory.py",
]

if __name__ == "__main__":
    failed = 0
    for bench in BENCHES:
        print(f"== {bench}", flush=True)
        failed += subprocess.run([sys.executable, str(HERE / bench)], cwd=HERE.parent).returncode != 0
    sys.exit(1 if failed else 0)
