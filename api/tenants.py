"""Tenant routes: for the admin create, list, read, quotas and weight, a new token, delete;
for a tenant its own record, quotas and usage."""

from __future__ import annotations

import math
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api import validate
from api.auth import require_admin, require_tenant
from api.context import context
from api.errors import ApiError, read_json
from store import connections, quotas, records, tenants

MAX_QUOTA = 10_000_000


async def create(request: Request) -> JSONResponse:
    require_admin(request)
    body = validate.json_object(await read_json(request))
    validate.no_unknown_fields(body, {"name"})
    name = validate.text(body, "name", required=True, max_len=200)
    tenant = await tenants.create_tenant(context(request).redis, name)
    return JSONResponse({"id": tenant["id"], "name": tenant["name"], "token": tenant["token"]}, status_code=201)


async def list_all(request: Request) -> JSONResponse:
    require_admin(request)
    cursor, limit = validate.page(request)
    found, next_cursor = await tenants.list_all(context(request).redis, after=cursor, limit=limit)
    return JSONResponse({"tenants": found, "next_cursor": next_cursor})


async def _tenant_id(request: Request) -> str:
    require_admin(request)
    tenant_id = request.path_params["tenant_id"]
    if not records.is_id(tenant_id) or await tenants.get(context(request).redis, tenant_id) is None:
        raise ApiError(404, "tenant not found")
    return tenant_id


async def _described(request: Request, tenant_id: str) -> dict[str, Any]:
    """The tenant with its effective quotas, its weight and its usage of each."""
    ctx = context(request)
    found = await tenants.get(ctx.redis, tenant_id)
    if found is None:
        raise ApiError(404, "tenant not found")
    share = await ctx.share(tenant_id)
    used = await tenants.usage(ctx.redis, tenant_id)
    used["ws_connections"] = await connections.count(ctx.redis, tenant_id)
    return {**found, "quotas": quotas.public(share), "weight": share.weight, "usage": used}


async def get(request: Request) -> JSONResponse:
    tenant_id = await _tenant_id(request)
    return JSONResponse(await _described(request, tenant_id))


async def own(request: Request) -> JSONResponse:
    """`GET /tenant`: the caller's own tenant, quotas and usage."""
    tenant_id = await require_tenant(request)
    return JSONResponse(await _described(request, tenant_id))


async def patch(request: Request) -> JSONResponse:
    """Override quotas (a number; null: back to the default) and set the weight (1-100)."""
    tenant_id = await _tenant_id(request)
    body = validate.json_object(await read_json(request))
    validate.no_unknown_fields(body, {"quotas", "weight"})
    changes: dict[str, float | None] = {}
    given = body.get("quotas", {})
    if not isinstance(given, dict):
        raise ApiError(422, "quotas: an object of quota names to numbers (null: the default)")
    for name, value in given.items():
        if name not in quotas.NAMES:
            raise ApiError(422, f"quotas.{name}: not a quota; quotas are {', '.join(quotas.NAMES)}")
        if value is None:
            changes[name] = None
        elif name == "events_per_s" and _number(value) and 0 < value <= MAX_QUOTA:
            changes[name] = float(value)
        elif isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_QUOTA:
            changes[name] = value
        else:
            kind = "a number" if name == "events_per_s" else "a whole number"
            least = "above 0" if name == "events_per_s" else "from 1"
            raise ApiError(422, f"quotas.{name}: {kind} {least} to {MAX_QUOTA:,}, or null for the default")
    weight = body.get("weight")
    if weight is not None and (
        not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight <= quotas.MAX_WEIGHT
    ):
        raise ApiError(422, f"weight: a whole number from 1 to {quotas.MAX_WEIGHT}")
    ctx = context(request)
    if not await quotas.set_overrides(ctx.redis, tenant_id, changes, weight):
        raise ApiError(404, "tenant not found")
    ctx.forget_share(tenant_id)
    return JSONResponse(await _described(request, tenant_id))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


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
