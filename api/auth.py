"""Admin authentication: a bearer token compared in constant time, with no fail-open path."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from api.errors import ApiError


def require_admin(request: Request) -> None:
    """Raise 401 unless the request carries the admin bearer token."""
    expected: str = request.app.state.admin_token
    if not expected:
        raise ApiError(401, "admin token is not configured")
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise ApiError(401, "missing bearer token")
    if not hmac.compare_digest(presented.strip().encode(), expected.encode()):
        raise ApiError(401, "invalid admin token")
