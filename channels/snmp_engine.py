"""The pysnmp side of the SNMP channel: one event-loop thread that owns the engines and sends.

"Delivered" means: for a trap (fire-and-forget UDP) that pysnmp built, secured and handed the datagram
to the operating system without error; nothing tells whether the receiver accepted it. For an inform,
that the receiver acknowledged it within ``[snmp] timeout`` seconds, retried ``[snmp] retries`` times.

Threads: pysnmp 7 is asyncio-only, so one daemon thread ("snmp-notifier", started on the first send)
runs an event loop that owns every pysnmp engine; ``send()`` hands it a coroutine and waits for the
result with a deadline, so any number of worker threads can send at once and none waits longer than
the deadline. ``close()`` stops the loop and joins the thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import structlog
from pysnmp.carrier.asyncio.dgram import udp, udp6
from pysnmp.entity import config as lcd
from pysnmp.error import PySnmpError
from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    SnmpEngine,
    Udp6TransportTarget,
    UdpTransportTarget,
    UsmUserData,
    send_notification,
)
from pysnmp.proto import errind, rfc1902

from channels.errors import PermanentError, TransientError
from channels.netguard import AddressPolicy
from channels.snmp_config import AUTH_PROTOCOLS, PRIV_PROTOCOLS, SnmpConfig

log = structlog.get_logger("channels.snmp")

RESOLVER_THREADS = 4
CLOSE_TIMEOUT = 5.0

# errorIndications that no retry can fix: the receiver rejects these credentials or this message.
PERMANENT_INDICATIONS: tuple[type[Exception], ...] = (
    errind.UnknownUserName,
    errind.UnknownSecurityName,
    errind.WrongDigest,
    errind.AuthenticationFailure,
    errind.AuthenticationError,
    errind.DecryptionError,
    errind.EncryptionError,
    errind.UnsupportedSecurityLevel,
    errind.UnsupportedAuthProtocol,
    errind.UnsupportedPrivProtocol,
    errind.UnknownCommunityName,
    errind.TooBig,
    errind.SerializationError,
)


# --- host resolution -----------------------------------------------------------------------------


def resolve_host(host: str, port: int) -> tuple[str, bool]:
    """(IP address, is_ipv6) for host; IPv4 preferred. Raises socket.gaierror (or OSError)."""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return str(literal), literal.version == 6
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP)
    for family in (socket.AF_INET, socket.AF_INET6):
        for info in infos:
            if info[0] == family:
                return str(info[4][0]), family == socket.AF_INET6
    raise socket.gaierror(socket.EAI_NONAME, "no IPv4 or IPv6 address")


# --- the event-loop thread -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Budget:
    resolve: float  # seconds for the name lookup
    total: float  # seconds for the whole notification, lookup included


class SnmpNotifier:
    """One daemon thread running an asyncio loop that owns the pysnmp engines (one per engine ID).

    ``notify()`` is thread-safe and blocking: it runs one notification on the loop and waits for it
    with a deadline. ``close()`` cancels what is in flight, closes the sockets and joins the thread.
    """

    def __init__(self, *, timeout: float, retries: int, address_policy: AddressPolicy) -> None:
        self.address_policy = address_policy
        self.timeout = timeout
        self.retries = retries
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._loop_error)
        self._resolver = concurrent.futures.ThreadPoolExecutor(
            max_workers=RESOLVER_THREADS, thread_name_prefix="snmp-resolve"
        )
        self._engines: dict[bytes | None, Any] = {}
        self._sockets: dict[tuple[int, tuple[int, ...]], asyncio.Future[None]] = {}
        self._users: dict[tuple[int, str], _UserGate] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="snmp-notifier", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        log.warning("snmp.loop_error", message=context.get("message"), error=repr(exc) if exc else None)

    def budget(self, config: SnmpConfig) -> _Budget:
        """The name lookup gets ``timeout``; then a trap gets ``timeout`` more to be built and sent, an
        inform ``timeout`` per attempt plus one exchange for v3 engine discovery and some slack."""
        sending = self.timeout * (self.retries + 2) + 0.5 if config.inform else self.timeout
        return _Budget(resolve=self.timeout, total=self.timeout + sending)

    def notify(self, config: SnmpConfig, varbinds: list[tuple[tuple[int, ...], Any]]) -> str:
        """Send one notification; returns a one-line receipt or raises Transient/PermanentError."""
        budget = self.budget(config)
        if self._closed:
            raise TransientError("SNMP sender is shut down")
        try:
            future = asyncio.run_coroutine_threadsafe(self._notify(config, varbinds, budget), self._loop)
        except RuntimeError:  # the loop was closed under us
            raise TransientError("SNMP sender is shut down") from None
        try:
            return future.result(budget.total + 1.0)  # the coroutine has its own deadline; this is a backstop
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TransientError(
                f"SNMP notification to {config.target} timed out after {budget.total:g}s"
            ) from None
        except concurrent.futures.CancelledError:
            raise TransientError("SNMP sender is shut down") from None

    async def _notify(
        self, config: SnmpConfig, varbinds: list[tuple[tuple[int, ...], Any]], budget: _Budget
    ) -> str:
        try:
            return await asyncio.wait_for(self._notify_unbounded(config, varbinds, budget), budget.total)
        except TimeoutError:
            if config.inform:
                raise TransientError(
                    f"SNMP inform to {config.target} not acknowledged within {budget.total:g}s"
                ) from None
            raise TransientError(f"SNMP trap to {config.target} timed out after {budget.total:g}s") from None

    async def _notify_unbounded(
        self, config: SnmpConfig, varbinds: list[tuple[tuple[int, ...], Any]], budget: _Budget
    ) -> str:
        address, ipv6 = await self._resolve(config.host, config.port, budget.resolve)
        self.address_policy.check(address, host=config.host)  # tenants write SNMP hosts too
        engine = self._engine(config.engine_id if config.version == "3" else None)
        await self._open_socket(engine, ipv6)
        target_class = Udp6TransportTarget if ipv6 else UdpTransportTarget
        target = await target_class.create((address, config.port), timeout=self.timeout, retries=self.retries)
        kind = "inform" if config.inform else "trap"
        if config.version == "3":
            assert config.username is not None
            async with self._user_gate(engine, config):
                result = await send_notification(
                    engine, _usm_user(config), target, ContextData(), kind, *varbinds, lookupMib=False
                )
        else:
            auth = CommunityData(config.community, mpModel=1)  # noqa: S508 - v2c is a supported choice
            result = await send_notification(
                engine, auth, target, ContextData(), kind, *varbinds, lookupMib=False
            )
        error_indication, error_status, _index, _varbinds = result
        version = f"SNMPv{config.version}"
        if error_indication:
            reason = str(error_indication)
            if isinstance(error_indication, PERMANENT_INDICATIONS):
                raise PermanentError(f"{version} {kind} to {config.target} rejected: {reason}")
            raise TransientError(f"{version} {kind} to {config.target} failed: {reason}")
        if error_status:
            status = error_status.prettyPrint() if hasattr(error_status, "prettyPrint") else str(error_status)
            raise TransientError(f"{version} inform to {config.target} answered with error {status}")
        if config.inform:
            return f"{version} inform acknowledged by {config.target}"
        return f"{version} trap sent to {config.target}"

    async def _resolve(self, host: str, port: int, timeout: float) -> tuple[str, bool]:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._resolver, resolve_host, host, port), timeout
            )
        except TimeoutError:
            raise TransientError(f"resolving SNMP host {host!r} timed out after {timeout:g}s") from None
        except socket.gaierror as exc:
            reason = exc.strerror or str(exc)
            raise TransientError(f"cannot resolve SNMP host {host!r}: {reason}") from None
        except OSError as exc:
            raise TransientError(f"cannot resolve SNMP host {host!r}: {exc.strerror or exc}") from None

    def _engine(self, engine_id: bytes | None) -> Any:
        engine = self._engines.get(engine_id)
        if engine is None:
            engine = SnmpEngine() if engine_id is None else SnmpEngine(rfc1902.OctetString(engine_id))
            self._engines[engine_id] = engine
        return engine

    def engine_id(self, configured: bytes | None = None) -> bytes:
        """The snmpEngineID notifications for ``configured`` go out with (the default engine's for None)."""
        future = asyncio.run_coroutine_threadsafe(self._engine_id(configured), self._loop)
        return future.result(CLOSE_TIMEOUT)

    async def _engine_id(self, configured: bytes | None) -> bytes:
        return bytes(self._engine(configured).snmpEngineID.asOctets())

    async def _open_socket(self, engine: Any, ipv6: bool) -> None:
        """Open the engine's client socket for the family once and wait until it is bound."""
        domain = udp6.DOMAIN_NAME if ipv6 else udp.DOMAIN_NAME
        key = (id(engine), domain)
        ready = self._sockets.get(key)
        if ready is None:
            transport = (udp6.Udp6AsyncioTransport if ipv6 else udp.UdpAsyncioTransport)().open_client_mode()
            lcd.add_transport(engine, domain, transport)
            ready = asyncio.ensure_future(_bound(transport))
            self._sockets[key] = ready
        try:
            await asyncio.shield(ready)
        except OSError as exc:
            if self._sockets.get(key) is ready:
                del self._sockets[key]
                lcd.delete_transport(engine, domain)
            family = "IPv6" if ipv6 else "IPv4"
            raise TransientError(f"cannot open an {family} UDP socket: {exc.strerror or exc}") from None

    def _user_gate(self, engine: Any, config: SnmpConfig) -> AbstractAsyncContextManager[None]:
        assert config.username is not None
        key = (id(engine), config.username)
        gate = self._users.get(key)
        if gate is None:
            gate = self._users[key] = _UserGate()
        return gate.holding(_credentials(config))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError, PySnmpError):
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(CLOSE_TIMEOUT)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CLOSE_TIMEOUT)
        if not self._thread.is_alive():
            self._loop.close()
        self._resolver.shutdown(wait=False, cancel_futures=True)

    async def _shutdown(self) -> None:
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for engine in self._engines.values():
            with contextlib.suppress(PySnmpError):
                engine.close_dispatcher()
        self._engines.clear()
        self._sockets.clear()
        await self._loop.shutdown_default_executor()


async def _bound(transport: Any) -> None:
    """Wait for pysnmp's create_datagram_endpoint to finish, so the first datagram is not just queued."""
    pending = getattr(transport, "_lport", None)
    if isinstance(pending, asyncio.Future):
        await pending


def _credentials(config: SnmpConfig) -> tuple[Any, ...]:
    return (config.auth_protocol, config.auth_password, config.priv_protocol, config.priv_password)


def _usm_user(config: SnmpConfig) -> Any:
    auth = AUTH_PROTOCOLS[config.auth_protocol] if config.auth_protocol else lcd.USM_AUTH_NONE
    priv = PRIV_PROTOCOLS[config.priv_protocol] if config.priv_protocol else lcd.USM_PRIV_NONE
    return UsmUserData(
        config.username,
        authKey=config.auth_password,
        privKey=config.priv_password,
        authProtocol=auth,
        privProtocol=priv,
    )


class _UserGate:
    """Lets notifications for one USM user name run together only while they share credentials.

    pysnmp keeps one row per user name in an engine, and re-keys it when another channel uses the same
    name with other passwords; an inform in flight (engine discovery, retries) must not see its keys
    change underneath it. Used only on the loop thread.
    """

    def __init__(self) -> None:
        self._condition = asyncio.Condition()
        self._credentials: tuple[Any, ...] | None = None
        self._holders = 0

    @contextlib.asynccontextmanager
    async def holding(self, credentials: tuple[Any, ...]) -> AsyncIterator[None]:
        async with self._condition:
            await self._condition.wait_for(lambda: self._holders == 0 or self._credentials == credentials)
            self._credentials = credentials
            self._holders += 1
        try:
            yield
        finally:
            async with self._condition:
                self._holders -= 1
                if self._holders == 0:
                    self._credentials = None
                    self._condition.notify_all()
