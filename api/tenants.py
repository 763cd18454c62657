"""Tenant routes for the admin: create, list, read, a new token, delete."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api import validate
from api.auth import require_admin
from api.context import context
from api.errors import ApiError, read_json
from store import records, tenants


async def create(request: Request) -> JSONResponse:
    require_admin(request)
    body = validate.json_object(await read_json(request))
    validate.no_unknown_fields(body, {"name"})
    name = validate.text(body, "name", required=True, max_len=200)
    tenant = await tenants.create_tenant(context(request).redis, name)
    return JSONResponse({"id": tenant["id"], "name": tenant["name"], "token": tenant["token"]}, status_code=201)


async def list_all(request: Request) -> JSONResponse:
    require_admin(request)
    return JSONResponse({"tenants": await tenants.list_all(context(request).redis)})


async def _tenant_id(request: Request) -> str:
    require_admin(request)
    tenant_id = request.path_params["tenant_id"]
    if not records.is_id(tenant_id) or await tenants.get(context(request).redis, tenant_id) is None:
        raise ApiError(404, "tenant not found")
    return tenant_id


async def get(request: Request) -> JSONResponse:
    tenant_id = await _tenant_id(request)
    found = await tenants.get(context(request).redis, tenant_id)
    if found is None:
        raise ApiError(404, "tenant not found")
    return JSONResponse(found)


async def new_token(request: Request) -> JSONResponse:
    """A new token, shown once; the old one stops working now, and its WebSockets close (4401)."""
    tenant_id = await _tenant_id(request)
    ctx = context(request)
    token = await tenants.rotate_token(ctx.redis, tenant_id)
    if token is None:
        raise ApiError(404, "tenant not found")
    ctx.hub.revoke(tenant_id, "the tenant's token was replaced")
    return JSONResponse({"token": token})


async def delete(request: Request) -> Response:
    """The tenant and everything of it; its WebSockets close (4401)."""
    tenant_id = await _tenant_id(request)
    ctx = context(request)
    await tenants.delete(ctx.redis, tenant_id, ctx.namespace)
    ctx.hub.revoke(tenant_id, "the tenant was deleted")
    return Response(status_code=204)
