"""The pysnmp side of the SNMP channel: one event-loop thread that owns the engines and sends.

"Delivered" means: for a trap (fire-and-forget UDP) that pysnmp built, secured and handed the datagram
to the operating system without error; nothing tells whether the receiver accepted it. For an inform,
that the receiver acknowledged it within ``[snmp] timeout`` seconds, retried ``[snmp] retries`` times.

Threads: pysnmp 7 is asyncio-only, so one daemon thread ("snmp-notifier", started on the first send)
runs an event loop that owns every pysnmp engine; ``send()`` hands it a coroutine and waits for the
result with a deadline, so any number of worker threads can send at once and none waits longer than
the deadline. ``close()`` stops the loop and joins the thread.

Bounded: engines live in a pool (``channels/pool.py``) keyed by snmpEngineID (v3 traps with an
``engine_id``; every other notification shares the process's default engine): at most
``[snmp] max_engines`` (64), each closed after ``[snmp] engine_idle_seconds`` (600) unused or when
the pool is full and it is the least recently used; an engine configured for more than
MAX_CONFIGS_PER_ENGINE distinct users/communities/targets is replaced by a fresh one. Closing an
engine closes its sockets and drops pysnmp's tables with it. Each attempt's wall-clock deadline cuts
the name lookup and the wait for the notification (an inform not acknowledged by then is a
DeadlineExceeded).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
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

from channels.errors import DeadlineExceeded, PermanentError, TransientError
from channels.netguard import AddressPolicy
from channels.pool import BoundedPool
from channels.snmp_config import AUTH_PROTOCOLS, PRIV_PROTOCOLS, SnmpConfig
from channels.snmp_transport import Udp6Transport, UdpTransport, resolve_host, send_errors

log = structlog.get_logger("channels.snmp")

RESOLVER_THREADS = 4
CLOSE_TIMEOUT = 5.0
DEFAULT_MAX_ENGINES = 64
DEFAULT_ENGINE_IDLE_SECONDS = 600.0
MAX_CONFIGS_PER_ENGINE = 256

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


# --- engine state ----------------------------------------------------------------------------------


class _EngineState:
    """One pysnmp engine with its client sockets and USM user gates. Used on the loop thread only.

    pysnmp keeps per-user, per-community and per-target rows in an engine's tables; ``configs``
    counts the distinct ones this engine has been configured for, so an engine that served too many
    is retired (replaced by a fresh one) rather than grown without bound."""

    def __init__(self, engine_id: bytes | None) -> None:
        self.engine_id = engine_id
        self.engine = SnmpEngine() if engine_id is None else SnmpEngine(rfc1902.OctetString(engine_id))
        self.transports: dict[tuple[int, ...], UdpTransport | Udp6Transport] = {}
        self.bound: dict[tuple[int, ...], asyncio.Future[None]] = {}
        self.users: dict[str, _UserGate] = {}
        self.configs: set[int] = set()
        self.closed = False

    @property
    def usable(self) -> bool:
        return not self.closed and len(self.configs) < MAX_CONFIGS_PER_ENGINE

    def note_config(self, config: SnmpConfig) -> None:
        self.configs.add(
            hash((config.host, config.port, config.username, config.community, _credentials(config)))
        )

    async def open_socket(self, ipv6: bool) -> UdpTransport | Udp6Transport:
        """The engine's client socket for the family, opened once; waits until it is bound."""
        domain = udp6.DOMAIN_NAME if ipv6 else udp.DOMAIN_NAME
        transport = self.transports.get(domain)
        if transport is not None and not transport.usable:
            self._drop_socket(domain)
            transport = None
        if transport is None:
            transport = (Udp6Transport if ipv6 else UdpTransport)().open_client_mode()
            lcd.add_transport(self.engine, domain, transport)
            self.transports[domain] = transport
            self.bound[domain] = asyncio.ensure_future(_bound(transport))
        ready = self.bound[domain]
        try:
            await asyncio.shield(ready)
        except OSError as exc:
            if self.bound.get(domain) is ready:
                self._drop_socket(domain)
            family = "IPv6" if ipv6 else "IPv4"
            raise TransientError(f"cannot open an {family} UDP socket: {exc.strerror or exc}") from None
        return transport

    def drop_socket_for(self, transport: Any) -> None:
        """Forget a socket that failed, so the next notification opens a fresh one."""
        for domain, known in list(self.transports.items()):
            if known is transport:
                self._drop_socket(domain)

    def _drop_socket(self, domain: tuple[int, ...]) -> None:
        transport = self.transports.pop(domain, None)
        ready = self.bound.pop(domain, None)
        if ready is not None and not ready.done():
            ready.cancel()
        with contextlib.suppress(PySnmpError, KeyError):
            lcd.delete_transport(self.engine, domain)  # unregisters it, but leaves its socket open
        if transport is not None:
            with contextlib.suppress(PySnmpError, OSError):
                transport.close_transport()

    def user_gate(self, config: SnmpConfig) -> AbstractAsyncContextManager[None]:
        assert config.username is not None
        gate = self.users.get(config.username)
        if gate is None:
            gate = self.users[config.username] = _UserGate()
        return gate.holding(_credentials(config))

    def close(self) -> None:
        """Release the engine's sockets, timers and tables (pysnmp state is freed with the engine)."""
        if self.closed:
            return
        self.closed = True
        for ready in self.bound.values():
            if not ready.done():
                ready.cancel()
        with contextlib.suppress(PySnmpError):
            self.engine.close_dispatcher()
        self.transports.clear()
        self.bound.clear()
        self.users.clear()


async def _bound(transport: Any) -> None:
    """Wait for pysnmp's create_datagram_endpoint to finish, so the first datagram is not just queued."""
    pending = getattr(transport, "_lport", None)
    if isinstance(pending, asyncio.Future):
        await pending


# --- the event-loop thread -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Budget:
    resolve: float  # seconds for the name lookup
    total: float  # seconds for the whole notification, lookup included
    cut_by_deadline: bool  # the attempt's deadline, not [snmp] timeout, set ``total``


class SnmpNotifier:
    """One daemon thread running an asyncio loop that owns the pysnmp engines (one per engine ID, in
    a bounded idle-expiring pool).

    ``notify()`` is thread-safe and blocking: it runs one notification on the loop and waits for it
    with a deadline. ``close()`` cancels what is in flight, closes the sockets and joins the thread.
    """

    def __init__(
        self,
        *,
        timeout: float,
        retries: int,
        address_policy: AddressPolicy,
        max_engines: int = DEFAULT_MAX_ENGINES,
        engine_idle_seconds: float = DEFAULT_ENGINE_IDLE_SECONDS,
    ) -> None:
        self.address_policy = address_policy
        self.timeout = timeout
        self.retries = retries
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._loop_error)
        self._resolver = concurrent.futures.ThreadPoolExecutor(
            max_workers=RESOLVER_THREADS, thread_name_prefix="snmp-resolve"
        )
        self.engines: BoundedPool[bytes | None, _EngineState] = BoundedPool(
            name="snmp-engines",
            max_size=max_engines,
            idle_seconds=engine_idle_seconds,
            close=self._close_engine,
        )
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="snmp-notifier", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        log.warning("snmp.loop_error", message=context.get("message"), error=repr(exc) if exc else None)

    def _close_engine(self, state: _EngineState) -> None:
        """Pool callback (any thread): the engine is closed on the loop thread that owns it."""
        with contextlib.suppress(RuntimeError):  # the loop is already closed: nothing left to release
            self._loop.call_soon_threadsafe(state.close)

    def budget(self, config: SnmpConfig, deadline: float | None = None) -> _Budget:
        """The name lookup gets ``timeout``; then a trap gets ``timeout`` more to be built and sent, an
        inform ``timeout`` per attempt plus one exchange for v3 engine discovery and some slack. The
        attempt's deadline (``time.monotonic()``) cuts both."""
        sending = self.timeout * (self.retries + 2) + 0.5 if config.inform else self.timeout
        resolve, total = self.timeout, self.timeout + sending
        if deadline is None:
            return _Budget(resolve=resolve, total=total, cut_by_deadline=False)
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(f"SNMP notification to {config.target}: attempt deadline reached")
        return _Budget(resolve=min(resolve, left), total=min(total, left), cut_by_deadline=left < total)

    def notify(
        self, config: SnmpConfig, varbinds: list[tuple[tuple[int, ...], Any]], deadline: float | None = None
    ) -> str:
        """Send one notification; returns a one-line receipt or raises Transient/PermanentError."""
        budget = self.budget(config, deadline)
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
            raise _timed_out(f"SNMP notification to {config.target} timed out", budget) from None
        except concurrent.futures.CancelledError:
            raise TransientError("SNMP sender is shut down") from None

    async def _notify(
        self, config: SnmpConfig, varbinds: list[tuple[tuple[int, ...], Any]], budget: _Budget
    ) -> str:
        try:
            return await asyncio.wait_for(self._notify_unbounded(config, varbinds, budget), budget.total)
        except TimeoutError:
            if config.inform:
                raise _timed_out(f"SNMP inform to {config.target} not acknowledged", budget) from None
            raise _timed_out(f"SNMP trap to {config.target} timed out", budget) from None

    async def _notify_unbounded(
        self, config: SnmpConfig, varbinds: list[tuple[tuple[int, ...], Any]], budget: _Budget
    ) -> str:
        address, ipv6 = await self._resolve(config.host, config.port, budget.resolve)
        key = config.engine_id if config.version == "3" else None
        state = self._take_engine(key)
        try:
            state.note_config(config)
            transport = await state.open_socket(ipv6)
            return await self._send(state, transport, config, (address, ipv6), varbinds, budget)
        finally:
            self.engines.give_back(key, state)

    async def _send(
        self,
        state: _EngineState,
        transport: UdpTransport | Udp6Transport,
        config: SnmpConfig,
        destination: tuple[str, bool],
        varbinds: list[tuple[tuple[int, ...], Any]],
        budget: _Budget,
    ) -> str:
        address, ipv6 = destination
        target_class = Udp6TransportTarget if ipv6 else UdpTransportTarget
        timeout = min(self.timeout, budget.total)
        target = await target_class.create((address, config.port), timeout=timeout, retries=self.retries)
        kind = "inform" if config.inform else "trap"
        version = f"SNMPv{config.version}"
        with send_errors() as errors:
            if config.version == "3":
                async with state.user_gate(config):
                    result = await send_notification(
                        state.engine,
                        _usm_user(config),
                        target,
                        ContextData(),
                        kind,
                        *varbinds,
                        lookupMib=False,
                    )
            else:
                auth = CommunityData(config.community, mpModel=1)  # noqa: S508 - v2c is a supported choice
                result = await send_notification(
                    state.engine, auth, target, ContextData(), kind, *varbinds, lookupMib=False
                )
        if not config.inform and not errors:
            late = await transport.drained()  # returns at once unless asyncio queued the datagram
            errors += [late] if late is not None else []
        if errors or not transport.usable:
            state.drop_socket_for(transport)
            reason = (errors[0].strerror or type(errors[0]).__name__) if errors else "socket closed"
            raise TransientError(f"{version} {kind} to {config.target} was not sent: {reason}")
        error_indication, error_status, _index, _varbinds = result
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
                loop.run_in_executor(self._resolver, resolve_host, host, port, self.address_policy), timeout
            )
        except TimeoutError:
            raise TransientError(f"resolving SNMP host {host!r} timed out after {timeout:g}s") from None

    def _take_engine(self, key: bytes | None) -> _EngineState:
        """The pooled engine for key (a new one if none is usable), in use until given back."""
        state = self.engines.take(key, usable=lambda known: known.usable)
        if state is None:
            state = _EngineState(key)
            try:
                self.engines.put(key, state)
            except RuntimeError:  # the pool was closed: the notifier is shutting down
                raise TransientError("SNMP sender is shut down") from None
        return state

    def engine_id(self, configured: bytes | None = None) -> bytes:
        """The snmpEngineID notifications for ``configured`` go out with (the default engine's for None)."""
        future = asyncio.run_coroutine_threadsafe(self._engine_id(configured), self._loop)
        return future.result(CLOSE_TIMEOUT)

    async def _engine_id(self, configured: bytes | None) -> bytes:
        state = self._take_engine(configured)
        try:
            return bytes(state.engine.snmpEngineID.asOctets())
        finally:
            self.engines.give_back(configured, state)

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
        states = self.engines.values()
        self.engines.close()  # schedules state.close on this loop; close them now, while it runs
        for state in states:
            state.close()
        await self._loop.shutdown_default_executor()


def _timed_out(what: str, budget: _Budget) -> TransientError:
    if budget.cut_by_deadline:
        return DeadlineExceeded(f"{what}: attempt deadline reached after {budget.total:.3g}s")
    return TransientError(f"{what} after {budget.total:g}s")


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
