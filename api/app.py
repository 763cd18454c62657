"""App factory: the platform's Starlette app with its explicit route list."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute

from api import admin, channels, events, probes, schedules, status, stream, tenants, webhooks, workspaces
from api.context import ApiContext
from api.errors import EXCEPTION_HANDLERS


def create_app(context: ApiContext) -> Starlette:
    """Build the app; it holds no globals: handlers read `context` (api.context.context)."""
    routes = [
        Route("/livez", probes.livez, methods=["GET"]),
        Route("/readyz", probes.readyz, methods=["GET"]),
        Route("/status", status.page, methods=["GET"]),
        Route("/admin/liveness", admin.liveness, methods=["GET"]),
        Route("/admin/faults", admin.faults, methods=["POST"]),
        Route("/admin/quarantine", admin.quarantine, methods=["GET"]),
        Route("/admin/quarantine/release", admin.release, methods=["POST"]),
        Route("/admin/tenants", tenants.create, methods=["POST"]),
        Route("/admin/tenants", tenants.list_all, methods=["GET"]),
        Route("/admin/tenants/{tenant_id}", tenants.get, methods=["GET"]),
        Route("/admin/tenants/{tenant_id}", tenants.patch, methods=["PATCH"]),
        Route("/admin/tenants/{tenant_id}", tenants.delete, methods=["DELETE"]),
        Route("/tenant", tenants.own, methods=["GET"]),
        Route("/admin/tenants/{tenant_id}/token", tenants.new_token, methods=["POST"]),
        Route("/workspaces", workspaces.list_all, methods=["GET"]),
        Route("/workspaces", workspaces.create, methods=["POST"]),
        Route("/workspaces/{workspace_id}", workspaces.get, methods=["GET"]),
        Route("/workspaces/{workspace_id}", workspaces.patch, methods=["PATCH"]),
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
    app.state.context = context
    return app
