"""Email over SMTP: one message per delivery, To/Cc in headers and Bcc only in the envelope.

Transport security follows the config: port 465 (``IMPLICIT_TLS_PORTS``) is implicit TLS, otherwise
``smtp_tls`` true means STARTTLS (a server that does not offer it is a config error: never a silent
fallback to plaintext) and false means plain SMTP. Certificates are always verified against the
system store or ``[tls] ca_file``, unless the config says ``smtp.tls_verify: false`` (lab equipment).

Two spellings of the ``smtp`` object exist in production (``smtp_host``/``smtp_port``/``smtp_user``/
``smtp_password``/``smtp_tls`` and the web UI's ``host``/``port``/``username``/``password``/``use_tls``);
``normalise_smtp`` maps the second onto the first, the first winning when both are set.

A channel or integration without ``from_address``/``from_name`` sends as ``[smtp] from_address`` /
``from_name`` (default ``delivery-worker@<this host's FQDN>``, "Pulse Alerts").

Alert values reach headers only through ``header_text`` (control characters and Unicode line breaks
become spaces, the subject is bounded) and headers are folded by ``AlertMailPolicy`` (RFC 2047 encoded
words of at most 75 characters, lines within 78). An 8-bit body goes with ``BODY=8BITMIME`` when the
server offers it, otherwise the message is rebuilt 7-bit clean (quoted-printable or base64).

One wall-clock deadline per attempt (``Delivery.deadline``): every wait is bounded by the time left,
and a peer still trickling its replies at the deadline has its connection shut (``closing_at``).

Error messages name the server as host:port and quote the server's reply, never the password.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import smtplib
import socket
import ssl
import threading
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.errors import HeaderDefect, MessageError
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import formataddr, formatdate, getaddresses, parseaddr
from html.parser import HTMLParser
from typing import Any

import structlog

from channels.alert import Alert
from channels.base import AttemptClock, Delivery, Receipt, config_object, optional_str, require_str
from channels.context import ChannelContext
from channels.deadline import closing_at
from channels.digest import Digest
from channels.digest import cut as digest_cut
from channels.errors import (
    DeadlineExceeded,
    DeliveryError,
    InvalidChannelConfig,
    PermanentError,
    TransientError,
)
from channels.netguard import check_host
from channels.templating import render

log = structlog.get_logger("channels.email")

DEFAULT_PORT = 587
IMPLICIT_TLS_PORTS = frozenset({465})
FORMATS = ("text", "html")
RECIPIENT_KEYS = ("to", "cc", "bcc")
REPLY_CHARS = 200
DELIVERY_KEY_HEADER = "X-Delivery-Key"

# The web UI's spelling -> the primary spelling of the same ``smtp`` key.
SMTP_ALIASES = {
    "host": "smtp_host",
    "port": "smtp_port",
    "username": "smtp_user",
    "password": "smtp_password",
    "use_tls": "smtp_tls",
}

SENDER_LOCAL_PART = "delivery-worker"  # of the default sender, delivery-worker@<host FQDN>
SUBJECT_MAX_CHARS = 200  # a longer subject is cut on a character boundary and ends with an ellipsis

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
# Unicode categories that must never reach a header: controls (C0, DEL, C1 incl. U+0085) and the
# line/paragraph separators U+2028/U+2029, which the email library treats as line breaks.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Zl", "Zp", "Cs"})


@dataclass(frozen=True)
class DefaultSender:
    """``[smtp] from_address``/``from_name``: used by a channel or integration that names no sender."""

    address: str
    name: str | None = None


@dataclass(frozen=True)
class EmailConfig:
    host: str
    from_address: str
    port: int = DEFAULT_PORT
    from_name: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    use_tls: bool = True
    tls_verify: bool = True
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    subject_template: str | None = None
    body_template: str | None = None
    format: str = "text"

    def secrets(self) -> tuple[str, ...]:
        return (self.password,) if self.password else ()

    def destination(self) -> str:
        return f"smtp://{self.server}"

    @property
    def server(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def envelope_sender(self) -> str:
        return parseaddr(self.from_address)[1]

    @property
    def envelope_recipients(self) -> list[str]:
        """Every To, Cc and Bcc address once, in order."""
        seen: dict[str, None] = {}
        for entry in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(parseaddr(entry)[1], None)
        return list(seen)


def transport(config: EmailConfig) -> str:
    """``ssl`` (implicit TLS), ``starttls`` or ``plain``."""
    if config.port in IMPLICIT_TLS_PORTS:
        return "ssl"
    return "starttls" if config.use_tls else "plain"


# --- config --------------------------------------------------------------------------------------


def _absent(value: Any) -> bool:
    return value is None or value == ""


def normalise_smtp(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The ``smtp`` object in the primary spelling; a set primary key wins over its alternate."""
    out = dict(raw)
    for alternate, primary in SMTP_ALIASES.items():
        if alternate in out:
            value = out.pop(alternate)
            if _absent(out.get(primary)):
                out[primary] = value
    return out


def _written_as(raw: Mapping[str, Any], primary: str) -> str:
    """The key name the operator used, for error messages."""
    if _absent(raw.get(primary)):
        for alternate, target in SMTP_ALIASES.items():
            if target == primary and not _absent(raw.get(alternate)):
                return alternate
    return primary


def _port(value: Any, where: str) -> int:
    if _absent(value):
        return DEFAULT_PORT
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidChannelConfig(f"{where} must be an integer, got {value!r}")
    if not 1 <= value <= 65535:
        raise InvalidChannelConfig(f"{where} must be between 1 and 65535, got {value}")
    return value


def _flag(value: Any, where: str, *, default: bool) -> bool:
    if _absent(value):
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise InvalidChannelConfig(f"{where} must be true or false, got {value!r}")


def _unsafe(ch: str) -> bool:
    return unicodedata.category(ch) in _UNSAFE_CATEGORIES


def _no_control_characters(value: str, where: str) -> str:
    """A config value bound for a header: refuse (at parse time) what could break or inject one."""
    if any(_unsafe(ch) for ch in value):
        raise InvalidChannelConfig(f"{where} contains a line break or control character")
    return value


def _address(value: Any, where: str) -> str:
    """One address, bare or with a display name; refuses header injection and lists."""
    if not isinstance(value, str):
        raise InvalidChannelConfig(f"{where} must be a string, got {type(value).__name__}")
    text = _no_control_characters(value, where).strip()
    parsed = getaddresses([text])
    addr = parsed[0][1] if len(parsed) == 1 else ""
    local, at, domain = addr.rpartition("@")
    if not (local and at and domain) or any(ch.isspace() for ch in addr):
        raise InvalidChannelConfig(f"{where} is not a single email address: {text!r}")
    return text


def _recipients(raw: Mapping[str, Any], key: str) -> tuple[str, ...]:
    where = f"config.recipients.{key}"
    value = raw.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidChannelConfig(f"{where} must be a list of email addresses, got {type(value).__name__}")
    return tuple(_address(item, f"{where}[{i}]") for i, item in enumerate(value) if item != "")


def _template(raw: Mapping[str, Any], key: str) -> str | None:
    template = optional_str(raw, key, where="config.template")
    if template is not None:
        render(template, {}, where=f"config.template.{key}")  # a bad placeholder fails here, once
    return template


def parse_email_config(raw: Any, default_sender: DefaultSender | None = None) -> EmailConfig:
    """Validate the unified config shape (either ``smtp`` spelling); errors name the key.

    Without ``from_address`` (or ``from_name``) the ``default_sender`` fills in; with no default
    the address is required."""
    obj = config_object(raw)
    raw_smtp = config_object(obj.get("smtp"), where="config.smtp")
    smtp = normalise_smtp(raw_smtp)

    def where(key: str) -> str:
        return f"config.smtp.{_written_as(raw_smtp, key)}"

    def text(key: str, *, required: bool = False) -> str | None:
        name = _written_as(raw_smtp, key)  # so the error names the key as written
        if required:
            return require_str({name: smtp.get(key)}, name, where="config.smtp")
        return optional_str({name: smtp.get(key)}, name, where="config.smtp")

    host = (text("smtp_host", required=True) or "").strip()
    if not host or any(ch.isspace() or ch in "/@" for ch in host):
        raise InvalidChannelConfig(f"{where('smtp_host')} must be a host name or IP address")
    host = host.removeprefix("[").removesuffix("]")

    user, password = text("smtp_user"), text("smtp_password")
    if password and not user:
        raise InvalidChannelConfig(f"{where('smtp_password')} is set but config.smtp.smtp_user is missing")
    if user and not password:
        raise InvalidChannelConfig(f"config.smtp.smtp_password is missing ({where('smtp_user')} is set)")
    if user is not None:
        _no_control_characters(user, where("smtp_user"))
        if not user.isascii():
            raise InvalidChannelConfig(f"{where('smtp_user')} must be ASCII for SMTP AUTH")
    if password is not None and not password.isascii():
        raise InvalidChannelConfig(f"{where('smtp_password')} must be ASCII for SMTP AUTH")

    if default_sender is None or not _absent(smtp.get("from_address")):
        from_address = _address(
            require_str(smtp, "from_address", where="config.smtp"), "config.smtp.from_address"
        )
    else:
        from_address = default_sender.address
    from_name = optional_str(smtp, "from_name", where="config.smtp")
    if from_name is not None:
        _no_control_characters(from_name, "config.smtp.from_name")
    elif default_sender is not None:
        from_name = default_sender.name

    recipients = config_object(obj.get("recipients"), where="config.recipients")
    to, cc, bcc = (_recipients(recipients, key) for key in RECIPIENT_KEYS)
    if not (to or cc or bcc):
        raise InvalidChannelConfig("config.recipients needs at least one address in to, cc or bcc")

    template = config_object(obj.get("template"), where="config.template")
    subject_template = _template(template, "subject_template")
    if subject_template is not None:
        _no_control_characters(subject_template, "config.template.subject_template")
    body_template = _template(template, "body_template")
    fmt = (optional_str(template, "format", where="config.template") or "text").strip().lower()
    fmt = "text" if fmt == "plain" else fmt
    if fmt not in FORMATS:
        raise InvalidChannelConfig(f"config.template.format must be html or text, got {fmt!r}")

    return EmailConfig(
        host=host,
        port=_port(smtp.get("smtp_port"), where("smtp_port")),
        from_address=from_address,
        from_name=from_name,
        user=user,
        password=password,
        use_tls=_flag(smtp.get("smtp_tls"), where("smtp_tls"), default=True),
        tls_verify=_flag(smtp.get("tls_verify"), "config.smtp.tls_verify", default=True),
        to=to,
        cc=cc,
        bcc=bcc,
        subject_template=subject_template,
        body_template=body_template,
        format=fmt,
    )


def check_sender_address(text: str) -> str:
    """``[smtp] from_address``: one address; ValueError (for the config loader) otherwise."""
    try:
        return _address(text, "address")
    except InvalidChannelConfig as exc:
        raise ValueError(str(exc).removeprefix("address ")) from None


def check_sender_name(text: str) -> str:
    """``[smtp] from_name``: any text without line breaks or control characters (empty: none)."""
    if any(_unsafe(ch) for ch in text):
        raise ValueError("contains a line break or control character")
    return text


def default_sender_address(host_name: str) -> str:
    """``delivery-worker@<host_name>``, as cron and mailx name a host's mail; ``localhost`` when the
    name is not a usable domain (an MTA refuses a sender whose domain does not resolve, so operators
    of real relays set ``[smtp] from_address``)."""
    name = host_name.strip().rstrip(".").lower()
    labels = name.split(".")
    if not name or not all(
        label and all(ch.isascii() and (ch.isalnum() or ch == "-") for ch in label) for label in labels
    ):
        name = "localhost"
    return f"{SENDER_LOCAL_PART}@{name}"


def default_sender(from_address: str, from_name: str) -> DefaultSender:
    """The worker-wide sender from ``[smtp]``; an empty address means this host's default."""
    return DefaultSender(
        address=from_address or default_sender_address(socket.getfqdn()), name=from_name or None
    )


# --- message -------------------------------------------------------------------------------------


def _label(alert: Alert) -> str:
    if alert.is_resolved:
        return "RESOLVED"
    if alert.event == "ACKNOWLEDGED":
        return "ACKNOWLEDGED"
    return alert.severity_label


def default_subject(alert: Alert) -> str:
    """``[CRITICAL] THRESHOLD on sensor-17``; ``[RESOLVED] ...`` once the alert is closed."""
    subject = f"[{_label(alert)}] {alert.alert_type or 'Alert'}"
    return subject + (f" on {alert.device_id}" if alert.device_id else "")


def _fields(alert: Alert) -> list[tuple[str, str]]:
    severity = alert.severity_label + (f" ({alert.severity})" if alert.severity is not None else "")
    return [
        ("Message", alert.message),
        ("Device", alert.device_id),
        ("Site", alert.site_id),
        ("Type", alert.alert_type),
        ("Severity", severity),
        ("Time", alert.triggered_at),
        ("Alert ID", alert.alert_id),
        ("Tenant", alert.tenant_id),
        ("Status", alert.event),
    ]


def default_text_body(alert: Alert) -> str:
    lines = [default_subject(alert), ""]
    lines += [f"{name + ':':<10} {value or '-'}" for name, value in _fields(alert)]
    return "\n".join(lines) + "\n"


def default_html_body(alert: Alert) -> str:
    rows = "".join(
        f"<tr><th align='left'>{html.escape(name)}</th><td>{html.escape(value or '-')}</td></tr>"
        for name, value in _fields(alert)
    )
    title = html.escape(default_subject(alert))
    return f"<html><body><h2>{title}</h2><table>{rows}</table></body></html>\n"


class _TextExtractor(HTMLParser):
    BLOCKS = frozenset(
        {"br", "p", "div", "tr", "li", "ul", "ol", "table", "hr", "h1", "h2", "h3", "h4", "h5", "h6"}
    )
    HIDDEN = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(" ".join(data.split()) if data.strip() else " ")


def html_to_text(markup: str) -> str:
    """A readable text/plain alternative of an HTML body: tags dropped, blocks on their own lines."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    out: list[str] = []
    for line in "".join(parser.parts).splitlines():
        text = " ".join(line.split())
        if text or (out and out[-1]):
            out.append(text)
    return "\n".join(out).strip() + "\n"


def _message_id(config: EmailConfig, seed: str) -> str:
    """Stable per job (or per digest), so a retried message is recognisably the same to receivers."""
    digest = hashlib.sha256(seed.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    domain = config.envelope_sender.rpartition("@")[2]
    if not domain.isascii() or not all(ch.isalnum() or ch in ".-" for ch in domain):
        domain = "delivery-worker.invalid"
    return f"<{digest}@{domain}>"


# --- headers and bodies --------------------------------------------------------------------------

MAX_LINE = 78  # RFC 5322 2.1.1: header lines SHOULD stay within 78 characters
# UTF-8 bytes per RFC 2047 encoded word: "=?utf-8?b?" + 56 base64 characters + "?=" is 68 characters,
# so a word fits within the 75 of RFC 2047 and, after "Subject: ", within a 78-character line.
_WORD_BYTES = 42
_WORD_CHARS = 68


def header_text(value: str) -> str:
    """One line of header text from alert values: controls and Unicode line breaks become spaces,
    runs of whitespace one space, lone surrogates U+FFFD."""
    cleaned = "".join(
        "\ufffd" if unicodedata.category(ch) == "Cs" else " " if _unsafe(ch) else ch for ch in value
    )
    return " ".join(cleaned.split())


def bounded_subject(subject: str) -> str:
    """At most SUBJECT_MAX_CHARS characters, cut on a character boundary with an ellipsis."""
    if len(subject) <= SUBJECT_MAX_CHARS:
        return subject
    return subject[: SUBJECT_MAX_CHARS - 1].rstrip() + "…"


def body_text(value: str) -> str:
    """A body from alert values: CRLF, CR and Unicode line breaks as newlines, other controls but
    tab dropped (no NUL or bare CR reaches the wire), lone surrogates U+FFFD."""
    text = value.replace("\r\n", "\n").translate({0x0D: "\n", 0x85: "\n", 0x2028: "\n", 0x2029: "\n"})
    return "".join(
        "\ufffd" if unicodedata.category(ch) == "Cs" else ch
        for ch in text
        if ch in "\t\n" or unicodedata.category(ch) != "Cc"
    )


def encoded_words(text: str) -> list[str]:
    """RFC 2047 B-encoded words for ``text``: whole characters, at most 68 characters each, and a
    word full before the text ends breaks after its last space when it has one (some readers, Python
    among them, wrongly show a space between adjacent encoded words of a display name)."""
    chunks: list[str] = []
    current = ""
    for ch in text:
        while current and len((current + ch).encode("utf-8")) > _WORD_BYTES:
            cut = current.rfind(" ", 1) + 1 or len(current)
            chunks.append(current[:cut])
            current = current[cut:]
        current += ch
    if current:
        chunks.append(current)
    return [f"=?utf-8?b?{base64.b64encode(c.encode('utf-8')).decode('ascii')}?=" for c in chunks]


def _plain(text: str, room: int) -> bool:
    """Whether ``text`` can go as it is: ASCII words that fit a line and cannot read as encoded words."""
    return text.isascii() and "=?" not in text and all(len(word) <= room for word in text.split())


def _phrase_tokens(text: str) -> list[str]:
    """Tokens of a header value that are plain words when possible, encoded words otherwise."""
    return text.split() if _plain(text, _WORD_CHARS) else encoded_words(text)


def _display_name_tokens(name: str) -> list[str]:
    quoted = formataddr((name, "x@x"))[: -len(" <x@x>")]  # quoted as RFC 5322 needs (" and \\)
    if _plain(name, _WORD_CHARS) and len(quoted) <= _WORD_CHARS:
        return [quoted]
    return encoded_words(name)


def fold_tokens(name: str, tokens: list[str], linesep: str) -> str:
    """``Name: token token ...`` folded before a token that would pass MAX_LINE."""
    lines: list[str] = []
    line = f"{name}:"
    for token in tokens:
        if len(line) + 1 + len(token) > MAX_LINE and line.strip() != f"{name}:":
            lines.append(line)
            line = ""
        line += " " + token
    return linesep.join([*lines, line]) + linesep


class AlertMailPolicy(EmailPolicy):
    """The SMTP policy, except that Subject and the address headers are folded by ``fold_tokens``:
    the library's folder writes encoded words of 76-77 characters, over RFC 2047's 75."""

    def header_store_parse(self, name: str, value: Any) -> tuple[str, Any]:
        if name.lower() == "subject":
            # Kept as given (already header_text): the library would decode an alert's literal
            # "=?...?=" here, while fold_tokens encodes it so that readers see it as written.
            return (name, str(value))
        return super().header_store_parse(name, value)

    def fold(self, name: str, value: str) -> str:
        folded = self._fold_header(name, value)
        return folded if folded is not None else super().fold(name, value)

    def fold_binary(self, name: str, value: str) -> bytes:
        folded = self._fold_header(name, value)
        return folded.encode("ascii") if folded is not None else super().fold_binary(name, value)

    def _fold_header(self, name: str, value: str) -> str | None:
        key = name.lower()
        if key == "subject":
            return fold_tokens(name, _phrase_tokens(header_text(str(value))), self.linesep)
        addresses = getattr(value, "addresses", None)
        if key not in ("from", "to", "cc") or addresses is None:
            return None
        tokens: list[str] = []
        for index, address in enumerate(addresses):
            if not address.addr_spec.isascii():
                return None  # an internationalised address: the library writes it (SMTPUTF8)
            if address.display_name:
                item = [*_display_name_tokens(address.display_name), f"<{address.addr_spec}>"]
            else:
                item = [address.addr_spec]
            if index < len(addresses) - 1:
                item[-1] += ","
            tokens += item
        return fold_tokens(name, tokens, self.linesep)


SMTP_8BIT = AlertMailPolicy(linesep="\r\n")  # bodies may be 8-bit (sent with BODY=8BITMIME)
SMTP_7BIT = SMTP_8BIT.clone(cte_type="7bit")  # for servers without 8BITMIME: QP or base64


def build_message(config: EmailConfig, delivery: Delivery, *, eight_bit: bool = True) -> EmailMessage:
    """The complete message, 7-bit clean unless ``eight_bit``. Alert values cannot break a header;
    a message that still cannot be encoded is a PermanentError, here, before any connection."""
    alert = delivery.alert
    values = alert.placeholders()
    subject = ""
    if config.subject_template:
        subject = render(config.subject_template, values, where="config.template.subject_template")
    # Defaults: a template that renders empty, and default_subject (alert values in it as well).
    subject = bounded_subject(header_text(subject) or header_text(default_subject(alert)))

    html_body: str | None = None
    if config.format == "html":
        if config.body_template:
            html_body = render(
                config.body_template, values, escape=html.escape, where="config.template.body_template"
            )
            text_body = html_to_text(html_body)
        else:
            html_body, text_body = default_html_body(alert), default_text_body(alert)
    elif config.body_template:
        text_body = render(config.body_template, values, where="config.template.body_template")
    else:
        text_body = default_text_body(alert)

    seed = f"{delivery.key}|{delivery.tenant_id}|{delivery.alert.alert_id}|{delivery.alert.event}"
    return _assemble(
        config,
        subject=subject,
        message_id=_message_id(config, seed),
        key=delivery.key,
        text_body=text_body,
        html_body=html_body,
        eight_bit=eight_bit,
    )


DIGEST_SUBJECT_PREFIX = "[PULSE]"


def digest_subject(digest: Digest) -> str:
    """``[PULSE] 60 alerts: 3 critical, 57 low``: counts only, so no alert value reaches the header."""
    return f"{DIGEST_SUBJECT_PREFIX} {digest.headline()}"


def _digest_rows(digest: Digest) -> list[tuple[str, str, str]]:
    """(``[CRITICAL] message``, ``device · type · site``, time) per listed alert, each on one line."""
    return [
        (
            f"[{alert.severity_label}] {digest_cut(alert.message) or 'Alert'}",
            digest_cut(
                " · ".join(
                    (alert.device_id or "unknown device", alert.alert_type or "-", alert.site_id or "-")
                )
            ),
            digest_cut(alert.triggered_at) or "-",
        )
        for alert in digest.listed
    ]


def digest_text_body(digest: Digest) -> str:
    lines = [digest.headline(), ""]
    for title, where, when in _digest_rows(digest):
        lines += [title, f"    {where} · {when}"]
    counts = digest.count_lines()
    return "\n".join([*lines, *([""] if counts else []), *counts]) + "\n"


def digest_html_body(digest: Digest) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(title)}</td><td>{html.escape(where)}</td><td>{html.escape(when)}</td></tr>"
        for title, where, when in _digest_rows(digest)
    )
    counts = "".join(f"<p>{html.escape(line)}</p>" for line in digest.count_lines())
    title = html.escape(digest.headline())
    return f"<html><body><h2>{title}</h2><table>{rows}</table>{counts}</body></html>\n"


def build_digest_message(config: EmailConfig, digest: Digest, *, eight_bit: bool = True) -> EmailMessage:
    """One email summarising a storm; the channel's per-alert templates do not apply to it."""
    return _assemble(
        config,
        subject=bounded_subject(header_text(digest_subject(digest))),
        message_id=_message_id(config, f"digest|{digest.key}|{digest.tenant_id}"),
        key=digest.key,
        text_body=digest_text_body(digest),
        html_body=digest_html_body(digest) if config.format == "html" else None,
        eight_bit=eight_bit,
    )


def _assemble(
    config: EmailConfig,
    *,
    subject: str,
    message_id: str,
    key: str,
    text_body: str,
    html_body: str | None,
    eight_bit: bool,
) -> EmailMessage:
    """Headers and parts, 7-bit clean unless ``eight_bit``; a PermanentError if anything cannot encode."""
    message = EmailMessage(policy=SMTP_8BIT if eight_bit else SMTP_7BIT)
    try:
        if config.from_name:
            message["From"] = formataddr((config.from_name, config.envelope_sender))
        else:
            message["From"] = config.from_address
        if config.to:
            message["To"] = ", ".join(config.to)
        if config.cc:
            message["Cc"] = ", ".join(config.cc)
        message["Subject"] = subject
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = message_id
        message["Auto-Submitted"] = "auto-generated"
        message[DELIVERY_KEY_HEADER] = header_text(key)
        message.set_content(body_text(text_body))
        if html_body is not None:
            message.add_alternative(body_text(html_body), subtype="html")
        message.as_bytes()  # every header and part encodes, or the error is raised here
    except (ValueError, MessageError, HeaderDefect) as exc:  # UnicodeError is a ValueError
        raise PermanentError(
            f"cannot encode the email for SMTP server {config.server}: {exc.__class__.__name__}"
        ) from None
    return message


def is_8bit(message: EmailMessage) -> bool:
    """Whether the message as sent carries bytes above 127 (then it needs BODY=8BITMIME)."""
    return not message.as_bytes().isascii()


# --- sending -------------------------------------------------------------------------------------


def _reply(text: bytes | str, secrets: tuple[str, ...]) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    flat = " ".join(text.split())
    for secret in secrets:
        flat = flat.replace(secret, "***")
    return flat if len(flat) <= REPLY_CHARS else flat[: REPLY_CHARS - 1] + "…"


def _ssl_reason(exc: ssl.SSLError) -> str:
    reason = getattr(exc, "reason", None) or exc.strerror
    return str(reason) if reason else exc.__class__.__name__


def _by_code(code: int, message: str) -> DeliveryError:
    """5xx replies will not change on retry; 4xx (and anything unexpected) may."""
    return PermanentError(message) if 500 <= code < 600 else TransientError(message)


def _refusals(refused: Mapping[str, tuple[int, bytes]], secrets: tuple[str, ...]) -> str:
    shown = [f"{addr} ({code} {_reply(text, secrets)})" for addr, (code, text) in list(refused.items())[:5]]
    more = len(refused) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _failure(exc: Exception, config: EmailConfig, step: str, timeout: float) -> DeliveryError:
    """Map an smtplib/socket/ssl exception raised while ``step`` to Transient or PermanentError."""
    server = f"SMTP server {config.server}"
    secrets = config.secrets()
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        refused = exc.recipients
        message = f"{server} refused all recipients: {_refusals(refused, secrets)}"
        if any(400 <= code < 500 for code, _ in refused.values()):
            return TransientError(message)
        return PermanentError(message)
    if isinstance(exc, smtplib.SMTPResponseException):
        code, reply = exc.smtp_code, _reply(exc.smtp_error, secrets)
        what = {
            smtplib.SMTPAuthenticationError: "refused login",
            smtplib.SMTPSenderRefused: f"refused sender {config.envelope_sender}",
            smtplib.SMTPDataError: "refused the message",
            smtplib.SMTPConnectError: "refused the connection",
            smtplib.SMTPHeloError: "refused EHLO/HELO",
        }.get(type(exc), f"answered an error while {step}")
        return _by_code(code, f"{server} {what} ({code} {reply})" if reply else f"{server} {what} ({code})")
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        if step == "logging in":
            return PermanentError(f"{server} does not offer AUTH, but config.smtp.smtp_user is set")
        return PermanentError(f"{server} does not support what is needed while {step}: {exc}")
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        if isinstance(exc.__context__, TimeoutError):
            return TransientError(
                f"timed out after {timeout:g}s waiting for {server} while {step}", slow=True
            )
        return TransientError(f"{server} closed the connection while {step}")
    if isinstance(exc, smtplib.SMTPException):
        return PermanentError(f"{server} failed while {step}: {_reply(str(exc), secrets)}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or "unknown reason"
        return PermanentError(
            f"TLS certificate verification failed for {server}: {reason} "
            "(trust its CA with [tls] ca_file, or set smtp.tls_verify false for lab equipment)"
        )
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return TransientError(f"{server} closed the connection during the TLS handshake")
    if isinstance(exc, ssl.SSLError):
        mode = "implicit TLS" if transport(config) == "ssl" else "STARTTLS"
        return PermanentError(f"TLS ({mode}) with {server} failed: {_ssl_reason(exc)}")
    if isinstance(exc, TimeoutError):
        if step == "connecting":
            return TransientError(f"timed out after {timeout:g}s connecting to {server}", slow=True)
        return TransientError(f"timed out after {timeout:g}s waiting for {server} while {step}", slow=True)
    if isinstance(exc, ConnectionRefusedError):
        return TransientError(f"cannot connect to {server}: connection refused")
    if isinstance(exc, socket.gaierror):
        return TransientError(f"cannot resolve the host name of {server}")
    if isinstance(exc, OSError):
        reason = exc.strerror or exc.__class__.__name__
        return TransientError(f"connection to {server} failed while {step}: {reason}")
    if isinstance(exc, UnicodeError):
        return PermanentError(f"cannot encode the message for {server} while {step} (non-ASCII data)")
    return PermanentError(f"unexpected error with {server} while {step}: {exc.__class__.__name__}")


class _Cuttable:
    """Lets the deadline watchdog shut the connection from its own thread.

    It shuts a duplicate of the socket's descriptor (the same connection, whatever TLS object wraps
    it at that moment) and never one the client has already closed, whose number may be reused."""

    _host: str  # smtplib's (undeclared) name of the server, for STARTTLS server_hostname

    def _init_cuttable(self) -> None:
        self._cut_lock = threading.Lock()
        self._fd = -1
        self._cut = False
        self._closed = False

    def _track(self, sock: socket.socket) -> None:
        """Called once the TCP connection exists; a deadline that already passed closes it at once."""
        with self._cut_lock:
            self._fd = sock.fileno()
            cut = self._cut
        if cut:
            sock.close()
            raise DeadlineExceeded("attempt deadline reached while connecting")

    def cut(self) -> None:
        with self._cut_lock:
            self._cut = True
            if self._closed or self._fd < 0:
                return
            try:
                with socket.socket(fileno=os.dup(self._fd)) as duplicate:
                    duplicate.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already reset by the peer: the blocked call fails on its own

    def close(self) -> None:
        with self._cut_lock:
            self._closed = True
        super().close()  # type: ignore[misc]


class _PinnedSMTP(_Cuttable, smtplib.SMTP):
    """Connects to an address checked beforehand; the host name still names the server for TLS."""

    def __init__(self, *args: Any, address: str, **kwargs: Any) -> None:
        self.pinned_address = address
        self._init_cuttable()
        super().__init__(*args, **kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((self.pinned_address, port), timeout, self.source_address)
        self._track(sock)
        return sock


class _PinnedSMTPSSL(_Cuttable, smtplib.SMTP_SSL):
    def __init__(self, *args: Any, address: str, **kwargs: Any) -> None:
        self.pinned_address = address
        self._init_cuttable()
        super().__init__(*args, **kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((self.pinned_address, port), timeout, self.source_address)
        self._track(sock)  # before the handshake, which a trickling peer may also drag out
        return self.context.wrap_socket(sock, server_hostname=host)


_Client = _PinnedSMTP | _PinnedSMTPSSL


@dataclass
class _Attempt:
    """Where one send is: the step (for messages) and the wait it was last given (mutable: it moves)."""

    config: EmailConfig
    delivery: AttemptClock  # the Delivery, or the Digest: its deadline
    build: Callable[[bool], EmailMessage]  # the message, 8-bit or 7-bit clean
    limit: float  # [smtp] timeout: the longest single wait
    step: str = "connecting"
    timeout: float = 0.0

    def past_deadline(self) -> bool:
        return self.delivery.deadline is not None and time.monotonic() >= self.delivery.deadline

    def next(self, step: str, client: _Client | None = None) -> None:
        """Enter ``step`` with every wait bounded by the time left (DeadlineExceeded once none is)."""
        self.step = step
        try:
            self.timeout = self.delivery.time_left(self.limit)
        except DeadlineExceeded:
            raise DeadlineExceeded(
                f"attempt deadline reached before {step} with SMTP server {self.config.server}"
            ) from None
        if client is not None and client.sock is not None:
            client.sock.settimeout(self.timeout)
        elif client is not None:
            client.timeout = self.timeout


class EmailChannel:
    channel_type = "email"

    def __init__(self, context: ChannelContext) -> None:
        settings = context.settings
        self.timeout = settings.smtp.timeout
        self.default_sender = default_sender(settings.smtp.from_address, settings.smtp.from_name)
        # smtplib verifies nothing without a context; this one checks the chain and the host name.
        self.tls_context = ssl.create_default_context(cafile=settings.tls.ca_file or None)
        # Used only when a config says tls_verify: false (lab equipment with self-signed certs).
        self.unverified_tls_context = ssl.create_default_context()
        self.unverified_tls_context.check_hostname = False
        self.unverified_tls_context.verify_mode = ssl.CERT_NONE
        # smtplib would call socket.getfqdn() (a DNS lookup) for EHLO on every connection.
        self.local_hostname = socket.gethostname() or "localhost"
        self.address_policy = context.address_policy

    def parse_config(self, raw: Mapping[str, Any]) -> EmailConfig:
        return parse_email_config(raw, self.default_sender)

    def send(self, config: EmailConfig, delivery: Delivery) -> Receipt:
        return self._transmit(
            config, delivery, lambda eight_bit: build_message(config, delivery, eight_bit=eight_bit)
        )

    def send_digest(self, config: EmailConfig, digest: Digest) -> Receipt:
        return self._transmit(
            config, digest, lambda eight_bit: build_digest_message(config, digest, eight_bit=eight_bit)
        )

    def _transmit(
        self, config: EmailConfig, delivery: AttemptClock, build: Callable[[bool], EmailMessage]
    ) -> Receipt:
        message = build(True)
        if not config.tls_verify and transport(config) != "plain":
            log.warning("tls.verification_disabled", channel_type="email", host=config.host, port=config.port)
        attempt = _Attempt(config, delivery, build, self.timeout)
        attempt.next("connecting")
        # Tenants write SMTP hosts too: resolve once, check, and connect to the checked address.
        address = check_host(config.host, config.port, self.address_policy)
        client = self._client(config, address)
        sent = False
        try:
            with closing_at(delivery.deadline, client.cut) as watchdog:
                try:
                    refused = self._exchange(client, attempt, message)
                    sent = True
                    attempt.next("saying QUIT", client)
                    client.quit()
                except (smtplib.SMTPException, OSError, UnicodeError) as exc:
                    if sent:  # a failing QUIT after the message was accepted changes nothing
                        pass
                    elif watchdog.fired or attempt.past_deadline():  # cut, or a wait cut to fit
                        raise DeadlineExceeded(
                            f"SMTP server {config.server} was still {attempt.step} at the attempt "
                            "deadline; connection closed"
                        ) from None
                    else:
                        raise _failure(exc, config, attempt.step, attempt.timeout) from None
                except DeadlineExceeded:
                    if not sent:
                        raise
        finally:
            client.close()
        return _receipt(config, refused)

    def close(self) -> None:
        pass

    def _tls_context(self, config: EmailConfig) -> ssl.SSLContext:
        return self.tls_context if config.tls_verify else self.unverified_tls_context

    def _client(self, config: EmailConfig, address: str) -> _Client:
        """An unconnected client: connecting happens under the deadline watchdog."""
        if transport(config) == "ssl":
            return _PinnedSMTPSSL(
                local_hostname=self.local_hostname, context=self._tls_context(config), address=address
            )
        return _PinnedSMTP(local_hostname=self.local_hostname, address=address)

    def _exchange(self, client: _Client, attempt: _Attempt, message: EmailMessage) -> dict[str, Any]:
        """Greeting to end of DATA; returns the recipients the server refused."""
        config = attempt.config
        attempt.next("connecting", client)
        # smtplib names the TLS server (STARTTLS) after the host given to its constructor, which would
        # also connect outside the watchdog: set that name, then connect (to the pinned address).
        client._host = config.host
        code, greeting = client.connect(config.host, config.port)
        if code != 220:
            raise smtplib.SMTPConnectError(code, greeting)
        attempt.next("saying EHLO", client)
        client.ehlo_or_helo_if_needed()
        if transport(config) == "starttls":
            if not client.has_extn("starttls"):
                raise PermanentError(
                    f"SMTP server {config.server} does not offer STARTTLS but config.smtp.smtp_tls "
                    "is true; not sending in plaintext (use port 465 for implicit TLS, or set "
                    "smtp_tls false)"
                )
            attempt.next("starting TLS", client)
            client.starttls(context=self._tls_context(config))
            attempt.next("saying EHLO", client)
            client.ehlo()
        if config.user:
            attempt.next("logging in", client)
            client.login(config.user, config.password or "")
        options: tuple[str, ...] = ()
        if is_8bit(message) and _ascii_envelope(config):
            if client.has_extn("8bitmime"):
                options = ("BODY=8BITMIME",)
            else:
                message = attempt.build(False)
        attempt.next("sending the message", client)
        return dict(
            client.send_message(
                message,
                from_addr=config.envelope_sender,
                to_addrs=config.envelope_recipients,
                mail_options=options,
            )
        )


def _ascii_envelope(config: EmailConfig) -> bool:
    """An internationalised address makes smtplib ask for SMTPUTF8 and BODY=8BITMIME itself."""
    return "".join([config.envelope_sender, *config.envelope_recipients]).isascii()


def _receipt(config: EmailConfig, refused: Mapping[str, tuple[int, bytes]]) -> Receipt:
    recipients = config.envelope_recipients
    accepted = len(recipients) - len(refused)
    if refused:
        detail = (
            f"accepted by {config.server} for {accepted} of {len(recipients)} recipients; "
            f"refused: {_refusals(refused, config.secrets())}"
        )
    else:
        detail = f"accepted by {config.server} for {accepted} recipient{'s' * (accepted != 1)}"
    return Receipt(detail=detail)
