"""The SSRF guard: tenants write webhook URLs, so no delivery may reach a non-public address unasked.

Three layers, all in this module:

* ``AddressPolicy.check(ip)`` decides one address. Refused unless opened: unspecified (``0.0.0.0``,
  ``::``), "this network" ``0.0.0.0/8``, loopback, private (RFC 1918, unique local ``fc00::/7``),
  link-local (``169.254.0.0/16`` with the cloud metadata address ``169.254.169.254``, ``fe80::/10``),
  shared/CGNAT ``100.64.0.0/10``, IETF protocol assignments ``192.0.0.0/24``, documentation
  (``192.0.2.0/24``, ``198.51.100.0/24``, ``203.0.113.0/24``, ``2001:db8::/32``, ``3fff::/20``),
  benchmarking (``198.18.0.0/15``, ``2001:2::/48``), the deprecated 6to4 relay anycast
  ``192.88.99.0/24``, multicast (``224.0.0.0/4``, ``ff00::/8``), broadcast ``255.255.255.255``,
  reserved (``240.0.0.0/4``, ``::/8``, ...), IPv6 site-local ``fec0::/10``, discard-only ``100::/64``,
  Teredo ``2001::/32``, local-use NAT64 ``64:ff9b:1::/48``, and anything else Python's ``ipaddress``
  does not call global. IPv6 forms that carry an IPv4 address — IPv4-mapped ``::ffff:a.b.c.d``,
  IPv4-compatible ``::a.b.c.d``, 6to4 ``2002:AABB:CCDD::/48`` and NAT64 ``64:ff9b::a.b.c.d`` — are
  judged by the embedded IPv4 address (so ``::ffff:10.0.0.1`` is private, ``64:ff9b::5db8:d822`` public).

  ``[http] allowed_networks`` opens the listed networks (matched against the address as written and,
  for the forms above, against the embedded IPv4 address); ``[http] allow_private_networks = true``
  opens every non-public class. The unspecified addresses ``0.0.0.0`` and ``::`` stay refused even
  then: connecting to them reaches the worker's own host, and no real destination has them.

* ``resolve_checked(host, port, policy)`` resolves a host once and checks every address it got. If any
  one is refused the host is refused: the attacker controls the DNS answer, so picking the "good"
  address out of a mixed answer would be a game they can win. IP literals are not looked up.

* ``GuardedAdapter`` (a requests ``HTTPAdapter``) makes urllib3 connect to exactly the addresses that
  ``resolve_checked`` returned: its pools use connection classes whose ``_new_conn`` resolves, checks
  and connects to the checked socket address itself, so there is no second DNS lookup for a rebinding
  attacker to answer differently. The URL's host name is left untouched, so the ``Host`` header, TLS
  SNI and certificate host name verification all still use it. Proxies are refused (a proxy would do
  its own resolution), which is why ``HttpClient`` sets ``session.trust_env = False``.

``check_host`` gives other channels (SMTP, SNMP, MQTT) the checked IP address to connect to.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from requests.adapters import DEFAULT_POOLBLOCK, HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.poolmanager import PoolManager
from urllib3.util.connection import allowed_gai_family

from channels.errors import BlockedAddress, InvalidChannelConfig, PermanentError, TransientError
from channels.wire import StatusFirstResponse, note_in_use

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# socket.getaddrinfo's shape: resolver(host, port, family, type) -> [(family, type, proto, canon, sockaddr)]
Resolver = Callable[..., Sequence[tuple[Any, ...]]]

UNSPECIFIED = "unspecified address"
HINT = "open it with [http] allowed_networks"
NEVER = "it is never a valid destination"


def _nets(*items: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), reason) for net, reason in items)


# Most specific first: the first match names the class in the refusal message.
_IPV4_CLASSES = _nets(
    ("0.0.0.0/32", UNSPECIFIED),
    ("0.0.0.0/8", '"this network" address'),
    ("127.0.0.0/8", "loopback address"),
    ("10.0.0.0/8", "private address"),
    ("172.16.0.0/12", "private address"),
    ("192.168.0.0/16", "private address"),
    ("100.64.0.0/10", "shared (CGNAT) address"),
    ("169.254.0.0/16", "link-local address"),
    ("192.0.0.0/24", "IETF protocol assignment address"),
    ("192.0.2.0/24", "documentation address"),
    ("198.51.100.0/24", "documentation address"),
    ("203.0.113.0/24", "documentation address"),
    ("198.18.0.0/15", "benchmarking address"),
    ("192.88.99.0/24", "6to4 relay anycast address"),
    ("224.0.0.0/4", "multicast address"),
    ("255.255.255.255/32", "broadcast address"),
    ("240.0.0.0/4", "reserved address"),
)
_IPV6_CLASSES = _nets(
    ("::/128", UNSPECIFIED),
    ("::1/128", "loopback address"),
    ("fe80::/10", "link-local address"),
    ("fec0::/10", "site-local address"),
    ("fc00::/7", "private (unique local) address"),
    ("ff00::/8", "multicast address"),
    ("2001:db8::/32", "documentation address"),
    ("3fff::/20", "documentation address"),
    ("2001:2::/48", "benchmarking address"),
    ("100::/64", "discard-only address"),
    ("2001::/32", "Teredo address"),
    ("64:ff9b:1::/48", "local-use NAT64 address"),
    ("::/8", "reserved address"),
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def parse_ip(ip: str | IPAddress) -> IPAddress:
    """An address object from a string (brackets and an IPv6 zone like ``%eth0`` allowed)."""
    if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return ip
    return ipaddress.ip_address(ip.strip("[]"))


def embedded_ipv4(ip: IPAddress) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, 6to4, NAT64) and the form's name."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    bare = ipaddress.IPv6Address(int(ip))  # without a zone
    if bare.ipv4_mapped is not None:
        return bare.ipv4_mapped, "IPv4-mapped"
    if bare in _NAT64:
        return ipaddress.IPv4Address(int(bare) & 0xFFFFFFFF), "NAT64"
    if bare.sixtofour is not None:
        return bare.sixtofour, "6to4"
    if bare in _IPV4_COMPATIBLE and int(bare) > 1:  # not :: and ::1, which are IPv6's own
        return ipaddress.IPv4Address(int(bare)), "IPv4-compatible"
    return None


def _own_class(ip: IPAddress) -> str | None:
    table = _IPV4_CLASSES if ip.version == 4 else _IPV6_CLASSES
    bare = ip if ip.version == 4 else ipaddress.IPv6Address(int(ip))
    for network, reason in table:
        if bare in network:
            return reason
    if not bare.is_global:
        return "non-public address"
    return None


def address_class(ip: str | IPAddress) -> str | None:
    """Why an address is not public ("link-local address", ...), or None for a public address."""
    address = parse_ip(ip)
    embedded = embedded_ipv4(address)
    if embedded is None:
        return _own_class(address)
    inner, form = embedded
    reason = _own_class(inner)
    return None if reason is None else f"{form} form of {inner}: {reason}"


def _in_any(ip: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    bare = ip if ip.version == 4 else ipaddress.IPv6Address(int(ip))
    return any(network.version == bare.version and bare in network for network in networks)


@dataclass(frozen=True)
class AddressPolicy:
    """Which non-public addresses the HTTP channels may reach. The default refuses all of them."""

    allow_private: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()

    def __post_init__(self) -> None:
        networks = tuple(
            network if not isinstance(network, str) else ipaddress.ip_network(network, strict=False)
            for network in self.allowed_networks
        )
        object.__setattr__(self, "allowed_networks", networks)

    def opens(self, ip: str | IPAddress) -> bool:
        """Whether check() lets the address through."""
        try:
            self.check(ip)
        except BlockedAddress:
            return False
        return True

    def check(self, ip: str | IPAddress, *, host: str | None = None) -> None:
        """Return if the address may be connected to; raise BlockedAddress naming its class otherwise."""
        address = parse_ip(ip)
        reason = address_class(address)
        if reason is None:
            return
        embedded = embedded_ipv4(address)
        unspecified = int(embedded[0] if embedded else address) == 0
        if not unspecified:
            if self.allow_private:
                return
            if _in_any(address, self.allowed_networks):
                return
            if embedded is not None and _in_any(embedded[0], self.allowed_networks):
                return
        shown = str(address)
        target = f" for {host}" if host and host.strip("[]") != shown else ""
        advice = NEVER if unspecified else HINT
        raise BlockedAddress(f"refusing to connect to {shown} ({reason}){target}; {advice}")


class ResolvedAddress(NamedTuple):
    """One checked address: what ``socket.socket(family, SOCK_STREAM).connect(sockaddr)`` takes."""

    family: int
    sockaddr: tuple[Any, ...]

    @property
    def ip(self) -> str:
        return str(self.sockaddr[0])


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def resolve_checked(
    host: str,
    port: int,
    policy: AddressPolicy,
    resolver: Resolver = socket.getaddrinfo,
    *,
    family: int = socket.AF_UNSPEC,
) -> list[ResolvedAddress]:
    """Resolve host once; return its addresses if every one passes the policy, else BlockedAddress.

    IP literals are parsed, never looked up. A failed lookup is a TransientError.
    """
    bare = (host or "").strip()
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    if not bare:
        raise InvalidChannelConfig("the URL has no host")
    answers: Sequence[tuple[Any, ...]]
    try:
        if _is_ip_literal(bare):
            # AI_NUMERICHOST: parsed by the C library (zone ids included), never sent to DNS.
            answers = socket.getaddrinfo(bare, port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
        else:
            answers = resolver(bare, port, family, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise TransientError(f"cannot resolve host {bare}: {detail}") from None
    resolved: list[ResolvedAddress] = []
    for answer in answers:
        answer_family, sockaddr = answer[0], tuple(answer[4])
        if answer_family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ResolvedAddress(int(answer_family), sockaddr)
        if address not in resolved:
            resolved.append(address)
    if not resolved:
        raise TransientError(f"cannot resolve host {bare}: no IPv4 or IPv6 address")
    for address in resolved:  # all of them, before any is used
        policy.check(address.ip, host=bare)
    return resolved


def check_host(host: str, port: int, policy: AddressPolicy, resolver: Resolver = socket.getaddrinfo) -> str:
    """The checked IP address to connect to for host (for SMTP, SNMP, MQTT); connect to it, not host."""
    return resolve_checked(host, port, policy, resolver)[0].ip


# --- requests / urllib3 wiring -----------------------------------------------------------------------


def _pinned_connect(conn: HTTPConnection, policy: AddressPolicy, resolver: Resolver) -> socket.socket:
    """urllib3's _new_conn, but connecting only to the addresses resolve_checked returned."""
    host = conn._dns_host  # with a trailing dot, if the URL had one: that is what DNS should see
    port = conn.port if conn.port is not None else conn.default_port
    addresses = resolve_checked(host, port, policy, resolver, family=allowed_gai_family())
    error: OSError | None = None
    for address in addresses:
        sock: socket.socket | None = None
        try:
            sock = socket.socket(address.family, socket.SOCK_STREAM)
            for option in conn.socket_options or ():
                sock.setsockopt(*option)
            sock.settimeout(conn.timeout)
            if conn.source_address:
                sock.bind(conn.source_address)
            sock.connect(address.sockaddr)
        except OSError as exc:
            error = exc
            if sock is not None:
                sock.close()
            continue
        sys.audit("http.client.connect", conn, conn.host, conn.port)
        return sock
    assert error is not None  # resolve_checked never returns an empty list
    if isinstance(error, TimeoutError):
        raise ConnectTimeoutError(
            conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})"
        ) from error
    raise NewConnectionError(conn, f"Failed to establish a new connection: {error}") from error


class GuardedHTTPConnection(HTTPConnection):
    """An urllib3 connection that connects to the checked address of its host (see _pinned_connect).

    It also tells channels/wire.py when the current thread uses it (so an attempt deadline can cut
    it) and keeps a response's status when its headers cannot be parsed."""

    response_class = StatusFirstResponse

    def __init__(self, *args: Any, policy: AddressPolicy, resolver: Resolver, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.address_policy = policy
        self.resolver = resolver

    def _new_conn(self) -> socket.socket:
        return _pinned_connect(self, self.address_policy, self.resolver)

    def connect(self) -> None:
        note_in_use(self)
        super().connect()

    def request(self, *args: Any, **kwargs: Any) -> None:
        note_in_use(self)
        super().request(*args, **kwargs)


class GuardedHTTPSConnection(GuardedHTTPConnection, HTTPSConnection):
    """HTTPS over the checked address; SNI and certificate verification use the URL's host name."""


class GuardedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = GuardedHTTPConnection


class GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = GuardedHTTPSConnection


class GuardedPoolManager(PoolManager):
    """A PoolManager whose pools only make guarded connections."""

    def __init__(self, *, policy: AddressPolicy, resolver: Resolver, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.address_policy = policy
        self.resolver = resolver
        self.pool_classes_by_scheme = {"http": GuardedHTTPConnectionPool, "https": GuardedHTTPSConnectionPool}

    def _new_pool(
        self, scheme: str, host: str, port: int, request_context: dict[str, Any] | None = None
    ) -> HTTPConnectionPool:
        context = dict(self.connection_pool_kw if request_context is None else request_context)
        # Handed by the pool to every connection it makes (pool keys are computed before this).
        context["policy"] = self.address_policy
        context["resolver"] = self.resolver
        return super()._new_pool(scheme, host, port, context)


class GuardedAdapter(HTTPAdapter):
    """A requests adapter whose every connection goes to an address the policy allowed.

    ``responses`` still works with it in tests: it patches ``HTTPAdapter.send``, which this inherits.
    """

    def __init__(
        self, policy: AddressPolicy, *, resolver: Resolver = socket.getaddrinfo, **kwargs: Any
    ) -> None:
        self.address_policy = policy
        self.resolver = resolver
        super().__init__(**kwargs)

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = DEFAULT_POOLBLOCK, **pool_kwargs: Any
    ) -> None:
        self._pool_connections = connections
        self._pool_maxsize = maxsize
        self._pool_block = block
        self.poolmanager = GuardedPoolManager(
            policy=self.address_policy,
            resolver=self.resolver,
            num_pools=connections,
            maxsize=maxsize,
            block=block,
            **pool_kwargs,
        )

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        # A proxy resolves and connects on its own: the guard could not see where it goes.
        raise PermanentError("HTTP proxies are not supported: they would bypass the address guard")
