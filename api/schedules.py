"""Schedule routes: a tenant's cron schedules; bad cron, zone or workspace is 422 naming it."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api import validate
from api.auth import owned, require_tenant
from api.context import context
from api.errors import ApiError, read_json
from store import schedules


async def _checked(request: Request, tenant_id: str, body: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    """Validate the editable fields present in `body` (all required fields unless `partial`)."""
    validate.no_unknown_fields(body, set(schedules.EDITABLE))
    out: dict[str, Any] = {}
    required = not partial
    for field, max_len in (("workspace_id", 64), ("name", 200), ("cron", 200), ("prompt", 100_000)):
        if field in body or required:
            out[field] = validate.text(body, field, required=True, max_len=max_len)
    if "timezone" in body or required:
        out["timezone"] = validate.text(body, "timezone", required=True, max_len=64, default="UTC")
    if "enabled" in body or required:
        out["enabled"] = validate.flag(body, "enabled", True)
    if "workspace_id" in out:
        await validate.tenant_workspace(context(request).redis, tenant_id, out["workspace_id"])
    return out


async def create(request: Request) -> JSONResponse:
    tenant_id = await require_tenant(request)
    body = validate.json_object(await read_json(request))
    record = await _checked(request, tenant_id, body, partial=False)
    ctx = context(request)
    limit = (await ctx.share(tenant_id))["schedules"]
    try:
        created = await schedules.create(ctx.redis, tenant_id, record, time.time(), limit=limit)
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None
    return JSONResponse(created, status_code=201)


async def list_all(request: Request) -> JSONResponse:
    tenant_id = await require_tenant(request)
    cursor, limit = validate.page(request)
    found, next_cursor = await schedules.list_for(context(request).redis, tenant_id, after=cursor, limit=limit)
    return JSONResponse({"schedules": found, "next_cursor": next_cursor})


async def _own(request: Request) -> tuple[str, dict[str, str]]:
    return await owned(request, "schedule_id", schedules.get, "schedule")


async def get(request: Request) -> JSONResponse:
    _, fields = await _own(request)
    return JSONResponse(schedules.public(fields))


async def patch(request: Request) -> JSONResponse:
    tenant_id, fields = await _own(request)
    body = validate.json_object(await read_json(request))
    changes = await _checked(request, tenant_id, body, partial=True)
    try:
        updated = await schedules.patch(context(request).redis, tenant_id, fields["id"], changes, time.time())
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None
    if updated is None:
        raise ApiError(404, "schedule not found")
    return JSONResponse(updated)


async def delete(request: Request) -> Response:
    tenant_id, fields = await _own(request)
    await schedules.delete(context(request).redis, tenant_id, fields["id"])
    return Response(status_code=204)
