"""Channel routes: a tenant's Telegram bots and Slack apps; secrets go in, never come out."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api import validate
from api.auth import owned, require_tenant
from api.context import context
from api.errors import ApiError, read_json
from store import channels


async def _checked(
    request: Request, tenant_id: str, body: dict[str, Any], *, channel_type: str | None
) -> dict[str, Any]:
    """Validate the fields present in `body`; all required ones on create (`channel_type` None)."""
    validate.no_unknown_fields(body, set(channels.EDITABLE))
    creating = channel_type is None
    out: dict[str, Any] = {}
    if creating:
        out["type"] = validate.choice(body, "type", channels.TYPES, "")
    elif "type" in body and body["type"] != channel_type:
        raise ApiError(422, "type: cannot change; create a new channel instead")
    kind = out.get("type", channel_type)
    if "workspace_id" in body or creating:
        out["workspace_id"] = validate.text(body, "workspace_id", required=True, max_len=64)
        await validate.tenant_workspace(context(request).redis, tenant_id, out["workspace_id"])
    try:
        if "config" in body or creating:
            out["config"] = channels.check_config(kind, body.get("config"))
            if kind == "telegram" and (why := await context(request).backend.verify_bot(out["config"]["bot_token"])):
                # Bound only with a token Telegram accepts: nobody can hold another tenant's bot id.
                raise ApiError(422, f"config.bot_token: {why}")
        if "allowed_chats" in body or creating:
            out["allowed_chats"] = channels.check_allowed_chats(body.get("allowed_chats"))
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None
    if "enabled" in body or creating:
        out["enabled"] = validate.flag(body, "enabled", True)
    return out


async def create(request: Request) -> JSONResponse:
    tenant_id = await require_tenant(request)
    body = validate.json_object(await read_json(request))
    record = await _checked(request, tenant_id, body, channel_type=None)
    state = context(request)
    limit = (await state.share(tenant_id))["channels"]
    try:
        created = await channels.create(state.redis, state.secret_box, tenant_id, record, time.time(), limit=limit)
    except channels.BotTaken as exc:
        raise ApiError(409, str(exc)) from None
    return JSONResponse(created, status_code=201)


async def list_all(request: Request) -> JSONResponse:
    tenant_id = await require_tenant(request)
    cursor, limit = validate.page(request)
    found, next_cursor = await channels.list_for(context(request).redis, tenant_id, after=cursor, limit=limit)
    return JSONResponse({"channels": found, "next_cursor": next_cursor})


async def _own(request: Request) -> tuple[str, dict[str, str]]:
    return await owned(request, "channel_id", channels.get, "channel")


async def get(request: Request) -> JSONResponse:
    _, fields = await _own(request)
    return JSONResponse(channels.public(fields))


async def patch(request: Request) -> JSONResponse:
    tenant_id, fields = await _own(request)
    body = validate.json_object(await read_json(request))
    changes = await _checked(request, tenant_id, body, channel_type=fields.get("type", ""))
    state = context(request)
    try:
        updated = await channels.patch(state.redis, state.secret_box, tenant_id, fields["id"], changes, time.time())
    except channels.BotTaken as exc:
        raise ApiError(409, str(exc)) from None
    if updated is None:
        raise ApiError(404, "channel not found")
    return JSONResponse(updated)


async def delete(request: Request) -> Response:
    tenant_id, fields = await _own(request)
    await channels.delete(context(request).redis, tenant_id, fields["id"], fields.get("bot_id", ""))
    return Response(status_code=204)
