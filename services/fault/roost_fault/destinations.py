"""Where webhooks may be delivered: never to this host, its cloud's metadata service or the
site's private networks, unless the admin allow-lists them (``ROOST_WEBHOOK_ALLOW_NETS``).

A subscription's URL is checked twice. When it is created, an address literal (or a
``localhost`` name) in a forbidden range is refused at once. At delivery, the host name is
resolved, every address it resolves to is checked, and the connection goes to the address that
was checked (a network backend for httpcore), so a name that resolves to a public address when
checked and to 127.0.0.1 a moment later (DNS rebinding) reaches nothing. Proxies from the
environment are not used and redirects are not followed, so neither can bounce a POST inward.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from urllib.parse import SplitResult, urlsplit, urlunsplit

import anyio
import httpcore
import httpx
from httpcore import AsyncNetworkStream
from httpcore._backends.auto import AutoBackend

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Forbidden ranges and why; the first match names the reason.
FORBIDDEN: list[tuple[Network, str]] = [
    (ipaddress.ip_network(net), why)
    for net, why in [
        ("0.0.0.0/8", "unspecified"),
        ("::/128", "unspecified"),
        ("127.0.0.0/8", "loopback"),
        ("::1/128", "loopback"),
        ("169.254.0.0/16", "link-local (cloud metadata)"),
        ("fe80::/10", "link-local"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("100.64.0.0/10", "private (carrier-grade NAT)"),
        ("fc00::/7", "private"),
        ("224.0.0.0/4", "multicast"),
        ("ff00::/8", "multicast"),
        ("240.0.0.0/4", "reserved"),
    ]
]


class DestinationRefused(Exception):
    """The webhook's destination is in a forbidden range and not allow-listed."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        self.host, self.address, self.reason = host, address, reason
        shown = address if host == address else f"{host} ({address})"
        super().__init__(
            f"destination {shown} is {reason}; refused (allow it with ROOST_WEBHOOK_ALLOW_NETS)"
        )


def refusal(address: Address, allowed: Sequence[Network]) -> str | None:
    """Why ``address`` may not be a webhook destination, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in net for net in allowed if net.version == address.version):
        return None
    for net, why in FORBIDDEN:
        if net.version == address.version and address in net:
            return why
    return None


def check_url(url: str, allowed: Sequence[Network]) -> None:
    """Refuse a URL whose host is a forbidden address literal or a ``localhost`` name (at
    creation; names are resolved and checked at delivery)."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        if refusal(ipaddress.ip_address("127.0.0.1"), allowed):
            raise DestinationRefused(host, "127.0.0.1", "loopback")
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return
    why = refusal(address, allowed)
    if why is not None:
        raise DestinationRefused(host, str(address), why)


def split_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without ``user:password@`` and the credentials, sent as basic auth (so no log
    line or error that names the URL carries them)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    return _without_userinfo(parts), (parts.username or "", parts.password or "")


def redacted(url: str) -> str:
    """The URL as a reader may see it: any userinfo becomes ``***``."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    bare = urlsplit(_without_userinfo(parts))
    return urlunsplit(bare._replace(netloc=f"***@{bare.netloc}"))


def _without_userinfo(parts: SplitResult) -> str:
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=netloc))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks and connects to the checked address (never resolving twice)."""

    def __init__(self, allowed: Sequence[Network]) -> None:
        self.allowed = list(allowed)
        self._inner = AutoBackend()

    async def resolve(self, host: str, port: int) -> list[Address]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        # anyio's resolver, as httpx's own connections use: its worker threads are apart from
        # the event loop's default executor, so slow look-ups do not hold up the database's.
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await self.resolve(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} took too long") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        # Every address the name has must be allowed: otherwise a name with one public and
        # one internal address reaches the internal one whenever the public one fails.
        for address in addresses:
            why = refusal(address, self.allowed)
            if why is not None:
                raise DestinationRefused(host, str(address), why)
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"{host} has no address")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> AsyncNetworkStream:
        raise DestinationRefused(path, path, "a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_client(allowed: Sequence[Network], timeout_s: float) -> httpx.AsyncClient:
    """An HTTP client that only reaches allowed destinations (no proxies, no redirects)."""
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        network_backend=GuardedBackend(allowed),
    )
    return httpx.AsyncClient(
        transport=transport,
        timeout=timeout_s,
        headers={"User-Agent": "roost-fault"},
        trust_env=False,
        follow_redirects=False,
    )
