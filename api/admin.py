"""Admin routes: /admin/liveness (the registry's view) and /admin/faults (game days)."""

from __future__ import annotations

import asyncio
import json

import redis.exceptions
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.auth import require_admin
from api.backend import FAULTS, FaultRefused, Unavailable, UnknownSubsystem
from api.context import context
from api.errors import ApiError, read_json
from store.client import memory

STORE_DEADLINE_S = 1.0


async def liveness(request: Request) -> Response:
    require_admin(request)
    ctx = context(request)
    try:
        body = await ctx.backend.liveness()
    except Unavailable as exc:
        raise ApiError(503, str(exc)) from None
    try:
        store: dict[str, object] = await asyncio.wait_for(memory(ctx.redis), STORE_DEADLINE_S)
    except (TimeoutError, redis.exceptions.RedisError, OSError) as exc:
        store = {"reachable": False, "error": type(exc).__name__}
    # The registry's snapshot is shared, encoded once, by every request: the store's state goes in front.
    return Response(b'{"store":' + json.dumps(store).encode() + b"," + body[1:], media_type="application/json")


async def faults(request: Request) -> JSONResponse:
    if not context(request).fault_injection:
        raise ApiError(404, "not found")
    require_admin(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(422, "body must be a JSON object")
    subsystem, fault, seconds = body.get("subsystem"), body.get("fault"), body.get("seconds")
    if not isinstance(subsystem, str) or not subsystem:
        raise ApiError(422, "subsystem: required, a subsystem name")
    if fault not in FAULTS:
        raise ApiError(422, f"fault: must be one of {', '.join(FAULTS)}")
    if seconds is not None and (
        isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= 3600
    ):
        raise ApiError(422, "seconds: must be a number in (0, 3600]")
    unknown = set(body) - {"subsystem", "fault", "seconds"}
    if unknown:
        raise ApiError(422, f"unknown field(s): {', '.join(sorted(unknown))}")
    try:
        await context(request).backend.inject_fault(subsystem, fault, seconds)
    except UnknownSubsystem:
        raise ApiError(422, f"subsystem: unknown subsystem {subsystem!r}") from None
    except FaultRefused as exc:
        raise ApiError(409, f"subsystem {subsystem!r} refused the fault: {exc}") from None
    except Unavailable as exc:
        raise ApiError(503, str(exc)) from None
    return JSONResponse({"subsystem": subsystem, "fault": fault, "seconds": seconds}, status_code=202)
