"""JSON errors and request bodies: every failure is `{"error": message}` with a 4xx/5xx."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import redis.exceptions
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from api.backend import Unavailable
from store.quotas import QuotaExceeded
from store.scripts import translated

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024


class ApiError(Exception):
    """An expected failure with the status and message the client gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


async def read_body(request: Request, *, max_bytes: int = MAX_BODY_BYTES) -> bytes:
    """The request's raw body; 413 past `max_bytes` (read no further)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"request body is larger than {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise ApiError(413, f"request body is larger than {max_bytes} bytes")
    return bytes(body)


async def read_json(request: Request, *, max_bytes: int = MAX_BODY_BYTES) -> Any:
    """The request's JSON body; 413 past `max_bytes` (read no further), 400 if not JSON."""
    body = await read_body(request, max_bytes=max_bytes)
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deep") from None


async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error(exc.status, exc.message)


async def on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def on_storage_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("storage unavailable on %s %s: %s", request.method, request.url.path, exc)
    return error(503, "storage unavailable, try again")


async def on_store_full(request: Request, exc: Exception) -> JSONResponse:
    log.warning("store full on %s %s: %s", request.method, request.url.path, exc)
    return error(503, "store full")


async def on_unavailable(request: Request, exc: Exception) -> JSONResponse:
    return error(503, str(exc))


async def on_quota_exceeded(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QuotaExceeded)
    headers = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    return JSONResponse({"error": str(exc)}, status_code=429, headers=headers)


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(translated(exc), redis.exceptions.OutOfMemoryError):  # wrapped by a pipeline's script
        return await on_store_full(request, exc)
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error(500, "internal error")


EXCEPTION_HANDLERS = {
    ApiError: on_api_error,
    HTTPException: on_http_exception,
    redis.exceptions.ConnectionError: on_storage_down,
    redis.exceptions.TimeoutError: on_storage_down,
    redis.exceptions.OutOfMemoryError: on_store_full,
    Unavailable: on_unavailable,
    QuotaExceeded: on_quota_exceeded,
    Exception: on_unexpected,
}
