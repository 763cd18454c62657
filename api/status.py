"""GET /status: the operators' page, one self-contained HTML file (no external assets).

The page itself holds nothing secret: it asks for the admin token, keeps it in the tab's
session storage and reads /admin/liveness and /admin/quarantine with it as a bearer header.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse

PAGE = (Path(__file__).parent / "status.html").read_bytes()
# Nothing from elsewhere: scripts and styles are the page's own, and it talks only to its origin.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
        "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE, headers=HEADERS)
