"""Email channel: config parsing (both spellings), message building, and real SMTP on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import errno
import smtplib
import socket
import ssl
import time
import unicodedata
from collections.abc import Iterator
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
import trustme

from channels import email as email_channel
from channels.base import Delivery
from channels.context import ChannelContext
from channels.email import (
    EmailChannel,
    EmailConfig,
    build_message,
    html_to_text,
    normalise_smtp,
    parse_email_config,
)
from channels.errors import (
    DeadlineExceeded,
    DeliveryError,
    InvalidChannelConfig,
    PermanentError,
    TransientError,
)
from channels.http import HttpClient
from tests.servers.smtp import (
    HOST,
    SmtpServer,
    closed_port,
    silent_server,
    smtp_server,
    strict_message,
    trickling_server,
)
from tests.support import SAMPLE_PAYLOAD, make_delivery, make_settings

PASSWORD = "hunter2-Pa55word"


def make_channel(**sections: dict[str, Any]) -> EmailChannel:
    http = HttpClient(connect_timeout=1, read_timeout=1, user_agent="test", pool_size=1)
    return EmailChannel(ChannelContext(settings=make_settings(**sections), http=http))


def raw_config(
    smtp: dict[str, Any] | None = None,
    recipients: dict[str, Any] | None = None,
    template: dict[str, Any] | None = None,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "smtp": {
            "smtp_host": "mail.example.com",
            "smtp_port": 587,
            "from_address": "alerts@example.com",
            "from_name": "Pulse Alerts",
            **(smtp or {}),
        },
        "recipients": recipients
        if recipients is not None
        else {"to": ["ops@example.com"], "cc": ["lead@example.com"], "bcc": ["audit@example.com"]},
    }
    if template is not None:
        config["template"] = template
    return config


def parse(raw: Any) -> EmailConfig:
    return parse_email_config(raw)  # what EmailChannel.parse_config does, without loading CA certs


def build(config: dict[str, Any], delivery: Delivery | None = None) -> EmailMessage:
    return build_message(parse(config), delivery or make_delivery())


def assert_no_secret(exc: BaseException) -> None:
    assert PASSWORD not in str(exc)


# --- config ----------------------------------------------------------------------------------------


def test_parse_primary_spelling_with_defaults() -> None:
    config = parse(raw_config())
    assert (config.host, config.port, config.use_tls, config.tls_verify) == (
        "mail.example.com",
        587,
        True,
        True,
    )
    assert config.from_address == "alerts@example.com"
    assert config.from_name == "Pulse Alerts"
    assert (config.to, config.cc, config.bcc) == (
        ("ops@example.com",),
        ("lead@example.com",),
        ("audit@example.com",),
    )
    assert config.format == "text"
    assert config.user is None and config.password is None and config.secrets() == ()
    del_port = raw_config()
    del del_port["smtp"]["smtp_port"]
    assert parse(del_port).port == 587


def test_parse_ui_spelling_maps_onto_primary_keys() -> None:
    ui = raw_config(smtp={"smtp_host": None, "smtp_port": None})
    ui["smtp"].update(host="smtp.ui.example", port="2525", username="bob", password=PASSWORD, use_tls=False)
    config = parse(ui)
    assert (config.host, config.port, config.user, config.password, config.use_tls) == (
        "smtp.ui.example",
        2525,
        "bob",
        PASSWORD,
        False,
    )
    assert config.secrets() == (PASSWORD,)
    assert PASSWORD not in repr(config)


def test_primary_spelling_wins_when_both_are_present() -> None:
    raw = {
        "smtp_host": "primary.example",
        "host": "alternate.example",
        "smtp_port": 25,
        "port": 2525,
        "smtp_tls": True,
        "use_tls": False,
        "from_address": "a@example.com",
    }
    normalised = normalise_smtp(raw)
    assert normalised["smtp_host"] == "primary.example"
    assert normalised["smtp_port"] == 25
    assert normalised["smtp_tls"] is True
    assert "host" not in normalised and "use_tls" not in normalised
    # An empty primary value does not hide the alternate one.
    assert normalise_smtp({"smtp_host": "", "host": "alt.example"})["smtp_host"] == "alt.example"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: "not an object", "config must be a JSON object"),
        (lambda c: {**c, "smtp": ["x"]}, "config.smtp must be a JSON object"),
        (lambda c: {**c, "smtp": {"from_address": "a@example.com"}}, "config.smtp.smtp_host is missing"),
        (lambda c: {**c, "smtp": {"smtp_host": "h"}}, "smtp.from_address is missing"),
        (
            lambda c: {**c, "smtp": {**c["smtp"], "smtp_port": "abc"}},
            "config.smtp.smtp_port must be an integer",
        ),
        (
            lambda c: {**c, "smtp": {**c["smtp"], "smtp_port": None, "port": "abc"}},
            "config.smtp.port must be",
        ),
        (lambda c: {**c, "smtp": {**c["smtp"], "smtp_port": 70000}}, "config.smtp.smtp_port must be between"),
        (
            lambda c: {**c, "smtp": {**c["smtp"], "smtp_port": True}},
            "config.smtp.smtp_port must be an integer",
        ),
        (lambda c: {**c, "smtp": {**c["smtp"], "smtp_tls": "maybe"}}, "config.smtp.smtp_tls must be true or"),
        (
            lambda c: {**c, "smtp": {**c["smtp"], "tls_verify": "nah"}},
            "config.smtp.tls_verify must be true or",
        ),
        (lambda c: {**c, "smtp": {**c["smtp"], "smtp_host": 42}}, "config.smtp.smtp_host must be a string"),
        (lambda c: {**c, "smtp": {**c["smtp"], "smtp_host": "a b"}}, "config.smtp.smtp_host must be a host"),
        (lambda c: {**c, "smtp": {**c["smtp"], "from_address": "nobody"}}, "config.smtp.from_address is not"),
        (
            lambda c: {**c, "smtp": {**c["smtp"], "from_name": "X\r\nBcc: x@y"}},
            "config.smtp.from_name contains",
        ),
        (lambda c: {**c, "smtp": {**c["smtp"], "smtp_password": PASSWORD}}, "smtp_user is missing"),
        (lambda c: {**c, "smtp": {**c["smtp"], "smtp_user": "bob"}}, "config.smtp.smtp_password is missing"),
        (lambda c: {**c, "recipients": {}}, "config.recipients needs at least one address"),
        (lambda c: {**c, "recipients": None}, "config.recipients needs at least one address"),
        (lambda c: {**c, "recipients": {"to": "ops@example.com"}}, "config.recipients.to must be a list"),
        (lambda c: {**c, "recipients": {"to": [7]}}, "config.recipients.to[0] must be a string"),
        (
            lambda c: {**c, "recipients": {"to": ["a@x.com", "b@x.com\r\nBcc: e@x"]}},
            "config.recipients.to[1]",
        ),
        (lambda c: {**c, "recipients": {"cc": ["a@x.com\x00"]}}, "config.recipients.cc[0] contains"),
        (lambda c: {**c, "recipients": {"bcc": ["a@x.com, b@x.com"]}}, "config.recipients.bcc[0] is not"),
        (lambda c: {**c, "template": "x"}, "config.template must be a JSON object"),
        (lambda c: {**c, "template": {"format": "pdf"}}, "config.template.format must be html or text"),
        (
            lambda c: {**c, "template": {"subject_template": "a\nb"}},
            "config.template.subject_template contains",
        ),
        (lambda c: {**c, "template": {"body_template": "{0}"}}, "config.template.body_template: unsupported"),
    ],
)
def test_config_errors_name_the_key(mutate: Any, message: str) -> None:
    with pytest.raises(InvalidChannelConfig) as caught:
        parse(mutate(raw_config()))
    assert message in str(caught.value)


def test_addresses_with_display_names_and_blank_entries() -> None:
    config = parse(
        raw_config(recipients={"to": ["Ops Team <ops@example.com>", ""], "bcc": ["ops@example.com"]})
    )
    assert config.to == ("Ops Team <ops@example.com>",)
    assert config.envelope_recipients == ["ops@example.com"]  # deduplicated, display name dropped


# --- message building ----------------------------------------------------------------------------------


def test_default_text_message_headers_and_body() -> None:
    message = build(raw_config(), make_delivery(key="notification_jobs:42"))
    assert message["From"] == "Pulse Alerts <alerts@example.com>"
    assert message["To"] == "ops@example.com"
    assert message["Cc"] == "lead@example.com"
    assert message["Bcc"] is None
    assert message["Subject"] == "[CRITICAL] THRESHOLD on sensor-17"
    assert message["X-Delivery-Key"] == "notification_jobs:42"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Message-ID"].endswith("@example.com>")
    assert parsedate_to_datetime(message["Date"]).tzinfo is not None
    assert message.get_content_type() == "text/plain"
    body = message.get_content()
    for expected in (
        "Temperature 92.5C above 85C",
        "sensor-17",
        "plant-3",
        "THRESHOLD",
        "CRITICAL (4)",
        "2026-11-29T03:00:00Z",
        "1001",
        "tenant-a",
        "OPEN",
    ):
        assert expected in body
    assert b"audit@example.com" not in message.as_bytes()


def test_default_subject_for_resolved_and_sparse_alerts() -> None:
    assert (
        build(raw_config(), make_delivery(event="CLOSED"))["Subject"] == "[RESOLVED] THRESHOLD on sensor-17"
    )
    sparse = build(raw_config(), make_delivery({"alert_id": 5}))
    assert sparse["Subject"] == "[UNKNOWN] Alert"
    assert "Device:    -" in sparse.get_content()


def test_templates_render_placeholders_and_missing_ones_render_empty() -> None:
    template = {
        "subject_template": "{severity} {alert_type} at {site_id}{no_such_name}",
        "body_template": "Device {device_id} says {message}. Extra: [{details}] [{no_such_name}]",
    }
    message = build(raw_config(template=template))
    assert message["Subject"] == "CRITICAL THRESHOLD at plant-3"
    assert message.get_content() == "Device sensor-17 says Temperature 92.5C above 85C. Extra: [] []\n"
    sparse = build(raw_config(template=template), make_delivery({"alert_id": 9}))
    assert sparse["Subject"] == "UNKNOWN at"  # whitespace runs in a header become one space
    empty = build(raw_config(template={"subject_template": "{no_such_name}"}))
    assert empty["Subject"] == "[CRITICAL] THRESHOLD on sensor-17"


def test_html_format_is_multipart_alternative_with_escaped_values() -> None:
    payload = {**SAMPLE_PAYLOAD, "message": "<script>alert(1)</script> & more"}
    template = {
        "format": "html",
        "body_template": "<h1>{alert_type}</h1><p>{message}</p><p>Device {device_id}</p>",
    }
    message = build(raw_config(template=template), make_delivery(payload))
    assert message.get_content_type() == "multipart/alternative"
    plain, rich = message.iter_parts()
    assert (plain.get_content_type(), rich.get_content_type()) == ("text/plain", "text/html")
    html_body = rich.get_content()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in html_body
    assert "<script>" not in html_body
    assert plain.get_content() == "THRESHOLD\n\n<script>alert(1)</script> & more\n\nDevice sensor-17\n"


def test_html_format_without_template_uses_default_bodies() -> None:
    message = build(raw_config(template={"format": "HTML"}))
    plain, rich = message.iter_parts()
    assert "Severity:  CRITICAL (4)" in plain.get_content()
    assert "<th align='left'>Severity</th><td>CRITICAL (4)</td>" in rich.get_content()


def test_html_to_text() -> None:
    markup = (
        "<html><head><style>p{}</style></head><body><p>One\n  two</p><br><ul><li>a &amp; b</li></ul></body>"
    )
    assert html_to_text(markup) == "One two\n\na & b\n"


@pytest.mark.parametrize(
    ("payload", "template", "subject"),
    [
        (
            {**SAMPLE_PAYLOAD, "alert_type": "X\r\nBcc: victim@example.net"},
            None,
            "[CRITICAL] X Bcc: victim@example.net on sensor-17",
        ),
        (
            {**SAMPLE_PAYLOAD, "message": "hi\nBcc: victim@example.net"},
            {"subject_template": "{message}"},
            "hi Bcc: victim@example.net",
        ),
        (
            {**SAMPLE_PAYLOAD, "device_id": "d\rX-Evil: 1"},
            {"subject_template": "on {device_id}"},
            "on d X-Evil: 1",
        ),
    ],
)
def test_line_breaks_in_subject_values_cannot_inject_headers(
    payload: dict[str, Any], template: Any, subject: str
) -> None:
    message = build(raw_config(template=template), make_delivery(payload))
    parsed = strict_message(message.as_bytes())
    assert parsed["Subject"] == subject
    assert parsed["Bcc"] is None and parsed["X-Evil"] is None


def test_message_id_is_stable_per_job() -> None:
    first = build(raw_config(), make_delivery(key="notification_jobs:7"))["Message-ID"]
    again = build(raw_config(), make_delivery(key="notification_jobs:7"))["Message-ID"]
    other = build(raw_config(), make_delivery(key="notification_jobs:8"))["Message-ID"]
    assert first == again != other


# --- end to end against aiosmtpd on 127.0.0.1 ----------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST, "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def plain_server() -> Iterator[SmtpServer]:
    with smtp_server() as server:
        yield server


def local(port: int, **smtp: Any) -> dict[str, Any]:
    return raw_config(smtp={"smtp_host": HOST, "smtp_port": port, "smtp_tls": False, **smtp})


def deliver(
    raw: dict[str, Any], *, timeout: float = 5, ca_file: str = "", key: str = "notification_jobs:1"
) -> Any:
    channel = make_channel(smtp={"timeout": timeout}, tls={"ca_file": ca_file})
    try:
        return channel.send(channel.parse_config(raw), make_delivery(key=key))
    finally:
        channel.close()


def failure(raw: dict[str, Any], **kwargs: Any) -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        deliver(raw, **kwargs)
    assert_no_secret(caught.value)
    return caught.value


def test_plain_delivery(plain_server: SmtpServer) -> None:
    receipt = deliver(local(plain_server.port), key="notification_jobs:99")
    assert receipt.detail == f"accepted by {HOST}:{plain_server.port} for 3 recipients"
    [received] = plain_server.messages
    assert received.mail_from == "alerts@example.com"
    assert received.rcpt_tos == ["ops@example.com", "lead@example.com", "audit@example.com"]
    assert not received.tls
    assert b"audit@example.com" not in received.data
    assert b"\r\nX-Delivery-Key: notification_jobs:99\r\n" in received.data
    message = received.message()
    assert message["From"] == "Pulse Alerts <alerts@example.com>"
    assert message["To"] == "ops@example.com"
    assert message["Cc"] == "lead@example.com"
    assert message["Subject"] == "[CRITICAL] THRESHOLD on sensor-17"
    assert "Message:   Temperature 92.5C above 85C" in message.get_content()


def test_html_delivery_and_ui_spelling(plain_server: SmtpServer) -> None:
    raw = raw_config(
        smtp={
            "smtp_host": None,
            "smtp_port": None,
            "host": HOST,
            "port": plain_server.port,
            "use_tls": "false",
        },
        recipients={"to": ["ops@example.com"]},
        template={
            "format": "html",
            "subject_template": "{alert_type}: {message}",
            "body_template": "<b>{device_id}</b>",
        },
    )
    deliver(raw)
    [received] = plain_server.messages
    message = received.message()
    assert message["Subject"] == "THRESHOLD: Temperature 92.5C above 85C"
    assert message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]


def test_auth_login() -> None:
    with smtp_server(users={"alice": PASSWORD}, auth_require_tls=False) as server:
        deliver(local(server.port, smtp_user="alice", smtp_password=PASSWORD))
        assert server.auth_attempts == [("alice", PASSWORD)]
        assert server.messages[0].login == "alice"


def test_auth_refused_is_permanent_and_hides_the_password() -> None:
    with smtp_server(users={"alice": "other"}, auth_require_tls=False) as server:
        exc = failure(local(server.port, smtp_user="alice", smtp_password=PASSWORD))
        assert isinstance(exc, PermanentError)
        assert str(exc).startswith(f"SMTP server {HOST}:{server.port} refused login (535")
        assert server.messages == []


def test_login_configured_but_server_offers_no_auth(plain_server: SmtpServer) -> None:
    exc = failure(local(plain_server.port, smtp_user="alice", smtp_password=PASSWORD))
    assert isinstance(exc, PermanentError)
    assert "does not offer AUTH" in str(exc)


def test_starttls_with_configured_ca_and_auth(server_tls: ssl.SSLContext, ca_file: str) -> None:
    with smtp_server(tls_context=server_tls, require_starttls=True, users={"alice": PASSWORD}) as server:
        raw = local(server.port, smtp_tls=True, smtp_user="alice", smtp_password=PASSWORD)
        deliver(raw, ca_file=ca_file)
        [received] = server.messages
        assert received.tls and received.login == "alice"


def test_starttls_refused_when_the_ca_is_not_trusted(server_tls: ssl.SSLContext) -> None:
    with smtp_server(tls_context=server_tls, require_starttls=True, users={"alice": PASSWORD}) as server:
        exc = failure(local(server.port, smtp_tls=True, smtp_user="alice", smtp_password=PASSWORD))
        assert isinstance(exc, PermanentError)
        assert "certificate verification failed" in str(exc)
        assert f"{HOST}:{server.port}" in str(exc)
        assert server.messages == [] and server.auth_attempts == []


def test_tls_verify_false_accepts_an_untrusted_certificate(server_tls: ssl.SSLContext) -> None:
    with smtp_server(tls_context=server_tls, require_starttls=True) as server:
        deliver(local(server.port, smtp_tls=True, tls_verify=False))
        assert server.messages[0].tls


def test_starttls_required_but_not_offered_never_falls_back(plain_server: SmtpServer) -> None:
    exc = failure(local(plain_server.port, smtp_tls=True, smtp_user="alice", smtp_password=PASSWORD))
    assert isinstance(exc, PermanentError)
    assert "does not offer STARTTLS" in str(exc)
    assert plain_server.messages == []


def test_implicit_tls(monkeypatch: pytest.MonkeyPatch, server_tls: ssl.SSLContext, ca_file: str) -> None:
    with smtp_server(implicit_tls=server_tls) as server:
        monkeypatch.setattr(email_channel, "IMPLICIT_TLS_PORTS", frozenset({server.port}))
        deliver(local(server.port, smtp_tls=False), ca_file=ca_file)  # the port decides, not smtp_tls
        assert server.messages[0].tls
        exc = failure(local(server.port))
        assert isinstance(exc, PermanentError) and "certificate verification failed" in str(exc)


def test_port_465_means_implicit_tls() -> None:
    config = parse(raw_config(smtp={"smtp_port": 465, "smtp_tls": False}))
    assert email_channel.transport(config) == "ssl"
    assert email_channel.transport(parse(raw_config())) == "starttls"
    assert email_channel.transport(parse(raw_config(smtp={"smtp_tls": False}))) == "plain"


def test_unreachable_server_is_transient() -> None:
    port = closed_port()
    started = time.monotonic()
    exc = failure(local(port, smtp_user="alice", smtp_password=PASSWORD))
    assert time.monotonic() - started < 2
    assert isinstance(exc, TransientError)
    assert str(exc) == f"cannot connect to SMTP server {HOST}:{port}: connection refused"


def test_silent_server_times_out_as_transient() -> None:
    with silent_server() as port:
        started = time.monotonic()
        exc = failure(local(port, smtp_user="alice", smtp_password=PASSWORD), timeout=0.5)
        assert time.monotonic() - started < 3
    assert isinstance(exc, TransientError)
    assert "timed out after 0.5s" in str(exc) and f"{HOST}:{port}" in str(exc)


def test_all_recipients_refused_with_550_is_permanent() -> None:
    with smtp_server(refuse={"ops@example.com": "550 5.1.1 no such user"}) as server:
        raw = local(server.port)
        raw["recipients"] = {"to": ["ops@example.com"]}
        exc = failure(raw)
        assert isinstance(exc, PermanentError)
        assert str(exc) == (
            f"SMTP server {HOST}:{server.port} refused all recipients: "
            "ops@example.com (550 5.1.1 no such user)"
        )
        assert server.messages == []


def test_all_recipients_refused_with_4xx_is_transient() -> None:
    with smtp_server(refuse={"ops@example.com": "450 4.7.1 greylisted, try again later"}) as server:
        raw = local(server.port)
        raw["recipients"] = {"to": ["ops@example.com"]}
        assert isinstance(failure(raw), TransientError)


def test_some_recipients_refused_is_delivered_with_detail() -> None:
    with smtp_server(refuse={"lead@example.com": "550 5.1.1 no such user"}) as server:
        receipt = deliver(local(server.port))
        assert receipt.detail == (
            f"accepted by {HOST}:{server.port} for 2 of 3 recipients; "
            "refused: lead@example.com (550 5.1.1 no such user)"
        )
        assert server.messages[0].rcpt_tos == ["ops@example.com", "audit@example.com"]


@pytest.mark.parametrize(
    ("exc", "kind", "text"),
    [
        (
            smtplib.SMTPSenderRefused(553, b"5.7.1 sender rejected", "alerts@example.com"),
            PermanentError,
            "SMTP server mail.example.com:587 refused sender alerts@example.com (553 5.7.1 sender rejected)",
        ),
        (smtplib.SMTPDataError(451, b"4.3.0 try later"), TransientError, "refused the message (451 4.3.0"),
        (smtplib.SMTPDataError(554, b"5.6.0 looks like spam"), PermanentError, "refused the message (554"),
        (
            smtplib.SMTPAuthenticationError(454, b"4.7.0 temporary failure"),
            TransientError,
            "refused login (454",
        ),
        (smtplib.SMTPAuthenticationError(535, f"bad {PASSWORD}".encode()), PermanentError, "(535 bad ***)"),
        (smtplib.SMTPConnectError(421, b"too busy"), TransientError, "refused the connection (421 too busy)"),
        (smtplib.SMTPException("No suitable authentication method found."), PermanentError, "No suitable"),
        (
            ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"),
            PermanentError,
            "TLS (STARTTLS)",
        ),
        (
            OSError(errno.EHOSTUNREACH, "No route to host"),
            TransientError,
            "failed while connecting: No route",
        ),
        (socket.gaierror(-2, "Name or service not known"), TransientError, "cannot resolve the host name"),
    ],
)
def test_error_mapping(exc: Exception, kind: type[DeliveryError], text: str) -> None:
    config = parse(raw_config(smtp={"smtp_user": "alice", "smtp_password": PASSWORD}))
    mapped = email_channel._failure(exc, config, "connecting", 15)
    assert type(mapped) is kind
    assert text in str(mapped)
    assert_no_secret(mapped)


# --- hostile alert values: valid headers and bodies ------------------------------------------------

HOSTILE = {
    "tab": "a\tb",
    "newline": "line one\nline two\r\nthree\rfour",
    "unicode line breaks": "a\u2028b\u2029c\x85d",
    "other controls": "v\x0bf\x0cfs\x1cgs\x1drs\x1e\x00nul\x7fdel",
    "quotes and backslash": 'say "hi" \\ <ops@example.com> (x) [y]',
    "encoded-word lookalike": "=?utf-8?q?=0D=0ABcc:_victim@example.net?=",
    "lone surrogate": "bad \ud800 text",
    "cyrillic": "Температура выше порога на датчике",
    "cjk": "温度が閾値を超えました" * 8,
    "arabic": "تجاوزت درجة الحرارة الحد",
    "emoji": "🔥" * 30,
    "long": "word " * 2000,
    "long word": "x" * 500,
}
ALL_PLACEHOLDERS = "{severity} {alert_type} {device_id} {site_id} {message} {tenant_id} {created_at} {status}"


def hostile_delivery(value: str) -> Delivery:
    payload = {
        **SAMPLE_PAYLOAD,
        **{key: value for key in ("device_id", "site_id", "alert_type", "message", "triggered_at")},
        "tenant_id": value,
    }
    return make_delivery(payload)


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
@pytest.mark.parametrize("fmt", ["text", "html"])
@pytest.mark.parametrize("templated", [True, False], ids=["templates", "defaults"])
@pytest.mark.parametrize("eight_bit", [True, False], ids=["8bit", "7bit"])
def test_hostile_values_give_a_strictly_valid_message(
    value: str, fmt: str, templated: bool, eight_bit: bool
) -> None:
    template: dict[str, Any] = {"format": fmt}
    if templated:
        template.update(subject_template=ALL_PLACEHOLDERS, body_template=f"<p>{ALL_PLACEHOLDERS}</p>")
    config = parse(raw_config(template=template))
    message = build_message(config, hostile_delivery(value), eight_bit=eight_bit)
    data = message.as_bytes()
    assert eight_bit or data.isascii()
    parsed = strict_message(data)
    subject = parsed["Subject"]
    assert 0 < len(subject) <= email_channel.SUBJECT_MAX_CHARS
    assert not any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in subject)
    clean = email_channel.header_text(value)
    if templated and len(clean) < 20:  # short values appear whole in the subject, as written
        assert clean in subject
    body = parsed.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "\x00" not in text and "\r" not in text.replace("\r\n", "")
    if fmt == "text" and value in (HOSTILE["cyrillic"], HOSTILE["quotes and backslash"]):
        assert value in text  # what was written arrives, whatever the transfer encoding


def test_unicode_line_breaks_in_a_subject_become_spaces() -> None:
    payload = {**SAMPLE_PAYLOAD, "message": "a\u2028b\x0bc\x0cd\x1ce\x1df\x1eg\x85h\u2029i\tj"}
    message = build(raw_config(template={"subject_template": "{message}"}), make_delivery(payload))
    assert strict_message(message.as_bytes())["Subject"] == "a b c d e f g h i j"


def test_a_long_subject_is_cut_on_a_character_boundary_with_an_ellipsis() -> None:
    payload = {**SAMPLE_PAYLOAD, "message": "温度" * 12_500}  # 25,000 characters, 75 KB of UTF-8
    message = build(raw_config(template={"subject_template": "{message}"}), make_delivery(payload))
    data = message.as_bytes()
    subject = strict_message(data)["Subject"]
    assert len(subject) == email_channel.SUBJECT_MAX_CHARS
    assert subject == "温度" * 99 + "温…"
    assert len(data.partition(b"\r\n\r\n")[0]) < 2_000


def test_encoded_words_hold_whole_characters_and_at_most_75_chars() -> None:
    for text in ("Ж" * 100, "日本語のテキスト" * 20, "é" + "y" * 200, "😀" * 50, "x" * 300 + " é"):
        words = email_channel.encoded_words(text)
        assert all(len(word) <= 75 for word in words)
        decoded = "".join(str(make_header(decode_header(word))) for word in words)
        assert decoded == text


def test_an_ascii_subject_stays_readable_on_the_wire() -> None:
    data = build(raw_config()).as_bytes()
    assert b"\r\nSubject: [CRITICAL] THRESHOLD on sensor-17\r\n" in data


def test_display_names_with_quotes_and_non_latin_text_are_encoded_correctly() -> None:
    raw = raw_config(
        smtp={"from_name": 'Ünïcödé "Alerts" \\ Team ' * 3},
        recipients={"to": ['"Ops, Night" <ops@example.com>', "Дежурный инженер <duty@example.com>"]},
    )
    parsed = strict_message(build(raw).as_bytes())
    # Python shows the (ignorable) space between two encoded words of a phrase: compare words.
    assert parsed["From"].addresses[0].display_name.split() == ('Ünïcödé "Alerts" \\ Team ' * 3).split()
    assert [a.display_name for a in parsed["To"].addresses] == ["Ops, Night", "Дежурный инженер"]
    assert [a.addr_spec for a in parsed["To"].addresses] == ["ops@example.com", "duty@example.com"]


@pytest.mark.parametrize("bad", ["\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029", "\t"])
def test_control_characters_in_header_config_are_refused_at_parse(bad: str) -> None:
    with pytest.raises(InvalidChannelConfig, match="config.smtp.from_name contains a line break or control"):
        parse(raw_config(smtp={"from_name": f"Pulse{bad}Alerts"}))
    with pytest.raises(InvalidChannelConfig, match=r"config.recipients.to\[0\] contains"):
        parse(raw_config(recipients={"to": [f"Ops{bad}Team <ops@example.com>"]}))


# --- 8-bit bodies ------------------------------------------------------------------------------------

NON_ASCII = {**SAMPLE_PAYLOAD, "message": "Température au-dessus du seuil — 92,5 °C"}


def send_to(server: SmtpServer, payload: dict[str, Any], **template: Any) -> Any:
    channel = make_channel(smtp={"timeout": 5})
    raw = local(server.port)
    if template:
        raw["template"] = template
    return channel.send(channel.parse_config(raw), make_delivery(payload))


def test_an_8bit_body_goes_with_body_8bitmime_when_offered(plain_server: SmtpServer) -> None:
    send_to(plain_server, NON_ASCII)
    [received] = plain_server.messages
    assert "BODY=8BITMIME" in received.mail_options and "SMTPUTF8" not in received.mail_options
    assert "Température au-dessus du seuil — 92,5 °C".encode() in received.data  # 8-bit, as written
    assert "92,5 °C" in received.strict_message().get_content()


def test_an_8bit_body_is_sent_7bit_clean_to_a_server_without_8bitmime() -> None:
    with smtp_server(eight_bit_mime=False) as server:
        send_to(server, NON_ASCII, format="html")
        [received] = server.messages
    assert not any(option.startswith("BODY=") for option in received.mail_options)
    assert received.data.isascii()
    message = received.strict_message()
    for part in message.walk():
        if not part.is_multipart():
            assert part["Content-Transfer-Encoding"] in ("quoted-printable", "base64")
    assert "92,5 °C" in message.get_body(("plain",)).get_content()
    assert "92,5 °C" in message.get_body(("html",)).get_content()


def test_an_ascii_message_asks_for_nothing(plain_server: SmtpServer) -> None:
    send_to(plain_server, SAMPLE_PAYLOAD)
    [received] = plain_server.messages
    assert not any(option.startswith("BODY=") for option in received.mail_options)
    assert received.data.isascii()
    received.strict_message()


# --- one wall-clock deadline per attempt ---------------------------------------------------------------


def deliver_by(raw: dict[str, Any], seconds: float, *, timeout: float = 5) -> Any:
    """Send with an attempt deadline ``seconds`` from now and a longer per-wait [smtp] timeout."""
    channel = make_channel(smtp={"timeout": timeout})
    delivery = dataclasses.replace(make_delivery(), deadline=time.monotonic() + seconds)
    return channel.send(channel.parse_config(raw), delivery)


@pytest.mark.parametrize("after", ["connect", "data"])
def test_a_trickling_peer_is_cut_at_the_deadline(after: str) -> None:
    with trickling_server(after=after) as peer:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as caught:
            deliver_by(local(peer.port), 1.0)
        elapsed = time.monotonic() - started
        assert peer.closed_by_client.wait(10)
    assert 0.9 <= elapsed < 8  # the byte-by-byte reply never let a single 5 s wait expire
    step = "connecting" if after == "connect" else "sending the message"
    assert str(caught.value) == (
        f"SMTP server {HOST}:{peer.port} was still {step} at the attempt deadline; connection closed"
    )
    assert peer.data_received == (1 if after == "data" else 0)  # sent once in this attempt


def test_a_passed_deadline_fails_before_connecting(plain_server: SmtpServer) -> None:
    with pytest.raises(DeadlineExceeded, match="before connecting with SMTP server"):
        deliver_by(local(plain_server.port), -1)
    assert plain_server.messages == []


def test_waits_are_bounded_by_the_time_left() -> None:
    with silent_server() as port:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            deliver_by(local(port), 1.0, timeout=30)  # the greeting wait gets 1 s, not 30
        assert time.monotonic() - started < 8


def test_a_deadline_far_away_changes_nothing(plain_server: SmtpServer) -> None:
    receipt = deliver_by(local(plain_server.port), 60)
    assert receipt.detail.startswith("accepted by") and len(plain_server.messages) == 1


INTERNATIONAL = {"to": ["Jörg <jörg@bücher.example>"]}


def test_an_internationalised_address_goes_with_smtputf8_when_offered() -> None:
    with smtp_server(smtputf8=True) as server:
        raw = local(server.port)
        raw["recipients"] = INTERNATIONAL
        deliver(raw)
        [received] = server.messages
    assert {"SMTPUTF8", "BODY=8BITMIME"} <= set(received.mail_options)
    assert received.rcpt_tos == ["jörg@bücher.example"]
    assert "Jörg <jörg@bücher.example>".encode() in received.data  # raw UTF-8, as SMTPUTF8 allows
    assert received.strict_message()["To"].addresses[0].addr_spec == "jörg@bücher.example"


def test_an_internationalised_address_without_smtputf8_fails_at_once(plain_server: SmtpServer) -> None:
    raw = local(plain_server.port)
    raw["recipients"] = INTERNATIONAL
    exc = failure(raw)
    assert isinstance(exc, PermanentError)
    assert "internationalized email support" in str(exc) and "SMTPUTF8" in str(exc)
    assert plain_server.messages == []
