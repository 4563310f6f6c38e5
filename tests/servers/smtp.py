"""A real SMTP server on 127.0.0.1 (aiosmtpd in a thread) that records what it receives.

    with smtp_server(users={"alice": "s3cret"}, auth_require_tls=False) as server:
        ...send to server.host:server.port...
        server.messages[0].rcpt_tos

Options: ``users`` enables AUTH (PLAIN/LOGIN); ``refuse`` maps a recipient address to the reply
its RCPT gets (``"550 5.1.1 no such user"``); ``tls_context`` offers STARTTLS (``require_starttls``
makes it mandatory); ``implicit_tls`` wraps the whole connection (the port-465 style);
``eight_bit_mime=False`` leaves 8BITMIME out of the EHLO reply (a 7-bit-only server); ``smtputf8``
offers SMTPUTF8 (internationalised addresses).
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import errors, policy
from email.message import EmailMessage
from email.parser import BytesParser, Parser
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

HOST = "127.0.0.1"
ENCODED_WORD = re.compile(rb"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")


def strict_message(data: bytes, *, smtputf8: bool = False) -> EmailMessage:
    """``data`` as a strict reader sees it. Fails on any parser or header defect, a header line over
    78 characters or holding a control character, non-ASCII in a header (unless ``smtputf8``), an
    RFC 2047 encoded word over 75 characters, or a body line over 998."""
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        assert len(line) <= 78, f"header line over 78 characters: {line!r}"
        assert smtputf8 or line.isascii(), f"non-ASCII header line: {line!r}"
        assert all(byte >= 32 or byte == 9 for byte in line), f"control character in {line!r}"
    for word in ENCODED_WORD.findall(head):
        assert len(word) <= 75, f"encoded word over 75 characters: {word!r}"
    assert all(len(line) <= 998 for line in body.split(b"\r\n")), "body line over 998 characters"
    assert b"\r" not in body.replace(b"\r\n", b"") and b"\n" not in body.replace(b"\r\n", b"")
    if smtputf8:  # RFC 6532: UTF-8 headers; Python still calls a non-ASCII local part a defect
        parsed = Parser(policy=policy.strict).parsestr(data.decode("utf-8"))
        allowed: tuple[type[Exception], ...] = (errors.NonASCIILocalPartDefect,)
    else:
        parsed = BytesParser(policy=policy.strict).parsebytes(data)
        allowed = ()
    assert isinstance(parsed, EmailMessage)
    for part in parsed.walk():
        assert not part.defects, part.defects
        for name, value in part.items():
            defects = [d for d in getattr(value, "defects", ()) if not isinstance(d, allowed)]
            assert not defects, (name, defects)
    return parsed


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    login: str | None
    mail_options: list[str] = field(default_factory=list)  # "BODY=8BITMIME", "SMTPUTF8", ...

    def message(self) -> EmailMessage:
        parsed = BytesParser(policy=policy.default).parsebytes(self.data)
        assert isinstance(parsed, EmailMessage)
        return parsed

    def strict_message(self) -> EmailMessage:
        """The message, checked by ``strict_message`` (module function) on the way."""
        return strict_message(self.data, smtputf8="SMTPUTF8" in self.mail_options)


@dataclass
class RecordingHandler:
    refuse: Mapping[str, str] = field(default_factory=dict)
    eight_bit_mime: bool = True
    messages: list[Received] = field(default_factory=list)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return [r for r in responses if self.eight_bit_mime or "8BITMIME" not in r]

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        login = session.auth_data if session.authenticated else None
        self.messages.append(
            Received(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                data=envelope.original_content or envelope.content,
                tls=bool(session.ssl) or server.transport.get_extra_info("ssl_object") is not None,
                login=login,
                mail_options=list(envelope.mail_options),
            )
        )
        return "250 Message accepted for delivery"


class _EphemeralController(Controller):
    """Binds port 0 and learns the real port before aiosmtpd's own readiness check connects."""

    def _trigger_server(self) -> None:
        server: Any = self.server  # an asyncio.Server once bound
        self.port = server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


@dataclass
class SmtpServer:
    controller: Controller
    handler: RecordingHandler
    auth_attempts: list[tuple[str, str]]

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return int(self.controller.port)

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages


@contextmanager
def smtp_server(
    *,
    users: Mapping[str, str] | None = None,
    refuse: Mapping[str, str] | None = None,
    tls_context: ssl.SSLContext | None = None,
    require_starttls: bool = False,
    implicit_tls: ssl.SSLContext | None = None,
    auth_require_tls: bool = True,
    eight_bit_mime: bool = True,
    smtputf8: bool = False,
) -> Iterator[SmtpServer]:
    handler = RecordingHandler(refuse=dict(refuse or {}), eight_bit_mime=eight_bit_mime)
    attempts: list[tuple[str, str]] = []
    kwargs: dict[str, Any] = {}
    if users is not None:

        def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
            if not isinstance(data, LoginPassword):
                return AuthResult(success=False, handled=False)
            login, password = data.login.decode(), data.password.decode()
            attempts.append((login, password))
            if users.get(login) != password:
                return AuthResult(success=False, handled=False)
            return AuthResult(success=True, auth_data=login)

        kwargs.update(authenticator=authenticator, auth_require_tls=auth_require_tls)
    if tls_context is not None:
        kwargs.update(tls_context=tls_context, require_starttls=require_starttls)
    controller = _EphemeralController(
        handler,
        hostname=HOST,
        port=0,
        ssl_context=implicit_tls,
        server_hostname="smtp.test",  # aiosmtpd would otherwise look up its FQDN
        ready_timeout=5.0,
        enable_SMTPUTF8=smtputf8,
        **kwargs,
    )
    controller.start()
    try:
        yield SmtpServer(controller=controller, handler=handler, auth_attempts=attempts)
    finally:
        controller.stop()


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (connecting is refused at once)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextmanager
def silent_server() -> Iterator[int]:
    """A port whose TCP connections complete (via the listen backlog) but never get a greeting."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


def smtp_config(port: int, **overrides: object) -> dict[str, object]:
    """The `smtp` object of an email channel that sends in plain SMTP to a test server."""
    return {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_tls": False,
        "from_address": "alerts@pulse.test",
        "from_name": "Pulse Alerts",
        **overrides,
    }


@dataclass
class TricklingPeer:
    """A raw SMTP peer on 127.0.0.1 that drags a reply out one byte at a time (see trickling_server)."""

    port: int
    data_received: int = 0  # messages whose DATA ended (the "." line) before the trickle
    closed_by_client: threading.Event = field(default_factory=threading.Event)


@contextmanager
def trickling_server(*, after: str = "connect", interval: float = 0.2) -> Iterator[TricklingPeer]:
    """A peer that answers normally until ``after`` ("connect": the greeting; "data": the reply to
    the end of DATA), then sends that reply one byte every ``interval`` seconds, without end.
    ``closed_by_client`` is set once the client shut the connection."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(4)
    peer = TricklingPeer(port=int(listener.getsockname()[1]))
    stop = threading.Event()

    def trickle(conn: socket.socket) -> None:
        conn.settimeout(interval)
        while not stop.is_set():
            try:
                conn.sendall(b"2")
                if conn.recv(1) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        peer.closed_by_client.set()

    def serve(conn: socket.socket) -> None:
        with conn:
            if after == "connect":
                return trickle(conn)
            conn.sendall(b"220 trickle.test ESMTP\r\n")
            reader = conn.makefile("rb")
            while not stop.is_set():
                line = reader.readline()
                if not line:
                    peer.closed_by_client.set()
                    return
                verb = line[:4].upper()
                if verb == b"DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    while reader.readline() not in (b".\r\n", b""):
                        pass
                    peer.data_received += 1
                    return trickle(conn)
                conn.sendall(b"221 bye\r\n" if verb == b"QUIT" else b"250 ok\r\n")
        return None

    def accept() -> None:
        listener.settimeout(0.1)  # so that the loop sees ``stop``: close() does not wake accept()
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield peer
    finally:
        stop.set()
        acceptor.join(timeout=5)
        listener.close()
