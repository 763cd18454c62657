"""Who is calling: the admin (one bearer token) or a tenant (a token stored as its digest); no fail-open path."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import HTTPConnection, Request

from api.context import context
from api.errors import ApiError
from store import records, tenants


def bearer_token(connection: HTTPConnection) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if there is one."""
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def require_admin(request: Request) -> None:
    """Raise 401 unless the request carries the admin bearer token (compared in constant time)."""
    expected = context(request).admin_token
    if not expected:
        raise ApiError(401, "admin token is not configured")
    presented = bearer_token(request)
    if presented is None:
        raise ApiError(401, "missing bearer token")
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise ApiError(401, "invalid admin token")


async def tenant_of(connection: HTTPConnection, token: str | None) -> str | None:
    """The id of the tenant whose token this is; None for no token or an unknown one."""
    return await tenants.tenant_for_token(context(connection).redis, token) if token else None


async def require_tenant(request: Request) -> str:
    """The tenant id of the request's bearer token; 401 without a valid one."""
    token = bearer_token(request)
    if token is None:
        raise ApiError(401, "missing bearer token")
    tenant_id = await tenant_of(request, token)
    if tenant_id is None:
        raise ApiError(401, "invalid token")
    return tenant_id


async def owned(
    request: Request, param: str, read: Callable[[Any, str, str], Awaitable[dict[str, str] | None]], what: str
) -> tuple[str, dict[str, str]]:
    """The tenant and the record named by path parameter `param`; 404 unless the tenant owns it."""
    tenant_id = await require_tenant(request)
    record_id = request.path_params[param]
    fields = await read(context(request).redis, tenant_id, record_id) if records.is_id(record_id) else None
    if fields is None:
        raise ApiError(404, f"{what} not found")
    return tenant_id, fields
