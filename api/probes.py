"""Probe routes: /livez (this process serves) and /readyz (every expected subsystem healthy)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from api.backend import Unavailable
from api.context import context


async def livez(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    backend = context(request).backend
    if backend.draining:
        return JSONResponse({"status": "unready", "unhealthy": [], "draining": True}, status_code=503)
    try:
        readiness = await backend.readiness()
    except Unavailable as exc:
        return JSONResponse({"status": "unready", "unhealthy": [], "error": str(exc)}, status_code=503)
    if not readiness["ready"]:
        body = {"status": "unready", "unhealthy": readiness["unhealthy"]}
        if readiness.get("error"):
            body["error"] = readiness["error"]
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ready"})
