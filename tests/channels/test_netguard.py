"""The SSRF guard (channels/netguard.py): address decisions, resolution, and the pinned connection.

Nothing here sends a packet anywhere but loopback. Decisions about private and public addresses are
tested on the policy alone or with fake resolvers; every test runs with socket.socket.connect and
socket.create_connection patched so that a connect to a non-loopback address is recorded and refused
in-process (it never reaches the network), and the refusal tests assert no connect happened at all.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Callable
from typing import Any

import pytest
import requests
import responses
import trustme

from channels.errors import BlockedAddress, PermanentError, TransientError
from channels.http import HttpClient
from channels.netguard import (
    AddressPolicy,
    GuardedAdapter,
    address_class,
    check_host,
    embedded_ipv4,
    resolve_checked,
)
from channels.registry import build_registry
from tests.rows import drain, insert_channel, insert_notification_job, job, log_rows
from tests.servers.http import RecordingServer
from tests.support import make_settings

HOST = "hooks.example.test"
LOOPBACK = AddressPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))
STRICT = AddressPolicy()


# --- no traffic off this machine -------------------------------------------------------------------


def _is_loopback(address: Any) -> bool:
    if not isinstance(address, tuple):
        return True  # AF_UNIX paths (systemd notify): local by definition
    try:
        return ipaddress.ip_address(str(address[0]).split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def connects(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every socket connect attempted during the test; non-loopback ones are refused in-process."""
    seen: list[Any] = []
    real_connect = socket.socket.connect
    real_create_connection = socket.create_connection

    def connect(self: socket.socket, address: Any) -> None:
        seen.append(address)
        if not _is_loopback(address):
            raise ConnectionRefusedError(111, f"test refused a connect to {address!r}")
        real_connect(self, address)

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        seen.append(address)
        if not _is_loopback(address):
            raise AssertionError(f"create_connection to a non-loopback address: {address!r}")
        return real_create_connection(address, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    return seen


# --- fake resolvers -------------------------------------------------------------------------------


def answer(ip: str, port: int) -> tuple[Any, ...]:
    if ":" in ip:
        return (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))


class FakeResolver:
    """getaddrinfo from a table, or from a list of answers per call (DNS rebinding)."""

    def __init__(self, table: dict[str, list[str]] | None = None, *rounds: list[str]) -> None:
        self.table = table or {}
        self.rounds = list(rounds)
        self.calls: list[str] = []

    def __call__(self, host: str, port: int, family: int = 0, type: int = 0, *rest: Any) -> list[Any]:
        self.calls.append(host)
        if self.rounds:
            ips = self.rounds.pop(0) if len(self.rounds) > 1 else self.rounds[0]
        elif host in self.table:
            ips = self.table[host]
        else:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [answer(ip, port) for ip in ips]


def numeric_only(host: str, port: int, family: int = 0, type: int = 0, *rest: Any) -> list[Any]:
    """The C library's parser for odd IPv4 spellings ("127.1", "2130706433"), never DNS."""
    return socket.getaddrinfo(host, port, family, type, 0, socket.AI_NUMERICHOST)


def no_dns(*args: Any) -> list[Any]:
    raise AssertionError(f"resolver called for {args[0]!r}")


def client(policy: AddressPolicy, resolver: Callable[..., Any], **kwargs: Any) -> HttpClient:
    return HttpClient(
        connect_timeout=2,
        read_timeout=2,
        user_agent="test",
        pool_size=2,
        policy=policy,
        resolver=resolver,
        **kwargs,
    )


# --- decisions ------------------------------------------------------------------------------------

REFUSED = [
    ("0.0.0.0", "unspecified address"),
    ("::", "unspecified address"),
    ("0.1.2.3", '"this network" address'),
    ("127.0.0.1", "loopback address"),
    ("127.0.0.2", "loopback address"),
    ("127.255.255.254", "loopback address"),
    ("::1", "loopback address"),
    ("10.0.0.1", "private address"),
    ("172.16.0.1", "private address"),
    ("172.31.255.254", "private address"),
    ("192.168.1.1", "private address"),
    ("fc00::1", "private (unique local) address"),
    ("fd12:3456:789a::1", "private (unique local) address"),
    ("169.254.169.254", "link-local address"),
    ("169.254.0.1", "link-local address"),
    ("fe80::1", "link-local address"),
    ("fe80::1%eth0", "link-local address"),
    ("fec0::1", "site-local address"),
    ("100.64.0.1", "shared (CGNAT) address"),
    ("100.127.255.254", "shared (CGNAT) address"),
    ("224.0.0.1", "multicast address"),
    ("239.255.255.250", "multicast address"),
    ("ff02::1", "multicast address"),
    ("240.0.0.1", "reserved address"),
    ("255.255.255.255", "broadcast address"),
    ("192.0.0.8", "IETF protocol assignment address"),
    ("192.0.2.1", "documentation address"),
    ("198.51.100.7", "documentation address"),
    ("203.0.113.9", "documentation address"),
    ("2001:db8::1", "documentation address"),
    ("198.18.0.1", "benchmarking address"),
    ("192.88.99.1", "6to4 relay anycast address"),
    ("100::1", "discard-only address"),
    ("2001::1", "Teredo address"),
    ("64:ff9b:1::a00:1", "local-use NAT64 address"),
    ("::ffff:10.0.0.1", "IPv4-mapped form of 10.0.0.1: private address"),
    ("::ffff:127.0.0.1", "IPv4-mapped form of 127.0.0.1: loopback address"),
    ("::ffff:169.254.169.254", "IPv4-mapped form of 169.254.169.254: link-local address"),
    ("::ffff:0.0.0.0", "IPv4-mapped form of 0.0.0.0: unspecified address"),
    ("::10.0.0.1", "IPv4-compatible form of 10.0.0.1: private address"),
    ("::127.0.0.1", "IPv4-compatible form of 127.0.0.1: loopback address"),
    ("2002:a00:1::", "6to4 form of 10.0.0.1: private address"),
    ("2002:7f00:1::1", "6to4 form of 127.0.0.1: loopback address"),
    ("2002:a9fe:a9fe::1", "6to4 form of 169.254.169.254: link-local address"),
    ("64:ff9b::a00:1", "NAT64 form of 10.0.0.1: private address"),
    ("64:ff9b::169.254.169.254", "NAT64 form of 169.254.169.254: link-local address"),
    ("64:ff9b::6440:1", "NAT64 form of 100.64.0.1: shared (CGNAT) address"),
]

PUBLIC = [
    "93.184.216.34",
    "8.8.8.8",
    "1.1.1.1",
    "2606:4700::1111",
    "2a00:1450:4001:80b::200e",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above
    "172.15.255.255",
    "172.32.0.0",
    "169.253.255.255",
    "::ffff:93.184.216.34",
    "64:ff9b::5db8:d822",  # NAT64 of 93.184.216.34
    "2002:5db8:d822::1",  # 6to4 of 93.184.216.34
]


@pytest.mark.parametrize(("ip", "reason"), REFUSED)
def test_non_public_addresses_are_refused_by_default(ip, reason):
    assert address_class(ip) == reason
    with pytest.raises(BlockedAddress) as caught:
        STRICT.check(ip)
    assert f"({reason})" in str(caught.value)
    assert isinstance(caught.value, PermanentError)


@pytest.mark.parametrize("ip", PUBLIC)
def test_public_addresses_are_allowed(ip):
    assert address_class(ip) is None
    STRICT.check(ip)
    STRICT.check(ipaddress.ip_address(ip))


def test_refusal_message_names_address_class_host_and_the_setting():
    with pytest.raises(BlockedAddress) as caught:
        STRICT.check("169.254.169.254", host=HOST)
    assert str(caught.value) == (
        "refusing to connect to 169.254.169.254 (link-local address) for hooks.example.test;"
        " open it with [http] allowed_networks"
    )


def test_embedded_ipv4_forms_are_unwrapped():
    v4 = ipaddress.IPv4Address("10.1.2.3")
    assert embedded_ipv4(ipaddress.ip_address("::ffff:10.1.2.3")) == (v4, "IPv4-mapped")
    assert embedded_ipv4(ipaddress.ip_address("::10.1.2.3")) == (v4, "IPv4-compatible")
    assert embedded_ipv4(ipaddress.ip_address("2002:a01:203:1::5")) == (v4, "6to4")
    assert embedded_ipv4(ipaddress.ip_address("64:ff9b::10.1.2.3")) == (v4, "NAT64")
    assert embedded_ipv4(ipaddress.ip_address("::1")) is None
    assert embedded_ipv4(ipaddress.ip_address("::")) is None
    assert embedded_ipv4(ipaddress.ip_address("2606:4700::1111")) is None
    assert embedded_ipv4(v4) is None


def test_allowed_networks_open_only_the_listed_networks():
    policy = AddressPolicy(False, (ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("fd00:1::/64")))
    for ip in ("10.20.0.1", "10.20.255.254", "::ffff:10.20.3.4", "64:ff9b::a14:304", "fd00:1::5"):
        assert policy.opens(ip), ip
    for ip in ("10.21.0.1", "127.0.0.1", "169.254.169.254", "fd00:2::5", "::1", "0.0.0.0"):
        assert not policy.opens(ip), ip


def test_allowed_networks_match_by_ip_version():
    # ::1 is the integer 1, which lies in 0.0.0.0/1 if versions were ignored.
    policy = AddressPolicy(allowed_networks=(ipaddress.ip_network("0.0.0.0/1"),))
    assert policy.opens("10.0.0.1")
    assert not policy.opens("::1")
    assert not policy.opens("fe80::1")


def test_allowed_networks_may_be_given_as_strings():
    policy = AddressPolicy(False, ("127.0.0.0/8", "::1"))  # type: ignore[arg-type]
    assert policy.allowed_networks == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert policy.opens("127.0.0.1") and policy.opens("::1")


def test_allow_private_opens_every_non_public_class_but_unspecified():
    policy = AddressPolicy(allow_private=True)
    for ip, reason in REFUSED:
        assert policy.opens(ip) is (reason.split(": ")[-1] != "unspecified address"), ip


def test_unspecified_addresses_are_never_opened():
    everything = AddressPolicy(True, (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")))
    for ip in ("0.0.0.0", "::", "::ffff:0.0.0.0", "64:ff9b::"):
        with pytest.raises(BlockedAddress, match="never a valid destination"):
            everything.check(ip)
    everything.check("127.0.0.1")


# --- resolution -----------------------------------------------------------------------------------


def test_resolve_checked_returns_every_checked_address_once():
    resolver = FakeResolver({HOST: ["93.184.216.34", "2606:4700::1111", "93.184.216.34"]})
    addresses = resolve_checked(HOST, 443, STRICT, resolver)
    assert addresses == [
        (socket.AF_INET, ("93.184.216.34", 443)),
        (socket.AF_INET6, ("2606:4700::1111", 443, 0, 0)),
    ]
    assert [a.ip for a in addresses] == ["93.184.216.34", "2606:4700::1111"]
    assert resolver.calls == [HOST]


@pytest.mark.parametrize(
    "answers",
    [
        ["93.184.216.34", "10.0.0.1"],
        ["10.0.0.1", "93.184.216.34"],
        ["2606:4700::1111", "169.254.169.254"],
        ["93.184.216.34", "::ffff:127.0.0.1"],
    ],
)
def test_a_host_with_any_non_public_address_is_refused(answers):
    with pytest.raises(BlockedAddress) as caught:
        resolve_checked(HOST, 80, STRICT, FakeResolver({HOST: answers}))
    blocked = next(ipaddress.ip_address(ip) for ip in answers if address_class(ip))
    assert str(caught.value).startswith(f"refusing to connect to {blocked} (")
    assert f"for {HOST};" in str(caught.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "::1", "10.0.0.1", "169.254.169.254", "[fe80::1]"])
def test_ip_literals_are_not_looked_up(host):
    bare = host.strip("[]")
    if ipaddress.ip_address(bare).is_loopback:
        (address,) = resolve_checked(host, 80, AddressPolicy(allow_private=True), no_dns)
        assert address.ip == bare
    else:
        with pytest.raises(BlockedAddress, match=f"refusing to connect to {bare} "):
            resolve_checked(host, 80, STRICT, no_dns)


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "127.1", "0177.0.0.1", "017700000001"])
def test_odd_spellings_of_loopback_are_judged_by_what_they_resolve_to(host):
    with pytest.raises(BlockedAddress, match=r"refusing to connect to 127\.0\.0\.1 \(loopback address\)"):
        resolve_checked(host, 80, STRICT, numeric_only)


def test_lookup_failures_are_transient():
    with pytest.raises(TransientError, match="cannot resolve host nowhere.example.test"):
        resolve_checked("nowhere.example.test", 80, STRICT, FakeResolver())
    with pytest.raises(TransientError, match="cannot resolve host empty.example.test"):
        resolve_checked("empty.example.test", 80, STRICT, FakeResolver({"empty.example.test": []}))


def test_check_host_gives_the_checked_ip_to_connect_to():
    resolver = FakeResolver({"smtp.example.test": ["93.184.216.34", "2606:4700::1111"]})
    assert check_host("smtp.example.test", 25, STRICT, resolver) == "93.184.216.34"
    assert check_host(
        "mqtt.local.test", 1883, LOOPBACK, FakeResolver({"mqtt.local.test": ["127.0.0.1"]})
    ) == ("127.0.0.1")
    with pytest.raises(BlockedAddress):
        check_host("snmp.example.test", 162, STRICT, FakeResolver({"snmp.example.test": ["192.168.0.9"]}))


# --- through HttpClient: the connection goes to the checked address --------------------------------


def test_request_reaches_the_checked_address_with_the_original_host_header(http_server, connects):
    resolver = FakeResolver({HOST: ["127.0.0.1"]})
    http = client(LOOPBACK, resolver)
    try:
        receipt = http.send(f"http://{HOST}:{http_server.port}/hook", b"{}", headers={})
    finally:
        http.close()
    assert receipt.http_status == 200
    (request,) = http_server.received("/hook")
    assert request.header("Host") == f"{HOST}:{http_server.port}"
    assert resolver.calls == [HOST]
    assert connects == [("127.0.0.1", http_server.port)]


def test_blocked_address_is_refused_before_any_connect(http_server, connects):
    resolver = FakeResolver({HOST: ["127.0.0.1"]})
    http = client(STRICT, resolver)
    try:
        with pytest.raises(BlockedAddress) as caught:
            http.send(f"http://{HOST}:{http_server.port}/hook", b"{}", headers={})
    finally:
        http.close()
    assert str(caught.value) == (
        f"refusing to connect to 127.0.0.1 (loopback address) for {HOST};"
        " open it with [http] allowed_networks"
    )
    assert connects == []
    assert http_server.received() == []


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://10.0.0.1:8080/hook",
        "https://[fd00::1]/hook",
        "http://0.0.0.0:9/hook",
        "http://2130706433/hook",
    ],
)
def test_literal_and_disguised_addresses_are_refused_before_any_connect(url, connects):
    http = client(STRICT, numeric_only)
    try:
        with pytest.raises(BlockedAddress, match="refusing to connect to "):
            http.send(url, b"{}", headers={})
    finally:
        http.close()
    assert connects == []


def test_mixed_public_and_private_answer_is_refused_before_any_connect(connects):
    http = client(STRICT, FakeResolver({HOST: ["93.184.216.34", "10.0.0.1"]}))
    try:
        with pytest.raises(BlockedAddress, match=r"refusing to connect to 10\.0\.0\.1 \(private address\)"):
            http.send(f"https://{HOST}/hook", b"{}", headers={})
    finally:
        http.close()
    assert connects == []


def test_dns_rebinding_cannot_redirect_the_connection(http_server, connects):
    """First answer public (checked, allowed), later answers loopback: only the checked address is dialled.

    The connect to the public address is refused in-process by the `connects` fixture, never sent.
    """
    resolver = FakeResolver(None, ["93.184.216.34"], ["127.0.0.1"])
    http = client(STRICT, resolver)
    try:
        with pytest.raises(TransientError, match=f"cannot connect to {HOST}"):
            http.send(f"http://{HOST}:{http_server.port}/hook", b"{}", headers={})
    finally:
        http.close()
    assert resolver.calls == [HOST]  # one lookup: the one that was checked
    assert connects == [("93.184.216.34", http_server.port)]
    assert http_server.received() == []


def test_each_new_connection_is_checked_again(http_server, connects):
    # The pool's first connection was checked; when the name later points somewhere refused, the next
    # new connection is refused, and the pooled one is never re-pointed.
    resolver = FakeResolver(None, ["127.0.0.1"], ["10.0.0.1"])
    http = client(LOOPBACK, resolver)
    url = f"http://{HOST}:{http_server.port}/hook"
    try:
        http.send(url, b"{}", headers={})
        http.session.close()  # drop the pooled connection
        with pytest.raises(BlockedAddress, match=r"10\.0\.0\.1 \(private address\)"):
            http.send(url, b"{}", headers={})
    finally:
        http.close()
    assert resolver.calls == [HOST, HOST]
    assert connects == [("127.0.0.1", http_server.port)]
    assert len(http_server.received()) == 1


def test_lookup_failure_through_the_client_is_transient(connects):
    http = client(STRICT, FakeResolver())
    try:
        with pytest.raises(TransientError, match=f"cannot resolve host {HOST}"):
            http.send(f"https://{HOST}/hook", b"{}", headers={})
    finally:
        http.close()
    assert connects == []


def test_proxies_from_the_environment_are_ignored(http_server, connects, monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://10.9.9.9:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    http = client(LOOPBACK, FakeResolver({HOST: ["127.0.0.1"]}))
    try:
        http.send(f"http://{HOST}:{http_server.port}/hook", b"{}", headers={})
    finally:
        http.close()
    assert connects == [("127.0.0.1", http_server.port)]
    assert len(http_server.received("/hook")) == 1


def test_an_explicit_proxy_is_refused(connects):
    http = client(STRICT, no_dns)
    try:
        with pytest.raises(PermanentError, match="proxies are not supported"):
            http.session.post("http://93.184.216.34/", proxies={"http": "http://127.0.0.1:9"})
    finally:
        http.close()
    assert connects == []


@responses.activate
def test_a_wrapped_guard_error_is_unwrapped():
    responses.post(
        f"https://{HOST}/hook", body=requests.ConnectionError(BlockedAddress("refusing to connect"))
    )
    http = client(STRICT, no_dns)
    with pytest.raises(BlockedAddress, match="refusing to connect"):
        http.send(f"https://{HOST}/hook", b"{}", headers={})


@responses.activate
def test_responses_still_intercepts_the_guarded_adapter():
    responses.post(f"https://{HOST}/hook", status=204)
    http = client(STRICT, no_dns)
    assert isinstance(http.session.get_adapter(f"https://{HOST}/"), GuardedAdapter)
    assert http.send(f"https://{HOST}/hook", b"{}", headers={}).http_status == 204


# --- HTTPS: SNI and certificate verification use the host name, not the pinned address --------------


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def tls_server(ca: trustme.CA, name: str, sni: list[str | None]) -> RecordingServer:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(name).configure_cert(context)  # not valid for 127.0.0.1
    context.sni_callback = lambda _sock, server_name, _ctx: sni.append(server_name)  # type: ignore[func-returns-value]
    return RecordingServer(tls=context).start()


def test_https_verifies_the_host_name_over_the_pinned_address(ca, tmp_path, connects):
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    sni: list[str | None] = []
    server = tls_server(ca, HOST, sni)
    http = client(LOOPBACK, FakeResolver({HOST: ["127.0.0.1"]}), ca_file=str(ca_file))
    try:
        assert http.send(f"https://{HOST}:{server.port}/secure", b"{}", headers={}).http_status == 200
    finally:
        http.close()
        server.stop()
    assert sni == [HOST]
    (request,) = server.received("/secure")
    assert request.header("Host") == f"{HOST}:{server.port}"
    assert connects == [("127.0.0.1", server.port)]


def test_https_certificate_for_another_name_is_still_refused(ca, tmp_path):
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = tls_server(ca, "other.example.test", [])
    http = client(LOOPBACK, FakeResolver({HOST: ["127.0.0.1"]}), ca_file=str(ca_file))
    try:
        with pytest.raises(PermanentError, match=f"TLS certificate verification failed for {HOST}"):
            http.send(f"https://{HOST}:{server.port}/secure", b"{}", headers={})
    finally:
        http.close()
        server.stop()
    assert server.received() == []


# --- wiring ---------------------------------------------------------------------------------------


def test_registry_builds_the_policy_from_settings():
    networks = (ipaddress.ip_network("10.20.0.0/16"),)
    registry = build_registry(
        make_settings(http={"allow_private_networks": True, "allowed_networks": networks})
    )
    try:
        assert registry.context.http.policy == AddressPolicy(True, networks)
    finally:
        registry.close()


def test_the_default_client_refuses_every_non_public_address():
    http = HttpClient(connect_timeout=1, read_timeout=1, user_agent="test", pool_size=1)
    try:
        assert http.policy == AddressPolicy(False, ())
    finally:
        http.close()


def test_worker_fails_a_job_whose_webhook_points_at_a_refused_address(database, http_server):
    channel = insert_channel(database, "webhook", {"url": http_server.url("/hook")})
    job_id = insert_notification_job(database, channel)

    drain(database, http={"allowed_networks": ()})

    row = job(database, "notification_jobs", job_id)
    assert row["status"] == "FAILED"
    assert row["attempts"] == 1
    assert row["last_error"] == (
        "refusing to connect to 127.0.0.1 (loopback address); open it with [http] allowed_networks"
    )
    (log,) = log_rows(database, job_id)
    assert log["success"] is False and "refusing to connect to 127.0.0.1" in log["error_msg"]
    assert http_server.received() == []
