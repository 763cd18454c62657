"""An HTTP server for tests in a thread of its own, on any loopback address, counting the connections it accepts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpServer:
    """Serves `routes` (path -> handler, any method) on `host`; `url` is its base, `connections` its count."""

    def __init__(self, routes: dict[str, Handler], host: str = "127.0.0.1") -> None:
        self.host = host
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_route("*", path, handler)
        self._runner = web.AppRunner(app, access_log=None)
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        if not started.wait(10):
            raise RuntimeError(f"the test HTTP server on {host} did not start")

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._runner.setup())
        handlers = self._runner.server

        def accepted() -> asyncio.Protocol:
            self.connections += 1
            return handlers()  # type: ignore[return-value]

        self._server = self.loop.run_until_complete(self.loop.create_server(accepted, self.host, 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        started.set()
        self.loop.run_forever()

    def stop(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
