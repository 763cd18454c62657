"""Tenant routes: creation by the admin."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from api import validate
from api.auth import require_admin
from api.context import context
from api.errors import read_json
from store import tenants


async def create(request: Request) -> JSONResponse:
    require_admin(request)
    body = validate.json_object(await read_json(request))
    validate.no_unknown_fields(body, {"name"})
    name = validate.text(body, "name", required=True, max_len=200)
    tenant = await tenants.create_tenant(context(request).redis, name)
    return JSONResponse({"id": tenant["id"], "name": tenant["name"], "token": tenant["token"]}, status_code=201)
