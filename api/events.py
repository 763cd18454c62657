"""Event routes: a tenant's agents publish their own events to the tenant's stream."""

from __future__ import annotations

import json
import re

from starlette.requests import Request
from starlette.responses import JSONResponse

from api import validate
from api.auth import require_tenant
from api.context import context
from api.errors import ApiError, read_json
from store import events

EVENT_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
MAX_PAYLOAD_BYTES = 64 * 1024


async def publish(request: Request) -> JSONResponse:
    tenant_id = await require_tenant(request)
    body = validate.json_object(await read_json(request))
    validate.no_unknown_fields(body, {"event", "workspace_id", "payload"})
    name = body.get("event")
    if not isinstance(name, str) or not EVENT_NAME.fullmatch(name):
        raise ApiError(422, "event: 1-64 characters of A-Z, 0-9 and _, starting with a letter")
    if name.startswith(events.RESERVED_PREFIXES):
        raise ApiError(422, f"event: names starting with {', '.join(events.RESERVED_PREFIXES)} are the platform's")
    if "payload" not in body:
        raise ApiError(422, "payload: required (any JSON value)")
    encoded = json.dumps(body["payload"], separators=(",", ":"))
    if len(encoded.encode("utf-8", errors="surrogatepass")) > MAX_PAYLOAD_BYTES:
        raise ApiError(422, f"payload: at most {MAX_PAYLOAD_BYTES} bytes of JSON")
    ctx = context(request)
    workspace_id = body.get("workspace_id")
    if workspace_id is not None:
        await validate.tenant_workspace(ctx.redis, tenant_id, workspace_id)
    per_s = (await ctx.share(tenant_id))["events_per_s"]
    stream_id = await events.append(
        ctx.redis, name, tenant_id, workspace_id, body["payload"], max_len=ctx.events_max_per_tenant, per_s=per_s
    )
    ctx.hub.appended += 1
    return JSONResponse({"id": stream_id}, status_code=202)
