"""Scheduler deliveries/s with 1, 2 and 3 replicas against an agent that answers each request after 1 s.

Each replica has SCHEDULER_FIRES_IN_FLIGHT=64, so one replica's ceiling is about 64
deliveries/s: more replicas, working their own shards, should raise it in proportion.
For each replica count, a platform of its own, on a Ray of `--nodes` nodes on this machine
(`ray.cluster_utils.Cluster`), gets `--slots` slots due in one second over `--tenants`
tenants (shards are by tenant), and the time from the slot to the last delivery gives the
rate. The baseline is the same run's one replica (ratios, not absolute rates). Then, with
3 replicas under a steady load, one replica is SIGKILLed: the time until every shard is
held again (read from the leases in Redis) is the rebalance time.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import time
import urllib.request

import harness
from scheduler_burst import agent_stats, create_all, serve_agent

from actors.runtime.handles import NamedActor
from actors.scheduler import Scheduler
from settings import Settings
from store.embedded import free_port
from store.keys import ALL_SHARDS
from tests.support import ADMIN_TOKEN, Platform, http, lease_holders, wait_for

IN_FLIGHT = 64
ANSWER_S = 1.0


def tenants(platform: Platform, url: str, count: int) -> list[tuple[str, str]]:
    """`count` tenants, each with a workspace served at `url`: (tenant id, workspace id)."""
    made = []
    for n in range(count):
        tenant = platform.new_tenant(f"t{n}")
        path = f"{platform.url}/admin/tenants/{tenant['id']}"
        assert http("PATCH", path, {"quotas": {"fires_in_flight": IN_FLIGHT}}, token=ADMIN_TOKEN)[0] == 200
        _, ws = platform.tenant_post(tenant, "/workspaces", {"name": "w", "url": url})
        made.append((tenant["id"], ws["id"]))
    return made


def tenants_with_work(platform: Platform, url: str, count: int, cron: str, per_tenant: int) -> None:
    for tenant_id, workspace_id in tenants(platform, url, count):
        asyncio.run(create_all(platform.settings.redis_url, tenant_id, workspace_id, cron, per_tenant))


def holders(settings: Settings) -> dict[int, str]:
    return lease_holders(settings.redis_url, settings.ray_namespace, "scheduler")


def burst(url: str, replicas: int, tenant_count: int, slots: int, nodes: int) -> float:
    """Deliveries/s of `slots` slots due in one second, with `replicas` scheduler replicas."""
    with harness.platform(
        [Scheduler], nodes, scheduler_replicas=replicas, scheduler_fires_in_flight=IN_FLIGHT, fire_timeout_s=30.0
    ) as platform:
        settings = platform.settings
        wait_for(lambda: len(holders(settings)) == 64, 60)
        made = tenants(platform, url, tenant_count)
        slot = int(time.time()) + 20
        cron = f"{slot % 60} {slot // 60 % 60} * * * *"

        async def schedules() -> None:
            await asyncio.gather(*(create_all(settings.redis_url, t, w, cron, slots // tenant_count) for t, w in made))

        asyncio.run(schedules())
        assert time.time() < slot, "creation took longer than the lead time"
        owners = holders(settings)
        share = {name: sum(1 for s in ALL_SHARDS if owners.get(s) == name) for name in sorted(set(owners.values()))}
        names = ["scheduler"] + [f"scheduler-{i}" for i in range(1, replicas)]
        placed = len({platform.subsystem(name)["node"] for name in names})
        wait_for(lambda: len(agent_stats(url)) >= slots, 900, interval_s=0.5, what="burst delivered")
        seen = agent_stats(url)
        last = max(seen.values()) - slot
        rate = slots / last
        print(
            f"  {replicas} replica(s) on {placed} node(s): {slots:,} delivered {last:.1f} s after the slot, "
            f"{rate:,.0f}/s (shards {share})"
        )
    urllib.request.urlopen(url + "reset", timeout=30).read()
    return rate


def rebalance(url: str, tenant_count: int, nodes: int) -> None:
    """3 replicas, steady load; SIGKILL one: seconds until every shard is held again."""
    with harness.platform(
        [Scheduler], nodes, scheduler_replicas=3, scheduler_fires_in_flight=IN_FLIGHT, fire_timeout_s=30.0
    ) as platform:
        settings = platform.settings
        tenants_with_work(platform, url, tenant_count, "* * * * * *", 5)
        wait_for(lambda: len(set(holders(settings).values())) == 3, 60)
        time.sleep(3)
        victim = platform.subsystem("scheduler-1")
        os.kill(victim["pid"], signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: platform.subsystem("scheduler-1")["pid"] != victim["pid"], 60, interval_s=0.05)
        wait_for(lambda: len(holders(settings)) == 64, 60, interval_s=0.05)
        print(
            f"  SIGKILL of scheduler-1: every shard held again {time.monotonic() - killed:.2f} s later "
            f"(Ray restarts the replica; it takes its own leases back at once)"
        )
        # A replica that cannot come back (its node is gone): the others take its shards when
        # its membership and its leases run out.
        before = holders(settings)
        lost = sorted(s for s, owner in before.items() if owner == "scheduler-2")
        NamedActor("scheduler-2", settings.ray_namespace).kill(restart=False)
        gone = time.monotonic()

        def taken() -> bool:
            now = holders(settings)
            return all(now.get(s) not in (None, "scheduler-2") for s in lost)

        wait_for(taken, 120, interval_s=0.05)
        print(
            f"  scheduler-2 gone for good: its {len(lost)} shards held by the others "
            f"{time.monotonic() - gone:.2f} s later (SHARD_LEASE_S {settings.shard_lease_s:g} s)"
        )
    urllib.request.urlopen(url + "reset", timeout=30).read()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slots", type=int, default=3_000)
    parser.add_argument("--tenants", type=int, default=300)
    parser.add_argument("--nodes", type=int, default=3, help="Ray nodes on this machine (1: a plain local Ray)")
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    agent = multiprocessing.get_context("spawn").Process(target=serve_agent, args=(port, ANSWER_S), daemon=True)
    agent.start()
    wait_for(lambda: agent_stats(url) == {}, 30)
    try:
        print(
            f"scheduler replicas: {args.slots:,} slots due at once over {args.tenants} tenants, "
            f"an agent answering after {ANSWER_S:g} s, {IN_FLIGHT} fires in flight per replica, "
            f"a Ray of {args.nodes} node(s)"
        )
        rates = {n: burst(url, n, args.tenants, args.slots, args.nodes) for n in (1, 2, 3)}
        for n in (2, 3):
            print(f"  ratio {n} replicas / 1 replica: {rates[n] / rates[1]:.2f}x")
        rebalance(url, args.tenants // 5, args.nodes)
    finally:
        agent.terminate()
        agent.join(10)


if __name__ == "__main__":
    main()
