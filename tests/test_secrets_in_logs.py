"""No secret reaches a log: tenant tokens, bearer tokens, bot tokens, credentials and queries in URLs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import ray
from websockets.asyncio.client import connect

from actors.broadcaster import Broadcaster
from actors.channels.manager import ChannelManager
from actors.liveness_monitor import LivenessMonitor
from actors.scheduler import Scheduler
from store.embedded import free_port
from tests.chat_apis import ChatApis
from tests.support import start_platform, wait_for
from tests.ws_client import ws_url


def logs_dir() -> Path:
    """The session's Ray logs: every actor's output, the raylet's, the GCS's."""
    return Path(ray._private.worker._global_node.get_logs_dir_path())  # type: ignore[attr-defined]


def files_holding(secrets: dict[str, str], directory: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in directory.rglob("*"):
        if path.is_file():
            text = path.read_bytes()
            for name, secret in secrets.items():
                if secret.encode() in text:
                    found.setdefault(name, []).append(str(path))
    return found


async def test_no_secret_of_a_busy_run_is_in_any_log(
    ray_session: dict, redis_url: str, apis: ChatApis, tmp_path: Path
) -> None:
    platform = start_platform(
        redis_url,
        tmp_path / "data",
        subsystems=[Scheduler, Broadcaster, LivenessMonitor, ChannelManager],
        telegram_api_base=apis.telegram_base,
        workspace_ttl_s=1.0,
        liveness_scan_interval_s=1.0,
        fire_timeout_s=1.0,
    )
    closed_port = free_port()  # nothing listens: every request to it fails, and failures get logged
    secrets = {
        "restart query": "q-9d1c0e7f2b",
        "bearer": "bearer-6f2d8a1c9e",
        "bot secret": "AAHsecret7c3e9a1f5b2d4e6a8c0b1d3f",
    }
    try:
        tenant = platform.new_tenant("secretive")
        secrets["tenant token"] = tenant["token"]
        body = {
            "name": "w",
            "url": f"http://127.0.0.1:{closed_port}/a2a?sig={secrets['restart query']}",
            "restart_url": f"http://127.0.0.1:{closed_port}/restart?key={secrets['restart query']}",
            "auth_token": secrets["bearer"],
        }
        status, ws = await asyncio.to_thread(platform.tenant_post, tenant, "/workspaces", body)
        assert status == 201, ws
        schedule = {"workspace_id": ws["id"], "name": "s", "cron": "* * * * * *", "prompt": "p"}
        assert (await asyncio.to_thread(platform.tenant_post, tenant, "/schedules", schedule))[0] == 201
        bot = f"6060:{secrets['bot secret']}"
        apis.bot(bot)
        channel = {"workspace_id": ws["id"], "type": "telegram", "config": {"bot_token": bot}}
        status, created = await asyncio.to_thread(platform.tenant_post, tenant, "/channels", channel)
        assert status == 201, created
        apis.send(bot, 1, "hello")  # relayed to the dead workspace: an error on the way back
        # A WebSocket with its token in the query string, a heartbeat so the workspace goes offline
        # and its restart request fails, then the bot revoked so the channel is quarantined.
        async with connect(ws_url(platform.url, token=tenant["token"])) as socket:
            await socket.ping()
        assert (await asyncio.to_thread(platform.post, f"/workspaces/{ws['id']}/heartbeat", token=tenant["token"]))[
            0
        ] == 204

        def restart_given_up() -> bool:
            found = platform.tenant_get(tenant, f"/workspaces/{ws['id']}")[1]
            return found["status"] == "offline"

        await asyncio.to_thread(wait_for, restart_given_up, 30, what="offline, its restart request failing")
        await asyncio.to_thread(
            wait_for, lambda: apis.replies(bot, 1), 60, what="the chat told the workspace did not answer"
        )
        apis.revoke(bot)
        await asyncio.to_thread(
            wait_for,
            lambda: platform.tenant_get(tenant, f"/channels/{created['id']}")[1]["status"] == "quarantined",
            60,
            what="the channel quarantined",
        )
        # The quarantine is logged last: once its line is in a file, what came before is too.
        marker = {"quarantine": f"channel {created['id']} quarantined"}
        await asyncio.to_thread(wait_for, lambda: files_holding(marker, logs_dir()), 30, what="the logs written")
    finally:
        platform.close()
    assert files_holding(secrets, logs_dir()) == {}
