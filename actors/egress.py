"""The one egress for requests to tenant-given URLs: checked addresses only, no redirects, bounded replies.

Every request the platform makes to a URL a tenant gave (schedule fires, health probes,
restart requests, the channel relay's A2A calls) goes through an `Egress`. The host is
resolved once, and only addresses that are globally routable, or inside
EGRESS_ALLOW_CIDRS, are connected to: aiohttp connects to the addresses the resolver
returned, so a name that resolves elsewhere the next time (DNS rebinding) gets nothing.
An IPv6 address that embeds an IPv4 one (mapped, 6to4, NAT64) is judged by the IPv4 one.
A 3xx is never followed, and a reply is read up to a byte limit after decompression.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import dns.asyncresolver
import dns.exception
import dns.resolver
from aiohttp.abc import AbstractResolver, ResolveResult

from settings import Settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Lookup = Callable[[str, int, int], Awaitable[list[ResolveResult]]]

SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
ALLOW_SETTING = "EGRESS_ALLOW_CIDRS"
READ_CHUNK = 64 * 1024


def embedded_ipv4(ip: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (IPv4-mapped, 6to4 or NAT64), if any."""
    if ip.version == 4:
        return None
    assert isinstance(ip, ipaddress.IPv6Address)
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in prefix for prefix in NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(ip: Address) -> str | None:
    """Why a request may not go to `ip` (its kind of address); None for a globally routable one."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        reason = refusal(inner)
        return None if reason is None else f"{reason}, embedded in {ip}"
    for kind, refused in (
        ("multicast", ip.is_multicast),
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("shared", ip.version == 4 and ip in SHARED),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not globally routable", not ip.is_global),
    ):
        if refused:
            return kind
    return None


@dataclass(frozen=True)
class EgressPolicy:
    """Which addresses requests may go to: globally routable ones, and those inside `allow`."""

    allow: tuple[Network, ...] = ()

    @property
    def allows_all(self) -> bool:
        return any(n.prefixlen == 0 for n in self.allow if n.version == 4) and any(
            n.prefixlen == 0 for n in self.allow if n.version == 6
        )

    def check(self, ip: Address) -> str | None:
        """None if a request may go to `ip`; otherwise why not, naming the setting that would allow it."""
        if self.allows_all:
            return None
        inner = embedded_ipv4(ip)
        if any(ip in n for n in self.allow) or (inner is not None and any(inner in n for n in self.allow)):
            return None
        reason = refusal(ip)
        return None if reason is None else f"address not allowed: {ip} is {reason} (allow it with {ALLOW_SETTING})"


class AddressNotAllowed(OSError):
    """Every address of the host is refused; nothing was sent."""


class GuardedResolver(AbstractResolver):
    """Resolves once and hands aiohttp only the addresses the policy allows (it connects to those)."""

    def __init__(self, policy: EgressPolicy, lookup: Lookup) -> None:
        self.policy = policy
        self._lookup = lookup

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        found = await self._lookup(host, port, family)
        allowed = [r for r in found if self.policy.check(ipaddress.ip_address(r["host"])) is None]
        if not allowed:
            reasons = {self.policy.check(ipaddress.ip_address(r["host"])) for r in found} - {None}
            raise AddressNotAllowed(f"{host}: " + ("; ".join(sorted(reasons)) or "no address"))  # type: ignore[arg-type]
        return allowed

    async def close(self) -> None:
        pass


def system_lookup() -> Lookup:
    """The machine's resolver (getaddrinfo), as aiohttp's ThreadedResolver does it."""
    threaded = aiohttp.ThreadedResolver()

    async def lookup(host: str, port: int, family: int) -> list[ResolveResult]:
        return await threaded.resolve(host, port, socket.AddressFamily(family))

    return lookup


def nameserver_lookup(nameserver: str, timeout_s: float = 2.0) -> Lookup:
    """A DNS server of the operator's choosing (`ip:port`) answers instead of the machine's resolver."""
    ip, _, port = nameserver.rpartition(":")
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [ip.strip("[]")]
    resolver.port = int(port)
    resolver.lifetime = timeout_s

    async def lookup(host: str, port: int, family: int) -> list[ResolveResult]:
        results: list[ResolveResult] = []
        for kind, fam in (("A", socket.AF_INET), ("AAAA", socket.AF_INET6)):
            if family not in (socket.AF_UNSPEC, fam):
                continue
            try:
                answer = await resolver.resolve(host, kind)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as exc:
                raise OSError(f"{host}: {exc}") from None
            results += [
                ResolveResult(
                    hostname=host, host=r.address, port=port, family=fam, proto=0, flags=socket.AI_NUMERICHOST
                )
                for r in answer
            ]
        if not results:
            raise OSError(f"{host}: no address")
        return results

    return lookup


@dataclass(frozen=True)
class Reply:
    """A reply from a tenant's URL: a non-3xx status and the body (at most the byte limit)."""

    status: int
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        """The body as JSON; ValueError for one that is not JSON or nested too deep."""
        try:
            return json.loads(self.body)
        except RecursionError:
            raise ValueError("JSON nested too deep") from None


class EgressError(Exception):
    """A request to a tenant's URL that failed; its message is the item's error (no secret in it)."""


def public_url(url: str) -> str:
    """`url` without credentials, query or fragment: what errors and logs may say of it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class Egress:
    """An HTTP client for tenant-given URLs under an EgressPolicy (see the module docstring).

    `open()` creates its session (connections pooled up to `limit`), `close()` ends it.
    Every failure of a request is an EgressError; an answer with any status but 3xx is a Reply.
    """

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        max_response_bytes: int,
        lookup: Lookup | None = None,
        limit: int = 100,
        force_close: bool = False,
    ) -> None:
        self.policy = policy
        self.max_response_bytes = max_response_bytes
        self.resolver = GuardedResolver(policy, lookup or system_lookup())
        self._limit = limit
        self._force_close = force_close
        self._session: aiohttp.ClientSession | None = None
        self.refused = 0
        self.stale_retries = 0  # requests sent again after a pooled connection turned out closed

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(resolver=self.resolver, limit=self._limit, force_close=self._force_close)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def check_url(self, url: str) -> str | None:
        """Why requests to `url` would be refused now (resolving its host), or None if they may go.

        A name that does not resolve (yet) is not refused here: every request resolves again
        and is refused then if it must be.
        """
        host = urlsplit(url).hostname or ""
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            return self.policy.check(literal)
        try:
            await self.resolver.resolve(host, 0, socket.AF_UNSPEC)
        except AddressNotAllowed as exc:
            return f"address not allowed: {exc}"
        except OSError:
            return None
        return None

    async def request(
        self,
        method: str,
        url: str,
        *,
        timeout_s: float,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """One request; a Reply, or EgressError (refused, unreachable, too slow, a redirect, too large)."""
        assert self._session is not None, "Egress.open() first"
        host = urlsplit(url).hostname or ""
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None and (why := self.policy.check(literal)) is not None:
            self.refused += 1
            raise EgressError(why)
        try:
            async with asyncio.timeout(timeout_s):
                for attempt in (1, 2):
                    try:
                        async with self._session.request(
                            method, url, json=json_body, headers=dict(headers or {}), allow_redirects=False
                        ) as response:
                            if 300 <= response.status < 400:
                                raise EgressError(f"redirect not followed (HTTP {response.status})")
                            return Reply(response.status, await self._read(response))
                    except aiohttp.ServerDisconnectedError:
                        # The server closed a pooled keep-alive connection as the request went out
                        # (no answer came back): once more, on a new connection. An agent whose
                        # keep-alive timeout equals a schedule's period meets this at every fire.
                        if attempt == 2:
                            raise
                        self.stale_retries += 1
                raise AssertionError("unreachable")
        except TimeoutError:
            raise EgressError(f"no answer within {timeout_s:g} s") from None
        except aiohttp.ClientConnectorDNSError as exc:
            if isinstance(exc.__cause__, AddressNotAllowed):
                self.refused += 1
                raise EgressError(f"address not allowed: {exc.__cause__}") from None
            raise EgressError(f"cannot resolve {host}: {exc.os_error}") from None
        except aiohttp.ClientError as exc:
            raise EgressError(f"{type(exc).__name__}: {_without_url(exc, url)}") from None
        except ValueError as exc:  # a request aiohttp will not build (say, credentials twice): this item's error
            raise EgressError(f"request refused: {_without_url(exc, url)}") from None

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        body = bytearray()
        async for chunk in response.content.iter_chunked(READ_CHUNK):
            body += chunk
            if len(body) > self.max_response_bytes:
                raise EgressError(f"response too large (over {self.max_response_bytes} bytes)")
        return bytes(body)


def _without_url(exc: Exception, url: str) -> str:
    """An aiohttp error's text with the URL's credentials and query cut out."""
    return str(exc).replace(url, public_url(url))


def egress_for(settings: Settings, *, limit: int = 100, force_close: bool = False) -> Egress:
    """The egress `settings` describe: EGRESS_ALLOW_CIDRS, EGRESS_MAX_RESPONSE_BYTES, EGRESS_NAMESERVER."""
    policy = EgressPolicy(tuple(ipaddress.ip_network(c) for c in settings.egress_allow_cidrs))
    lookup = nameserver_lookup(settings.egress_nameserver) if settings.egress_nameserver else None
    return Egress(
        policy,
        max_response_bytes=settings.egress_max_response_bytes,
        lookup=lookup,
        limit=limit,
        force_close=force_close,
    )
