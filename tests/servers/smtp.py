"""A real SMTP server on 127.0.0.1 (aiosmtpd in a thread) that records what it receives.

    with smtp_server(users={"alice": "s3cret"}, auth_require_tls=False) as server:
        ...send to server.host:server.port...
        server.messages[0].rcpt_tos

Options: ``users`` enables AUTH (PLAIN/LOGIN); ``refuse`` maps a recipient address to the reply
its RCPT gets (``"550 5.1.1 no such user"``); ``tls_context`` offers STARTTLS (``require_starttls``
makes it mandatory); ``implicit_tls`` wraps the whole connection (the port-465 style).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

HOST = "127.0.0.1"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    login: str | None

    def message(self) -> EmailMessage:
        parsed = BytesParser(policy=policy.default).parsebytes(self.data)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class RecordingHandler:
    refuse: Mapping[str, str] = field(default_factory=dict)
    messages: list[Received] = field(default_factory=list)

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
) -> Iterator[SmtpServer]:
    handler = RecordingHandler(refuse=dict(refuse or {}))
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
