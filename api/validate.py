"""Body validation for tenant routes: each failure is a 422 naming the field."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request

from api.errors import ApiError
from store import records, workspaces


def json_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(422, "body must be a JSON object")
    return body


def no_unknown_fields(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(body) - allowed
    if unknown:
        raise ApiError(422, f"unknown field(s): {', '.join(sorted(unknown))}")


def text(body: dict[str, Any], field: str, *, required: bool, max_len: int, default: str | None = None) -> str | None:
    value = body.get(field, default)
    if value is None:
        if required:
            raise ApiError(422, f"{field}: required")
        return None
    if not isinstance(value, str) or not value.strip():
        raise ApiError(422, f"{field}: must be a non-empty string")
    if len(value) > max_len:
        raise ApiError(422, f"{field}: at most {max_len} characters")
    if "\x00" in value:
        raise ApiError(422, f"{field}: must not contain NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(422, f"{field}: must be valid Unicode (no lone surrogates)") from None
    return value


def http_url(body: dict[str, Any], field: str, *, required: bool) -> str | None:
    value = text(body, field, required=required, max_len=2048)
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number in range)
    except ValueError:
        raise ApiError(422, f"{field}: not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(422, f"{field}: must be an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        # It would be stored and shown in clear: a workspace's credential goes in auth_token, sealed.
        raise ApiError(422, f"{field}: must not carry credentials (user:password@); use auth_token")
    return value


def choice(body: dict[str, Any], field: str, options: tuple[str, ...], default: str) -> str:
    value = body.get(field, default)
    if value not in options:
        raise ApiError(422, f"{field}: must be one of {', '.join(options)}")
    return value


def flag(body: dict[str, Any], field: str, default: bool) -> bool:
    value = body.get(field, default)
    if not isinstance(value, bool):
        raise ApiError(422, f"{field}: must be true or false")
    return value


async def tenant_workspace(redis: Any, tenant_id: str, value: Any, field: str = "workspace_id") -> str:
    """`value` as the id of one of the tenant's workspaces; 422 naming the field otherwise."""
    if not isinstance(value, str) or not records.is_id(value) or await workspaces.get(redis, tenant_id, value) is None:
        raise ApiError(422, f"{field}: no such workspace for this tenant")
    return value


PAGE_DEFAULT, PAGE_MAX = 100, 1000


def page(request: Request) -> tuple[str | None, int]:
    """`?cursor=` (a `next_cursor` from the page before) and `?limit=` (1-1000, default 100); 400 if bad."""
    raw_limit = request.query_params.get("limit")
    if raw_limit is None:
        limit = PAGE_DEFAULT
    elif raw_limit.isdigit() and 1 <= int(raw_limit) <= PAGE_MAX:
        limit = int(raw_limit)
    else:
        raise ApiError(400, f"limit: a whole number from 1 to {PAGE_MAX}, got {raw_limit[:40]!r}")
    cursor = request.query_params.get("cursor")
    if cursor is not None and not records.is_id(cursor):
        raise ApiError(400, "cursor: pass the next_cursor of the page before")
    return cursor, limit
