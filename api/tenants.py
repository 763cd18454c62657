"""Tenant routes: creation by the admin, and bearer-token authentication of tenant requests."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from api import validate
from api.auth import require_admin
from api.errors import ApiError, read_json
from store import tenants


async def create(request: Request) -> JSONResponse:
    require_admin(request)
    body = validate.json_object(await read_json(request))
    validate.no_unknown_fields(body, {"name"})
    name = validate.text(body, "name", required=True, max_len=200)
    tenant = await tenants.create_tenant(request.app.state.redis, name)
    return JSONResponse({"id": tenant["id"], "name": tenant["name"], "token": tenant["token"]}, status_code=201)


async def require_tenant(request: Request) -> str:
    """The tenant id of the request's bearer token; 401 without a valid one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing bearer token")
    tenant_id = await tenants.tenant_for_token(request.app.state.redis, token.strip())
    if tenant_id is None:
        raise ApiError(401, "invalid token")
    return tenant_id
