"""App factory: the platform's Starlette app with its explicit route list."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route

from api import admin, probes
from api.backend import Backend
from api.errors import EXCEPTION_HANDLERS


def create_app(backend: Backend, *, admin_token: str, fault_injection: bool) -> Starlette:
    """Build the app; it holds no globals, everything comes in through the arguments."""
    routes = [
        Route("/livez", probes.livez, methods=["GET"]),
        Route("/readyz", probes.readyz, methods=["GET"]),
        Route("/admin/liveness", admin.liveness, methods=["GET"]),
        Route("/admin/faults", admin.faults, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)  # type: ignore[arg-type]
    app.state.backend = backend
    app.state.admin_token = admin_token
    app.state.fault_injection = fault_injection
    return app
