"""App factory: the platform's Starlette app with its explicit route list."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute

from api import admin, channels, events, probes, schedules, stream, tenants, webhooks, workspaces
from api.backend import Backend
from api.errors import EXCEPTION_HANDLERS
from api.hub import Hub
from store.secrets import SecretBox


def create_app(
    backend: Backend,
    *,
    redis: Any,
    admin_token: str,
    fault_injection: bool,
    workspace_ttl_s: float,
    events_max_per_tenant: int,
    ws_queue_size: int,
    broadcast_positions_key: str,
    secret_box: SecretBox,
) -> Starlette:
    """Build the app; it holds no globals, everything comes in through the arguments."""
    routes = [
        Route("/livez", probes.livez, methods=["GET"]),
        Route("/readyz", probes.readyz, methods=["GET"]),
        Route("/admin/liveness", admin.liveness, methods=["GET"]),
        Route("/admin/faults", admin.faults, methods=["POST"]),
        Route("/admin/tenants", tenants.create, methods=["POST"]),
        Route("/workspaces", workspaces.list_all, methods=["GET"]),
        Route("/workspaces", workspaces.create, methods=["POST"]),
        Route("/workspaces/{workspace_id}", workspaces.get, methods=["GET"]),
        Route("/workspaces/{workspace_id}", workspaces.delete, methods=["DELETE"]),
        Route("/workspaces/{workspace_id}/heartbeat", workspaces.heartbeat, methods=["POST"]),
        Route("/schedules", schedules.list_all, methods=["GET"]),
        Route("/schedules", schedules.create, methods=["POST"]),
        Route("/schedules/{schedule_id}", schedules.get, methods=["GET"]),
        Route("/schedules/{schedule_id}", schedules.patch, methods=["PATCH"]),
        Route("/schedules/{schedule_id}", schedules.delete, methods=["DELETE"]),
        Route("/channels", channels.list_all, methods=["GET"]),
        Route("/channels", channels.create, methods=["POST"]),
        Route("/channels/{channel_id}", channels.get, methods=["GET"]),
        Route("/channels/{channel_id}", channels.patch, methods=["PATCH"]),
        Route("/channels/{channel_id}", channels.delete, methods=["DELETE"]),
        Route("/webhooks/slack/{channel_id}", webhooks.slack, methods=["POST"]),
        Route("/events", events.publish, methods=["POST"]),
        WebSocketRoute("/ws", stream.subscribe),
        Route("/ws", stream.needs_upgrade, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)  # type: ignore[arg-type]
    app.state.backend = backend
    app.state.redis = redis
    app.state.admin_token = admin_token
    app.state.fault_injection = fault_injection
    app.state.workspace_ttl_s = workspace_ttl_s
    app.state.events_max_per_tenant = events_max_per_tenant
    app.state.hub = Hub(ws_queue_size)
    app.state.broadcast_positions_key = broadcast_positions_key
    app.state.secret_box = secret_box
    return app
