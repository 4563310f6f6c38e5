"""One connection to an MQTT broker: a paho client pinned to a checked address, connected within a
deadline, that can prove the broker read what was sent (a PINGREQ round trip) and closes for good.

paho's ``publish`` is thread-safe while its network loop runs in its own thread (``loop_start``),
so one connection serves every worker thread publishing with the same broker and credentials.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets as _secrets
import socket
import ssl
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from channels.deadline import closing_at
from channels.errors import DeadlineExceeded, DeliveryError, PermanentError, TransientError
from channels.mqtt_config import MqttConfig
from channels.netguard import AddressPolicy, check_host
from channels.settings import MqttSettings

log = structlog.get_logger("channels.mqtt")

# CONNACK reasons that no retry can fix: bad user name or password (v3.1.1 code 4), not authorised (5).
CREDENTIAL_REASONS = frozenset({134, 135})

_client_numbers = itertools.count(1)
_PROCESS_TOKEN = _secrets.token_hex(3)  # PIDs repeat across containers; the broker kicks duplicate ids


def new_client_id() -> str:
    return f"delivery-worker-{os.getpid()}-{_PROCESS_TOKEN}-{next(_client_numbers)}"


def seconds_left(deadline: float | None, limit: float) -> float:
    """``limit``, cut to what is left before ``deadline`` (``time.monotonic()``; None: no deadline);
    raises DeadlineExceeded once it has passed."""
    if deadline is None:
        return limit
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("attempt deadline reached")
    return min(limit, left)


class BrokerClient(mqtt.Client):
    """A paho client that connects to an address checked beforehand (the host name still names the
    broker for TLS), keeps its TCP socket so a deadline can cut it, and counts PINGREQ/PINGRESP."""

    def __init__(self, *args: Any, pinned_address: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pinned_address = pinned_address
        self.tcp_socket: socket.socket | None = None
        self.pings = threading.Condition()  # reentrant; guards the two counters below
        self.pings_sent = 0
        self.pongs_received = 0

    def _create_socket_connection(self) -> socket.socket:
        source = (self._bind_address, self._bind_port)
        self.tcp_socket = socket.create_connection(
            (self.pinned_address, self._port), timeout=self._connect_timeout, source_address=source
        )
        return self.tcp_socket

    def _send_pingreq(self) -> MQTTErrorCode:
        with self.pings:  # counted with the send, so the n-th PINGRESP answers the n-th PINGREQ
            rc = super()._send_pingreq()
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.pings_sent += 1
            return rc

    def _handle_pingresp(self) -> MQTTErrorCode:
        rc = super()._handle_pingresp()
        with self.pings:
            self.pongs_received += 1
            self.pings.notify_all()
        return rc

    def wake(self) -> None:
        with self.pings:
            self.pings.notify_all()


class BrokerConnection:
    """One connected client with its network thread; ``lost`` is set when the link drops."""

    def __init__(self, client: BrokerClient, client_id: str, broker: str) -> None:
        self.client = client
        self.client_id = client_id
        self.broker = broker
        self.lost = threading.Event()

    @property
    def alive(self) -> bool:
        return not self.lost.is_set() and self.client.is_connected()

    def ping(self) -> int | None:
        """Send a PINGREQ; returns its number for ``answered``/``wait_answer`` (None: not sent).

        A broker reads a connection's packets in order, so the answer proves it read everything
        sent before without dropping the connection."""
        client = self.client
        with client.pings:
            if client._send_pingreq() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return None
            return client.pings_sent

    def answered(self, ping: int) -> bool:
        with self.client.pings:
            return self.client.pongs_received >= ping

    def wait_answer(self, ping: int, timeout: float) -> bool:
        """Wait up to ``timeout`` for the PINGRESP to ping number ``ping`` (or the link to drop)."""
        client = self.client
        with client.pings:
            client.pings.wait_for(lambda: client.pongs_received >= ping or self.lost.is_set(), timeout)
            return client.pongs_received >= ping

    def abort(self) -> None:
        """Cut the TCP connection now (from any thread): whatever waits on it fails at once."""
        self.lost.set()
        self.client.wake()
        sock = self.client.tcp_socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def shutdown(self, timeout: float = 0.0) -> None:
        """Disconnect, stop the network thread and close every socket paho holds (its wake-up
        socket pair included); waits at most ``timeout`` seconds, the rest finishes in background."""
        self.lost.set()
        self.client.wake()
        with contextlib.suppress(Exception):  # best effort; the socket may already be gone
            self.client.disconnect()
        stopper = threading.Thread(target=self._stop, name="mqtt-loop-stop", daemon=True)
        stopper.start()
        stopper.join(timeout)

    def _stop(self) -> None:
        self.client.loop_stop()
        with contextlib.suppress(OSError):
            self.client._reset_sockets()  # loop_stop leaves the socket pair open until GC


def connect(
    config: MqttConfig,
    *,
    settings: MqttSettings,
    tls_context: ssl.SSLContext | None,
    address_policy: AddressPolicy,
    deadline: float | None,
) -> BrokerConnection:
    """A connected, CONNACKed connection, or Transient/PermanentError; never past ``deadline``."""
    where = f"MQTT broker {config.broker}"
    timeout = seconds_left(deadline, settings.connect_timeout)
    client_id = new_client_id()
    # Tenants write broker hosts too: resolve once, check, and connect to the checked address.
    address = _resolve(config, address_policy, settings.connect_timeout, deadline)
    client = BrokerClient(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=True,
        reconnect_on_failure=False,  # a dropped link ends the loop; the pool makes a new client
        pinned_address=address,
    )
    client.connect_timeout = timeout
    if config.username:
        client.username_pw_set(config.username, config.password)
    if tls_context is not None:
        client.tls_set_context(tls_context)
        if not config.tls_verify:
            log.warning("tls.verification_disabled", channel_type="mqtt", broker=config.broker)
    conn = BrokerConnection(client, client_id, config.broker)
    try:
        with closing_at(deadline, conn.abort) as armed:
            try:
                _handshake(conn, config, settings, where, timeout, deadline)
            except DeliveryError:
                if armed.fired:
                    raise DeadlineExceeded(f"{where}: attempt deadline reached while connecting") from None
                raise
    except DeliveryError:
        conn.shutdown(0)
        raise
    return conn


def _resolve(config: MqttConfig, policy: AddressPolicy, limit: float, deadline: float | None) -> str:
    """The checked address of the broker, looked up in a helper thread so that a resolver that hangs
    costs this attempt at most ``limit`` and never runs past the deadline (the lookup itself cannot
    be interrupted; its thread ends when the resolver gives up)."""
    result: list[str | BaseException] = []

    def lookup() -> None:
        try:
            result.append(check_host(config.host, config.port, policy))
        except BaseException as exc:  # handed to the waiting thread below
            result.append(exc)

    resolver = threading.Thread(target=lookup, name="mqtt-resolve", daemon=True)
    wait = seconds_left(deadline, limit)
    resolver.start()
    resolver.join(wait)
    if not result:
        where = f"MQTT broker {config.broker}"
        if wait < limit:
            raise DeadlineExceeded(f"{where}: attempt deadline reached resolving the host name")
        raise TransientError(f"{where}: resolving the host name timed out after {limit:g}s", slow=True)
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def _handshake(
    conn: BrokerConnection,
    config: MqttConfig,
    settings: MqttSettings,
    where: str,
    timeout: float,
    deadline: float | None,
) -> None:
    """TCP connect, TLS handshake, CONNECT and the wait for CONNACK."""
    client = conn.client
    connacked = threading.Event()
    outcome: list[ReasonCode] = []

    def on_connect(
        _client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        outcome.append(reason)
        connacked.set()

    def on_disconnect(_client: mqtt.Client, _userdata: Any, _flags: Any, _reason: Any, _props: Any) -> None:
        conn.lost.set()
        conn.client.wake()
        connacked.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(config.host, config.port, keepalive=settings.keepalive)
    except ssl.SSLCertVerificationError as exc:
        reason = exc.verify_message or exc.reason or "certificate rejected"
        raise PermanentError(f"{where}: TLS certificate verification failed ({reason})") from None
    except ssl.SSLError as exc:
        raise TransientError(f"{where}: TLS handshake failed ({exc.reason or exc})") from None
    except socket.gaierror:
        raise TransientError(f"{where}: cannot resolve host name") from None
    except TimeoutError:
        raise TransientError(f"{where}: connection timed out after {timeout:g}s", slow=True) from None
    except ConnectionRefusedError:
        raise TransientError(f"{where}: connection refused") from None
    except OSError as exc:
        raise TransientError(f"{where}: cannot connect ({exc.strerror or type(exc).__name__})") from None
    except ValueError as exc:
        raise PermanentError(f"{where}: cannot connect ({exc})") from None

    client.loop_start()
    limit = settings.connect_timeout
    wait = seconds_left(deadline, limit)
    if not connacked.wait(wait):
        if wait < limit:
            raise DeadlineExceeded(f"{where}: attempt deadline reached waiting for CONNACK")
        raise TransientError(f"{where}: no CONNACK within {limit:g}s")
    if not outcome:
        raise TransientError(f"{where}: connection closed before CONNACK")
    connack = outcome[0]
    if connack.is_failure:
        if connack.value in CREDENTIAL_REASONS:
            raise PermanentError(f"{where} refused the connection: {connack} (check username/password)")
        raise TransientError(f"{where} refused the connection: {connack}")
    if conn.lost.is_set():
        raise TransientError(f"{where}: connection closed right after CONNACK")
