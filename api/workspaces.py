"""Workspace routes: a tenant's agents; another tenant's workspace is 404, a URL the egress refuses 422."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api import validate
from api.auth import owned, require_tenant
from api.context import context
from api.errors import ApiError, read_json
from store import workspaces

MAX_TOKEN = 4096


async def _checked(request: Request, body: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    """The editable fields present in `body` (all required ones unless `partial`), validated."""
    validate.no_unknown_fields(body, set(workspaces.EDITABLE))
    out: dict[str, Any] = {}
    if "name" in body or not partial:
        out["name"] = validate.text(body, "name", required=True, max_len=200)
    for field, required in (("url", True), ("restart_url", False)):
        if field in body or not partial:
            out[field] = validate.http_url(body, field, required=required)
            if out[field] is not None and (why := await context(request).backend.refuse_url(out[field])):
                raise ApiError(422, f"{field}: {why}")
    if "a2a_version" in body or not partial:
        out["a2a_version"] = validate.choice(body, "a2a_version", workspaces.A2A_VERSIONS, "1.0")
    if "auth_token" in body or not partial:
        token = validate.text(body, "auth_token", required=False, max_len=MAX_TOKEN)
        if token is not None and (not token.isprintable() or any(c.isspace() for c in token)):
            raise ApiError(422, "auth_token: printable characters without spaces (sent as a bearer token)")
        out["auth_token"] = token
    return out


async def create(request: Request) -> JSONResponse:
    tenant_id = await require_tenant(request)
    body = validate.json_object(await read_json(request))
    record = await _checked(request, body, partial=False)
    ctx = context(request)
    limit = (await ctx.share(tenant_id))["workspaces"]
    created = await workspaces.create(ctx.redis, ctx.secret_box, tenant_id, record, limit=limit)
    return JSONResponse(created, status_code=201)


async def list_all(request: Request) -> JSONResponse:
    tenant_id = await require_tenant(request)
    cursor, limit = validate.page(request)
    found, next_cursor = await workspaces.list_for(context(request).redis, tenant_id, after=cursor, limit=limit)
    return JSONResponse({"workspaces": found, "next_cursor": next_cursor})


async def _own(request: Request) -> tuple[str, dict[str, str]]:
    return await owned(request, "workspace_id", workspaces.get, "workspace")


async def get(request: Request) -> JSONResponse:
    _, fields = await _own(request)
    return JSONResponse(workspaces.public(fields))


async def patch(request: Request) -> JSONResponse:
    tenant_id, fields = await _own(request)
    changes = await _checked(request, validate.json_object(await read_json(request)), partial=True)
    ctx = context(request)
    updated = await workspaces.patch(ctx.redis, ctx.secret_box, tenant_id, fields["id"], changes)
    if updated is None:
        raise ApiError(404, "workspace not found")
    return JSONResponse(updated)


async def delete(request: Request) -> Response:
    tenant_id, fields = await _own(request)
    await workspaces.delete(context(request).redis, tenant_id, fields["id"])
    return Response(status_code=204)


async def heartbeat(request: Request) -> Response:
    tenant_id, fields = await _own(request)
    ctx = context(request)
    await workspaces.heartbeat(ctx.redis, tenant_id, fields["id"], ctx.workspace_ttl_s, ctx.events_max_per_tenant)
    return Response(status_code=204)
