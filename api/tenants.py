"""Tenant routes: creation by the admin, and bearer-token authentication of tenant requests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import HTTPConnection, Request
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


def bearer_token(connection: HTTPConnection) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if there is one."""
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def require_tenant(request: Request) -> str:
    """The tenant id of the request's bearer token; 401 without a valid one."""
    token = bearer_token(request)
    if token is None:
        raise ApiError(401, "missing bearer token")
    tenant_id = await tenants.tenant_for_token(request.app.state.redis, token)
    if tenant_id is None:
        raise ApiError(401, "invalid token")
    return tenant_id


async def owned(
    request: Request, param: str, read: Callable[[Any, str, str], Awaitable[dict[str, str] | None]], what: str
) -> tuple[str, dict[str, str]]:
    """The tenant and the record named by path parameter `param`; 404 unless the tenant owns it."""
    tenant_id = await require_tenant(request)
    record_id = request.path_params[param]
    fields = await read(request.app.state.redis, tenant_id, record_id) if validate.is_resource_id(record_id) else None
    if fields is None:
        raise ApiError(404, f"{what} not found")
    return tenant_id, fields
