"""api.listener: every accepted connection has TCP_NODELAY and TCP_USER_TIMEOUT, on IPv4 and IPv6."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from api.listener import listening_socket, tcp_options


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_accepted_connections_have_nodelay_and_the_user_timeout(host: str) -> None:
    sock = listening_socket(host, 0, user_timeout_s=40)
    accepted: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def on_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(tcp_options(writer.get_extra_info("socket")))
        writer.close()

    server = await asyncio.start_server(on_accept, sock=sock)  # the way uvicorn serves it
    async with server:
        _, writer = await asyncio.open_connection(host, sock.getsockname()[1])
        options = await asyncio.wait_for(accepted, 5)
        writer.close()
    assert options == {"nodelay": 1, "user_timeout_ms": 40_000}


def test_a_port_in_use_is_an_error_and_leaves_no_socket_open() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        with pytest.raises(OSError):
            listening_socket("127.0.0.1", taken.getsockname()[1], user_timeout_s=1)
