"""The API's listening socket: every accepted connection gets TCP_NODELAY and TCP_USER_TIMEOUT."""

from __future__ import annotations

import socket
from asyncio.trsock import TransportSocket

BACKLOG = 2048


def listening_socket(host: str, port: int, *, user_timeout_s: float, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to (host, port) and listening; raises OSError if it cannot bind.

    With `reuse_port` (SO_REUSEPORT), other sockets that ask for it too may listen on the same
    address, and the kernel spreads new connections over them: the API actors of several Ray
    nodes on one machine serve one port, as they would each on their own machine.

    It is created with protocol IPPROTO_TCP, not 0: asyncio turns TCP_NODELAY on for an
    accepted socket only when its protocol says TCP (`base_events._set_nodelay`), and
    `socket.create_server` leaves it 0. Without TCP_NODELAY, Nagle's algorithm holds the
    second segment of every response until the client's delayed ACK: 40 ms per request on
    a keep-alive connection. TCP_NODELAY is also set on the listener, which Linux copies to
    each accepted socket, as TCP_USER_TIMEOUT (where the OS has it): a peer that has not
    taken our data for `user_timeout_s` is dropped by the kernel, even when its receive
    window stays shut and a WebSocket close could never reach it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:  # as socket.create_server: IPv6 only, no dual stack
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(user_timeout_s * 1000))
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def tcp_options(sock: socket.socket | TransportSocket) -> dict[str, int | None]:
    """The options this module promises, as an accepted socket has them."""
    user_timeout = None
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        user_timeout = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
    return {"nodelay": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), "user_timeout_ms": user_timeout}
