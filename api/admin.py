"""Admin routes: /admin/liveness (the registry's view), /admin/faults (game days), /admin/quarantine."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.auth import require_admin
from api.backend import FAULTS, Encoded, FaultRefused, NotQuarantined, Unavailable, UnknownSubsystem
from api.context import context
from api.errors import ApiError, read_json


async def liveness(request: Request) -> Response:
    require_admin(request)
    try:
        body = await context(request).backend.liveness()
    except Unavailable as exc:
        raise ApiError(503, str(exc)) from None
    return encoded_response(request, body)


def encoded_response(request: Request, body: Encoded) -> Response:
    """The body gzipped if the client takes it (browsers and most HTTP clients do), else as is."""
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers = {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
        return Response(body.gzip, media_type="application/json", headers=headers)
    return Response(body.json, media_type="application/json", headers={"Vary": "Accept-Encoding"})


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


async def quarantine(request: Request) -> JSONResponse:
    """Every item a subsystem holds in quarantine; `unreachable` names subsystems that did not answer."""
    require_admin(request)
    try:
        return JSONResponse(await context(request).backend.quarantine())
    except Unavailable as exc:
        raise ApiError(503, str(exc)) from None


async def release(request: Request) -> JSONResponse:
    """Release one quarantined item: its subsystem works it again from its next tick."""
    require_admin(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(422, "body must be a JSON object")
    unknown = set(body) - {"subsystem", "key"}
    if unknown:
        raise ApiError(422, f"unknown field(s): {', '.join(sorted(unknown))}")
    subsystem, key = body.get("subsystem"), body.get("key")
    for name, value in (("subsystem", subsystem), ("key", key)):
        if not isinstance(value, str) or not value or len(value) > 256:
            raise ApiError(422, f"{name}: required, a string of 1 to 256 characters")
    assert isinstance(subsystem, str) and isinstance(key, str)
    try:
        await context(request).backend.release(subsystem, key)
    except (UnknownSubsystem, NotQuarantined):
        raise ApiError(404, f"{subsystem!r} holds no quarantined item {key!r}") from None
    except FaultRefused as exc:
        raise ApiError(409, f"{subsystem!r} could not release {key!r}: {exc}") from None
    except Unavailable as exc:
        raise ApiError(503, str(exc)) from None
    return JSONResponse({"subsystem": subsystem, "key": key, "released": True})
