"""The game day's short form (bench/game_day.py): random faults under load from a fixed seed,
then an account of every slot, event, chat message and heartbeat gap, which must hold.

It needs a redis-server of its own (the game day restarts it) and runs on the session's Ray.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from store.embedded import EmbeddedRedis, free_port
from tests.chat_apis import ChatApis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import game_day

SEED = 568  # its 150 s plan has every kind of fault, the API killed and blocked briefly, Redis restarted
SECONDS = 150.0


@pytest.mark.timeout(600)  # 150 s of load, then up to 60 s of drain and 120 s for every subsystem to be RUNNING
def test_the_short_game_day_accounts_for_every_item(
    ray_session: dict, apis: ChatApis, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = EmbeddedRedis(tmp_path_factory.mktemp("game-redis"), port=free_port())
    server.start()
    try:
        with game_day.game_platform(server, tmp_path_factory.mktemp("game-data"), apis) as platform:
            account = game_day.run(platform, server, apis, SEED, SECONDS)
    finally:
        server.stop()
    report = "\n".join(account.lines + [f"FAIL {f}" for f in account.failures])
    print(report)
    assert not account.failures, report


def test_the_same_seed_gives_the_same_faults() -> None:
    first, again, other = game_day.plan(7, 1800), game_day.plan(7, 1800), game_day.plan(8, 1800)
    assert first == again and first != other
    assert {f.kind for f in first} == {
        "kill", "block", "hang", "raise", "redis-restart", "agent-outage", "telegram-429", "telegram-5xx",
        "heartbeat-pause",
    }  # fmt: skip
    assert {f.target for f in first if f.kind == "kill"} == set(game_day.ACTORS)  # the HealthActor and API too
    # Faults overlap, but an actor is never hit again before it has recovered from the last one.
    for kind in ("kill", "block", "hang", "raise"):
        for fault in (f for f in first if f.kind == kind):
            later = [f for f in first if f.target == fault.target and fault.at_s < f.at_s]
            assert not later or later[0].at_s >= fault.at_s + game_day.RECOVERY_S[kind], (fault, later[0])
