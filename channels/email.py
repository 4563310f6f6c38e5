"""Email over SMTP: one message per delivery, To/Cc in headers and Bcc only in the envelope.

Transport security follows the config: port 465 (``IMPLICIT_TLS_PORTS``) is implicit TLS, otherwise
``smtp_tls`` true means STARTTLS (a server that does not offer it is a config error: never a silent
fallback to plaintext) and false means plain SMTP. Certificates are always verified against the
system store or ``[tls] ca_file``, unless the config says ``smtp.tls_verify: false`` (lab equipment).

Two spellings of the ``smtp`` object exist in production (``smtp_host``/``smtp_port``/``smtp_user``/
``smtp_password``/``smtp_tls`` and the web UI's ``host``/``port``/``username``/``password``/``use_tls``);
``normalise_smtp`` maps the second onto the first, the first winning when both are set.

Error messages name the server as host:port and quote the server's reply, never the password.
"""

from __future__ import annotations

import hashlib
import html
import smtplib
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formataddr, formatdate, getaddresses, parseaddr
from html.parser import HTMLParser
from typing import Any

import structlog

from channels.alert import Alert
from channels.base import Delivery, Receipt, config_object, optional_str, require_str
from channels.context import ChannelContext
from channels.digest import Digest
from channels.digest import cut as digest_cut
from channels.errors import DeliveryError, InvalidChannelConfig, PermanentError, TransientError
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

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
_LINE_BREAKS = ("\r", "\n", "\x00")


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


def _no_line_breaks(value: str, where: str) -> str:
    if any(ch in value for ch in _LINE_BREAKS):
        raise InvalidChannelConfig(f"{where} contains a line break or NUL character")
    return value


def _address(value: Any, where: str) -> str:
    """One address, bare or with a display name; refuses header injection and lists."""
    if not isinstance(value, str):
        raise InvalidChannelConfig(f"{where} must be a string, got {type(value).__name__}")
    text = _no_line_breaks(value, where).strip()
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


def parse_email_config(raw: Any) -> EmailConfig:
    """Validate the unified config shape (either ``smtp`` spelling); errors name the key."""
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
        _no_line_breaks(user, where("smtp_user"))
        if not user.isascii():
            raise InvalidChannelConfig(f"{where('smtp_user')} must be ASCII for SMTP AUTH")
    if password is not None and not password.isascii():
        raise InvalidChannelConfig(f"{where('smtp_password')} must be ASCII for SMTP AUTH")

    from_address = _address(
        require_str(smtp, "from_address", where="config.smtp"), "config.smtp.from_address"
    )
    from_name = optional_str(smtp, "from_name", where="config.smtp")
    if from_name is not None:
        _no_line_breaks(from_name, "config.smtp.from_name")

    recipients = config_object(obj.get("recipients"), where="config.recipients")
    to, cc, bcc = (_recipients(recipients, key) for key in RECIPIENT_KEYS)
    if not (to or cc or bcc):
        raise InvalidChannelConfig("config.recipients needs at least one address in to, cc or bcc")

    template = config_object(obj.get("template"), where="config.template")
    subject_template = _template(template, "subject_template")
    if subject_template is not None:
        _no_line_breaks(subject_template, "config.template.subject_template")
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


def _message_id(config: EmailConfig, delivery: Delivery) -> str:
    """Stable per job, so a retried message is recognisably the same message to receivers."""
    seed = f"{delivery.key}|{delivery.tenant_id}|{delivery.alert.alert_id}|{delivery.alert.event}"
    digest = hashlib.sha256(seed.encode()).hexdigest()[:32]
    domain = config.envelope_sender.rpartition("@")[2]
    if not domain.isascii() or not all(ch.isalnum() or ch in ".-" for ch in domain):
        domain = "delivery-worker.invalid"
    return f"<{digest}@{domain}>"


def build_message(config: EmailConfig, delivery: Delivery) -> EmailMessage:
    """The complete message; raises PermanentError if the rendered subject carries a line break."""
    alert = delivery.alert
    values = alert.placeholders()
    subject = ""
    if config.subject_template:
        subject = render(config.subject_template, values, where="config.template.subject_template").strip()
    subject = subject or default_subject(alert)  # a template that renders empty gets the default
    if any(ch in subject for ch in _LINE_BREAKS):
        raise PermanentError(
            "email subject contains a line break after rendering (from an alert value); "
            "refusing to send a possible header injection"
        )

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

    message = EmailMessage(policy=SMTP_POLICY)
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
    message["Message-ID"] = _message_id(config, delivery)
    message["Auto-Submitted"] = "auto-generated"
    message[DELIVERY_KEY_HEADER] = delivery.key
    message.set_content(text_body)
    if html_body is not None:
        message.add_alternative(html_body, subtype="html")
    return message


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


class _PinnedSMTP(smtplib.SMTP):
    """Connects to an address checked beforehand; the host name still names the server for TLS."""

    def __init__(self, *args: Any, address: str, **kwargs: Any) -> None:
        self.pinned_address = address  # set before SMTP.__init__, which connects
        super().__init__(*args, **kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return socket.create_connection((self.pinned_address, port), timeout, self.source_address)


class _PinnedSMTPSSL(smtplib.SMTP_SSL):
    def __init__(self, *args: Any, address: str, **kwargs: Any) -> None:
        self.pinned_address = address
        super().__init__(*args, **kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((self.pinned_address, port), timeout, self.source_address)
        return self.context.wrap_socket(sock, server_hostname=host)


class EmailChannel:
    channel_type = "email"

    def __init__(self, context: ChannelContext) -> None:
        settings = context.settings
        self.timeout = settings.smtp.timeout
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
        return parse_email_config(raw)

    def send(self, config: EmailConfig, delivery: Delivery) -> Receipt:
        return self._transmit(config, build_message(config, delivery))

    def send_digest(self, config: EmailConfig, digest: Digest) -> Receipt:
        return self._transmit(config, build_digest_message(config, digest))

    def _transmit(self, config: EmailConfig, message: EmailMessage) -> Receipt:
        recipients = config.envelope_recipients
        context = self.tls_context if config.tls_verify else self.unverified_tls_context
        mode = transport(config)
        if not config.tls_verify and mode != "plain":
            log.warning("tls.verification_disabled", channel_type="email", host=config.host, port=config.port)
        client: smtplib.SMTP | None = None
        step = "connecting"
        sent = False
        # Tenants write SMTP hosts too: resolve once, check, and connect to the checked address.
        address = check_host(config.host, config.port, self.address_policy)
        try:
            # The host goes to the constructor: smtplib only takes the TLS server_hostname from there.
            if mode == "ssl":
                client = _PinnedSMTPSSL(
                    config.host,
                    config.port,
                    timeout=self.timeout,
                    local_hostname=self.local_hostname,
                    context=context,
                    address=address,
                )
            else:
                client = _PinnedSMTP(
                    config.host,
                    config.port,
                    timeout=self.timeout,
                    local_hostname=self.local_hostname,
                    address=address,
                )
            step = "saying EHLO"
            client.ehlo_or_helo_if_needed()
            if mode == "starttls":
                if not client.has_extn("starttls"):
                    raise PermanentError(
                        f"SMTP server {config.server} does not offer STARTTLS but config.smtp.smtp_tls "
                        "is true; not sending in plaintext (use port 465 for implicit TLS, or set "
                        "smtp_tls false)"
                    )
                step = "starting TLS"
                client.starttls(context=context)
                step = "saying EHLO"
                client.ehlo()
            if config.user:
                step = "logging in"
                client.login(config.user, config.password or "")
            step = "sending the message"
            refused = client.send_message(message, from_addr=config.envelope_sender, to_addrs=recipients)
            sent = True
            client.quit()
        except (smtplib.SMTPException, OSError, UnicodeError) as exc:
            if not sent:  # a failing QUIT after the message was accepted changes nothing
                raise _failure(exc, config, step, self.timeout) from None
        finally:
            if client is not None:
                client.close()
        accepted = len(recipients) - len(refused)
        if refused:
            detail = (
                f"accepted by {config.server} for {accepted} of {len(recipients)} recipients; "
                f"refused: {_refusals(refused, config.secrets())}"
            )
        else:
            detail = f"accepted by {config.server} for {accepted} recipient{'s' * (accepted != 1)}"
        return Receipt(detail=detail)

    def close(self) -> None:
        pass


# --- storm digests (channels/digest.py) ----------------------------------------------------------

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


def _digest_counts(digest: Digest) -> list[str]:
    lines = []
    if digest.unlisted:
        counts = ", ".join(f"{count} {label.lower()}" for label, count in digest.unlisted)
        lines.append(f"…and {digest.unlisted_total} more open: {counts}")
    if digest.acknowledged or digest.resolved:
        lines.append(f"{digest.acknowledged} acknowledged · {digest.resolved} resolved")
    return lines


def digest_text_body(digest: Digest) -> str:
    lines = [digest.headline(), ""]
    for title, where, when in _digest_rows(digest):
        lines += [title, f"    {where} · {when}"]
    counts = _digest_counts(digest)
    return "\n".join([*lines, *([""] if counts else []), *counts]) + "\n"


def digest_html_body(digest: Digest) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(title)}</td><td>{html.escape(where)}</td><td>{html.escape(when)}</td></tr>"
        for title, where, when in _digest_rows(digest)
    )
    counts = "".join(f"<p>{html.escape(line)}</p>" for line in _digest_counts(digest))
    title = html.escape(digest.headline())
    return f"<html><body><h2>{title}</h2><table>{rows}</table>{counts}</body></html>\n"


def _digest_message_id(config: EmailConfig, digest: Digest) -> str:
    """Stable for the jobs a digest covers (its key), under the same domain rule as ``_message_id``."""
    seed = hashlib.sha256(f"digest|{digest.key}|{digest.tenant_id}".encode()).hexdigest()[:32]
    domain = config.envelope_sender.rpartition("@")[2]
    if not domain.isascii() or not all(ch.isalnum() or ch in ".-" for ch in domain):
        domain = "delivery-worker.invalid"
    return f"<{seed}@{domain}>"


def build_digest_message(config: EmailConfig, digest: Digest) -> EmailMessage:
    """One email summarising a storm; the channel's per-alert templates do not apply to it."""
    message = EmailMessage(policy=SMTP_POLICY)
    if config.from_name:
        message["From"] = formataddr((config.from_name, config.envelope_sender))
    else:
        message["From"] = config.from_address
    if config.to:
        message["To"] = ", ".join(config.to)
    if config.cc:
        message["Cc"] = ", ".join(config.cc)
    message["Subject"] = digest_subject(digest)
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = _digest_message_id(config, digest)
    message["Auto-Submitted"] = "auto-generated"
    message[DELIVERY_KEY_HEADER] = digest.key
    message.set_content(digest_text_body(digest))
    if config.format == "html":
        message.add_alternative(digest_html_body(digest), subtype="html")
    return message
