"""Workspace routes: a tenant's agents; another tenant's workspace is 404."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api import validate
from api.auth import owned, require_tenant
from api.context import context
from api.errors import read_json
from store import workspaces

FIELDS = {"name", "url", "a2a_version", "restart_url"}


async def create(request: Request) -> JSONResponse:
    tenant_id = await require_tenant(request)
    body = validate.json_object(await read_json(request))
    validate.no_unknown_fields(body, FIELDS)
    record = {
        "name": validate.text(body, "name", required=True, max_len=200),
        "url": validate.http_url(body, "url", required=True),
        "a2a_version": validate.choice(body, "a2a_version", workspaces.A2A_VERSIONS, "1.0"),
        "restart_url": validate.http_url(body, "restart_url", required=False),
    }
    created = await workspaces.create(context(request).redis, tenant_id, record)
    return JSONResponse(created, status_code=201)


async def list_all(request: Request) -> JSONResponse:
    tenant_id = await require_tenant(request)
    return JSONResponse({"workspaces": await workspaces.list_for(context(request).redis, tenant_id)})


async def _own(request: Request) -> tuple[str, dict[str, str]]:
    return await owned(request, "workspace_id", workspaces.get, "workspace")


async def get(request: Request) -> JSONResponse:
    _, fields = await _own(request)
    return JSONResponse(workspaces.public(fields))


async def delete(request: Request) -> Response:
    tenant_id, fields = await _own(request)
    await workspaces.delete(context(request).redis, tenant_id, fields["id"])
    return Response(status_code=204)


async def heartbeat(request: Request) -> Response:
    tenant_id, fields = await _own(request)
    state = context(request)
    await workspaces.heartbeat(state.redis, tenant_id, fields["id"], state.workspace_ttl_s, state.events_max_per_tenant)
    return Response(status_code=204)
