"""Where an SNMP notification goes and how its datagram leaves: the checked address, and UDP
transports that report send errors instead of swallowing them.

asyncio's datagram transport never raises from ``sendto``: an ``OSError`` (network unreachable,
permission denied by a firewall, message too long) goes to the protocol's ``error_received``, which
pysnmp leaves empty, and a datagram written to a closed transport is dropped without a word. pysnmp
then reports the trap as sent. These transports hand such errors to the notification that caused
them (``send_errors()``, a context variable: the datagram is written synchronously inside the
sending task), so a trap that did not leave is never "delivered".
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import structlog
from pysnmp.carrier.asyncio.dgram import udp, udp6

from channels.netguard import AddressPolicy, Resolver, resolve_checked

log = structlog.get_logger("channels.snmp")

_SEND_ERRORS: ContextVar[list[OSError] | None] = ContextVar("snmp_send_errors", default=None)


def resolve_host(
    host: str, port: int, policy: AddressPolicy, resolver: Resolver | None = None
) -> tuple[str, bool]:
    """(IP address, is_ipv6) to send to; IPv4 preferred. Every address the name resolves to must
    pass the policy (a mixed public/private answer is refused: BlockedAddress), as for HTTP.
    ``resolver`` is ``socket.getaddrinfo`` (looked up at call time) unless given."""
    addresses = resolve_checked(host, port, policy, resolver or socket.getaddrinfo)
    for family in (socket.AF_INET, socket.AF_INET6):
        for address in addresses:
            if address.family == family:
                return address.ip, family == socket.AF_INET6
    return addresses[0].ip, addresses[0].family == socket.AF_INET6  # resolve_checked keeps only these two


@contextlib.contextmanager
def send_errors() -> Iterator[list[OSError]]:
    """Collect the socket errors of the datagrams written inside the block (in this task)."""
    errors: list[OSError] = []
    token = _SEND_ERRORS.set(errors)
    try:
        yield errors
    finally:
        _SEND_ERRORS.reset(token)


class _ReportingProtocol:
    """Mixed into pysnmp's asyncio datagram transports (which are their own asyncio protocol)."""

    transport: Any

    def error_received(self, exc: OSError) -> None:
        errors = _SEND_ERRORS.get()
        if errors is not None:
            errors.append(exc)
        else:  # an inform retransmission or a late error: its notification times out on its own
            log.warning("snmp.socket_error", error=exc.strerror or type(exc).__name__)

    @property
    def usable(self) -> bool:
        """False once asyncio closed the transport: every later datagram would be dropped silently."""
        return self.transport is None or not self.transport.is_closing()


class UdpTransport(_ReportingProtocol, udp.UdpAsyncioTransport):  # type: ignore[misc]
    """IPv4 UDP client transport that reports send errors."""


class Udp6Transport(_ReportingProtocol, udp6.Udp6AsyncioTransport):  # type: ignore[misc]
    """IPv6 UDP client transport that reports send errors."""
