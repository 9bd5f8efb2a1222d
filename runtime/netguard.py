"""Outbound HTTP to URLs that callers choose: the SSRF guard.

A caller-supplied URL may reach the public internet and nothing else. Two checks, both needed:

- ``NetGuard.check_url`` refuses what a URL itself says: a scheme other than http(s),
  credentials (``user:pass@``), a port outside the allowed set, a literal non-public address.
  Callers run it on the first URL *and on every redirect hop* (clients built here never follow
  redirects themselves; ``redirect_target`` gives the next hop).
- The guarded network backends (``GuardedAsyncBackend``, ``GuardedBackend``) sit under httpcore
  and refuse what a host name resolves to, at the moment of connecting: they resolve the name
  once, refuse the whole host if ANY answer is not public, and connect to the very addresses
  they vetted. There is no second lookup for a rebinding DNS server to answer differently.
  The Host header, TLS SNI and certificate verification still use the name (httpcore takes
  them from the request URL, not from the address the backend connects to).

Refused: loopback, private (RFC 1918), link-local, shared/CGNAT, multicast, unspecified,
reserved, benchmarking, documentation, IETF protocol ranges, IPv6 unique-local, site-local,
discard, Teredo, local NAT64, cloud metadata addresses, and IPv4-mapped, IPv4-compatible,
NAT64 and 6to4 forms of any refused IPv4 address (``classify_address``). Python's
``ipaddress`` flags alone are not enough (``::127.0.0.1`` and ``64:ff9b::7f00:1`` count as
global there), so explicit tables come first and the flags are the backstop.

Errors: ``UrlRefused`` (INVALID_ARGUMENT; reasons INVALID_URL, UNSUPPORTED_URL_SCHEME,
URL_CREDENTIALS_NOT_ALLOWED, URL_PORT_NOT_ALLOWED, URL_NOT_ALLOWED) and ``HostNotFound``
(NOT_FOUND, HOST_NOT_FOUND). A temporary resolver failure is an ``httpcore2.ConnectError``,
which callers treat like any other transient connect failure.

The allowlist (``NetPolicy.allow_hosts`` / ``allow_networks``) exists for tests that serve
media from 127.0.0.1; production leaves it empty.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import httpcore2
import httpx2

from runtime.errors import InvalidArgument, NotFound

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Resolves (host, port) to address strings; blocking (run in a thread). A seam for tests.
Resolver = Callable[[str, int], Sequence[str]]

DEFAULT_PORTS: frozenset[int] = frozenset({80, 443, 8080, 8443})
SCHEMES = ("http", "https")
DEFAULT_SCHEME_PORTS = {"http": 80, "https": 443}
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class UrlRefused(InvalidArgument):
    """The URL (or a redirect hop, or what its host resolves to) may not be fetched."""

    default_reason = "URL_NOT_ALLOWED"


class HostNotFound(NotFound):
    default_reason = "HOST_NOT_FOUND"


# -- the address classifier ------------------------------------------------------------------

_METADATA: dict[IPAddress, str] = {
    ipaddress.ip_address("169.254.169.254"): "cloud metadata",  # AWS, GCP, Azure, OpenStack
    ipaddress.ip_address("169.254.170.2"): "cloud metadata",  # AWS ECS task metadata
    ipaddress.ip_address("fd00:ec2::254"): "cloud metadata",  # AWS IPv6
    ipaddress.ip_address("100.100.100.200"): "cloud metadata",  # Alibaba Cloud
}


def _nets(*pairs: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), label) for net, label in pairs)


_V4_REFUSED = _nets(
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared (CGNAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignment"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),  # with 255.255.255.255, the broadcast address
)
_V6_REFUSED = _nets(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible"),  # deprecated; ::a.b.c.d reaches a.b.c.d on some stacks
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("100::/64", "discard-only"),
    ("2001::/32", "Teredo"),
    ("2001:db8::/32", "documentation"),
    ("2001::/23", "IETF protocol assignment"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "SRv6 segment identifier"),
    ("fc00::/7", "unique-local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def classify_address(address: IPAddress) -> str | None:
    """Why ``address`` is not a public unicast address (e.g. "loopback"), or None if it is."""
    if address in _METADATA:
        return _METADATA[address]
    if isinstance(address, ipaddress.IPv6Address):
        embedded: tuple[str, ipaddress.IPv4Address] | None = None
        if address in _MAPPED and address.ipv4_mapped is not None:
            embedded = ("IPv4-mapped", address.ipv4_mapped)
        elif address in _NAT64:
            embedded = ("NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        elif address.sixtofour is not None:
            embedded = ("6to4", address.sixtofour)
        if embedded is not None:
            form, inner = embedded
            found = classify_address(inner)
            return f"{form} {found}" if found else None
        table = _V6_REFUSED
    else:
        table = _V4_REFUSED
    for network, label in table:
        if address in network:
            return label
    # The backstop: whatever the standard library knows that the tables above do not.
    for flag, label in (
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_unspecified", "unspecified"),
        ("is_private", "private"),
        ("is_reserved", "reserved"),
        ("is_site_local", "site-local"),
    ):
        if getattr(address, flag, False):
            return label
    if not address.is_global:
        return "not globally routable"
    return None


def parse_address(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is a literal one (brackets and zone ids allowed)."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


# -- the policy ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetPolicy:
    """What outbound fetches may reach."""

    allowed_ports: frozenset[int] = DEFAULT_PORTS
    #: Host names (lower case, no trailing dot) exempt from the address check. Tests only.
    allow_hosts: frozenset[str] = frozenset()
    #: Networks exempt from the address check. Tests only.
    allow_networks: tuple[IPNetwork, ...] = field(default=())

    @classmethod
    def build(cls, *, allowed_ports: Iterable[int], allow: Iterable[str] = ()) -> NetPolicy:
        """A policy from settings; ``allow`` entries are host names, addresses or CIDRs.

        Raises ``ValueError`` for an entry that is neither.
        """
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in allow:
            entry = raw.strip()
            if not entry:
                continue
            address = parse_address(entry)
            if address is not None:
                networks.append(ipaddress.ip_network(address))
            elif "/" in entry:
                networks.append(ipaddress.ip_network(entry, strict=False))
            elif _valid_host_name(entry):
                hosts.add(entry.lower().rstrip("."))
            else:
                raise ValueError(f"{entry!r} is neither a host name, an address nor a CIDR")
        ports = frozenset(allowed_ports)
        if not ports or any(not 0 < p < 65536 for p in ports):
            raise ValueError("allowed ports must be between 1 and 65535")
        return cls(
            allowed_ports=ports, allow_hosts=frozenset(hosts), allow_networks=tuple(networks)
        )

    def refusal(self, address: IPAddress) -> str | None:
        """Why the address may not be reached under this policy, or None."""
        if any(address in network for network in self.allow_networks):
            return None
        return classify_address(address)


def _valid_host_name(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    return all(
        0 < len(label) <= 63 and all(c.isalnum() or c == "-" for c in label) for label in labels
    )


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, via the system resolver (blocking)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


# -- the guard -------------------------------------------------------------------------------


class NetGuard:
    """A policy with the resolver it vets names through; builds guarded HTTP clients."""

    def __init__(self, policy: NetPolicy, *, resolver: Resolver = system_resolver) -> None:
        self.policy = policy
        self._resolver = resolver

    def check_url(self, url: str | httpx2.URL) -> httpx2.URL:
        """The parsed URL if it may be fetched; raises ``UrlRefused`` otherwise.

        The same parser (httpx's) reads the URL here and when the request is sent, so the host
        checked is the host connected to.
        """
        try:
            parsed = url if isinstance(url, httpx2.URL) else httpx2.URL(url)
        except (httpx2.InvalidURL, TypeError, ValueError):
            raise UrlRefused("the URL cannot be parsed", reason="INVALID_URL") from None
        scheme = parsed.scheme.lower()
        if scheme not in SCHEMES:
            shown = f"{scheme}:" if scheme else "a URL without a scheme"
            raise UrlRefused(
                f"only http and https URLs can be fetched, not {shown}",
                reason="UNSUPPORTED_URL_SCHEME",
            )
        if not parsed.host:
            raise UrlRefused("the URL has no host", reason="INVALID_URL")
        if parsed.userinfo:
            raise UrlRefused(
                "URLs with credentials (user:password@) are not accepted",
                reason="URL_CREDENTIALS_NOT_ALLOWED",
            )
        port = parsed.port or DEFAULT_SCHEME_PORTS[scheme]
        if port not in self.policy.allowed_ports:
            allowed = ", ".join(str(p) for p in sorted(self.policy.allowed_ports))
            raise UrlRefused(
                f"port {port} is not allowed (allowed: {allowed})",
                reason="URL_PORT_NOT_ALLOWED",
                metadata={"port": str(port)},
            )
        literal = parse_address(parsed.host)
        if literal is not None:
            self._vet(parsed.host, [literal])
        return parsed

    def addresses(self, host: str, port: int) -> list[str]:
        """The vetted addresses to connect to for ``host`` (blocking: it may resolve)."""
        literal = parse_address(host)
        if literal is not None:
            return [str(x) for x in self._vet(host, [literal])]
        try:
            answers = self._resolver(host, port)
        except UnicodeError:
            raise UrlRefused("the host name is not valid", reason="INVALID_URL") from None
        except socket.gaierror as exc:
            if exc.errno in (socket.EAI_AGAIN, getattr(socket, "EAI_SYSTEM", None)):
                raise httpcore2.ConnectError(f"could not resolve {host}: {exc}") from exc
            raise HostNotFound(f"the host {host} does not resolve") from None
        found: list[IPAddress] = []
        for answer in dict.fromkeys(answers):
            address = parse_address(answer)
            if address is None:
                raise UrlRefused(f"the host {host} resolves to something that is not an address")
            found.append(address)
        if not found:
            raise HostNotFound(f"the host {host} does not resolve")
        if host.lower().rstrip(".") in self.policy.allow_hosts:
            return [str(x) for x in found]
        return [str(x) for x in self._vet(host, found)]

    def _vet(self, host: str, found: Sequence[IPAddress]) -> Sequence[IPAddress]:
        """``found`` if every address is allowed: one bad answer refuses the host."""
        for address in found:
            why = self.policy.refusal(address)
            if why is None:
                continue
            log.warning(
                "refused a non-public address", extra={"host": host, "address": str(address)}
            )
            if parse_address(host) is not None:
                problem = f"{host} is not a public address ({why})"
            else:
                problem = f"the host {host} resolves to a non-public address ({why})"
            raise UrlRefused(
                f"{problem}; only public addresses can be fetched",
                reason="URL_NOT_ALLOWED",
                metadata={"category": why},
            )
        return found

    # -- clients -------------------------------------------------------------------------------

    def async_client(
        self,
        *,
        timeout: httpx2.Timeout,
        inner: httpcore2.AsyncNetworkBackend | None = None,
        verify: ssl.SSLContext | bool = True,
        max_connections: int = 10,
    ) -> httpx2.AsyncClient:
        """An ``AsyncClient`` whose every connection goes through this guard.

        It follows no redirects and ignores proxy and certificate environment variables.
        ``inner`` is the backend that opens sockets to vetted addresses (a seam for tests).
        """
        transport = _AsyncTransport(
            GuardedAsyncBackend(self, inner), verify=verify, max_connections=max_connections
        )
        return httpx2.AsyncClient(
            transport=transport, timeout=timeout, follow_redirects=False, trust_env=False
        )

    def client(
        self,
        *,
        timeout: httpx2.Timeout,
        inner: httpcore2.NetworkBackend | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> httpx2.Client:
        """The blocking twin of ``async_client`` (for code that runs in worker threads)."""
        transport = _Transport(GuardedBackend(self, inner), verify=verify)
        return httpx2.Client(
            transport=transport, timeout=timeout, follow_redirects=False, trust_env=False
        )


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date; a date in the
    past is 0), or None when there is none or it cannot be read."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def redirect_target(response: httpx2.Response) -> httpx2.URL | None:
    """Where a redirect response points (unchecked: pass it to ``check_url``), else None."""
    if response.status_code not in REDIRECT_STATUSES:
        return None
    location = response.headers.get("location")
    if not location:
        return None
    try:
        return response.url.join(location)
    except (httpx2.InvalidURL, ValueError):
        raise UrlRefused(
            "a redirect points to a URL that cannot be parsed", reason="INVALID_URL"
        ) from None


# -- network backends ------------------------------------------------------------------------


def _no_unix_sockets() -> httpcore2.UnsupportedProtocol:
    return httpcore2.UnsupportedProtocol("unix sockets are not reachable through the guard")


class GuardedAsyncBackend(httpcore2.AsyncNetworkBackend):
    """Resolves and vets each host as httpcore connects, then connects to a vetted address."""

    def __init__(self, guard: NetGuard, inner: httpcore2.AsyncNetworkBackend | None = None):
        self._guard = guard
        self._inner = inner or httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        lookup = asyncio.to_thread(self._guard.addresses, host, port)
        try:
            addresses = await asyncio.wait_for(lookup, timeout)
        except TimeoutError:
            raise httpcore2.ConnectTimeout(f"resolving {host} timed out") from None
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore2.ConnectError as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.AsyncNetworkStream:
        raise _no_unix_sockets()

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedBackend(httpcore2.NetworkBackend):
    """The blocking twin of ``GuardedAsyncBackend``."""

    def __init__(self, guard: NetGuard, inner: httpcore2.NetworkBackend | None = None):
        self._guard = guard
        self._inner = inner or httpcore2.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        failure: Exception | None = None
        for address in self._guard.addresses(host, port):
            try:
                return self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore2.ConnectError as exc:
                failure = exc
        assert failure is not None
        raise failure

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.NetworkStream:
        raise _no_unix_sockets()

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _ssl_context(verify: ssl.SSLContext | bool) -> ssl.SSLContext:
    if isinstance(verify, ssl.SSLContext):
        return verify
    return httpx2.create_ssl_context(verify=verify, trust_env=False)


class _AsyncTransport(httpx2.AsyncHTTPTransport):
    """httpx's transport over a connection pool that uses the guarded backend.

    httpx's transport takes no network backend, so its pool is replaced by one that does;
    request/response and exception mapping stay httpx's own.
    """

    def __init__(
        self,
        backend: GuardedAsyncBackend,
        *,
        verify: ssl.SSLContext | bool,
        max_connections: int = 10,
    ) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=_ssl_context(verify),
            network_backend=backend,
            max_connections=max_connections,
        )


class _Transport(httpx2.HTTPTransport):
    def __init__(self, backend: GuardedBackend, *, verify: ssl.SSLContext | bool) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore2.ConnectionPool(
            ssl_context=_ssl_context(verify), network_backend=backend, max_connections=10
        )
