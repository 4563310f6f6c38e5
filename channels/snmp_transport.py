"""Where an SNMP notification goes and how its datagram leaves: the checked address, and UDP
transports that report send errors instead of swallowing them.

asyncio's datagram transport never raises from ``sendto``: an ``OSError`` (network unreachable,
permission denied by a firewall, message too long) goes to the protocol's ``error_received``, which
pysnmp leaves empty, and a datagram written to a closed transport is dropped without a word. pysnmp
then reports the trap as sent. These transports hand such errors to the notification that caused
them (``send_errors()``, a context variable: the datagram is written synchronously inside the
sending task), so a trap that did not leave is never "delivered". When the socket buffer was full
asyncio queues the datagram and writes it later: the sender then waits for the queue to drain
(``drained``) and counts the errors meanwhile as its own, erring towards "not sent". (asyncio runs
the later write in a copy of the sending task's context, so its error usually reaches that task's
list directly; ``late_error_count`` catches the rest.)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import structlog
from pysnmp.carrier.asyncio.dgram import udp, udp6

from channels.netguard import AddressPolicy, Resolver, resolve_checked

log = structlog.get_logger("channels.snmp")

DRAIN_POLL_SECONDS = 0.005
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
    late_error_count = 0  # errors of datagrams written outside a send (buffered ones, retransmissions)
    last_late_error: OSError | None = None

    def error_received(self, exc: OSError) -> None:
        errors = _SEND_ERRORS.get()
        if errors is not None:
            errors.append(exc)
            return
        self.late_error_count += 1
        self.last_late_error = exc
        log.warning("snmp.socket_error", error=exc.strerror or type(exc).__name__)

    async def drained(self) -> OSError | None:
        """Wait until asyncio wrote every datagram it buffered (a full socket buffer makes it queue
        them); returns a socket error that happened meanwhile, if any. The caller bounds the wait."""
        seen = self.late_error_count
        while self.usable and self.transport is not None and self.transport.get_write_buffer_size():
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        return self.last_late_error if self.late_error_count > seen else None

    @property
    def usable(self) -> bool:
        """False once asyncio closed the transport: every later datagram would be dropped silently."""
        return self.transport is None or not self.transport.is_closing()


class UdpTransport(_ReportingProtocol, udp.UdpAsyncioTransport):  # type: ignore[misc]
    """IPv4 UDP client transport that reports send errors."""


class Udp6Transport(_ReportingProtocol, udp6.Udp6AsyncioTransport):  # type: ignore[misc]
    """IPv6 UDP client transport that reports send errors."""
