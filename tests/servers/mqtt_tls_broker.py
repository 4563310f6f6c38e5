"""Throwaway Mosquitto brokers on 127.0.0.1 for tests, plus a fake broker that misbehaves on purpose.

    with mosquitto_tls_broker(tmp_dir) as broker:     # TLS on broker.port, plain on broker.plain_port
        ...mqtts://127.0.0.1:{broker.port} with make_settings(tls={"ca_file": broker.ca_path})...

    with mosquitto_password_broker(tmp_dir, {"alice": "s3cret"}) as broker:
        ...mqtt://127.0.0.1:{broker.port}, anonymous clients refused...

    with FakeBroker(connack=CONNACK_ACCEPTED) as fake:  # answers CONNECT, never acknowledges PUBLISH
        ...

The real brokers are separate ``mosquitto`` processes (the binary must be on PATH), stopped on exit.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import trustme

HOST = "127.0.0.1"
START_TIMEOUT = 5.0

CONNACK_ACCEPTED = b"\x20\x02\x00\x00"
CONNACK_SERVER_UNAVAILABLE = b"\x20\x02\x00\x03"
CONNACK_BAD_CREDENTIALS = b"\x20\x02\x00\x04"
CONNACK_NOT_AUTHORISED = b"\x20\x02\x00\x05"


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None
    )


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick; the socket is closed again)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Broker:
    host: str
    port: int  # the listener under test (TLS or password-protected)
    plain_port: int  # an anonymous plain listener for subscribers (== port for the password broker)
    process: subprocess.Popen[bytes]
    log_path: Path
    ca_path: str | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _wait_listening(process: subprocess.Popen[bytes], ports: list[int]) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    pending = list(ports)
    while pending and time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection((HOST, pending[0]), timeout=0.2):
                pending.pop(0)
        except OSError:
            time.sleep(0.05)
    return not pending


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@contextmanager
def _run_mosquitto(
    workdir: Path, listeners: list[list[str]], extra: list[str]
) -> Iterator[tuple[Broker, list[int]]]:
    """Start mosquitto with one config block per listener (ports picked here); retry on a port race."""
    binary = mosquitto_binary()
    if binary is None:
        raise RuntimeError("mosquitto binary not found on PATH")
    workdir.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):
        ports = [free_port() for _ in listeners]
        lines = ["persistence false", "log_dest stderr", "log_type all"]
        if os.geteuid() == 0:
            lines.append(f"user {getpass.getuser()}")  # keep access to our 0700 temp files
        lines += extra
        for port, block in zip(ports, listeners, strict=True):
            lines.append(f"listener {port} {HOST}")
            lines += block
        conf = workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        log_path = workdir / "mosquitto.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        if _wait_listening(process, ports):
            broker = Broker(HOST, ports[0], ports[-1], process, log_path)
            try:
                yield broker, ports
            finally:
                _stop(process)
            return
        _stop(process)
    raise RuntimeError(f"mosquitto did not start; log:\n{log_path.read_text(errors='replace')}")


@contextmanager
def mosquitto_tls_broker(workdir: Path) -> Iterator[Broker]:
    """TLS listener (certificate from a fresh trustme CA, for 127.0.0.1 and localhost) + a plain one."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    workdir.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = workdir / "ca.pem", workdir / "server.pem", workdir / "server.key"
    ca.cert_pem.write_to_path(str(ca_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for extra_pem in cert.cert_chain_pems[1:]:
        extra_pem.write_to_path(str(cert_path), append=True)
    cert.private_key_pem.write_to_path(str(key_path))
    tls_block = [f"cafile {ca_path}", f"certfile {cert_path}", f"keyfile {key_path}"]
    with _run_mosquitto(workdir, [tls_block, []], ["allow_anonymous true"]) as (broker, _ports):
        broker.ca_path = str(ca_path)
        yield broker


@contextmanager
def mosquitto_password_broker(workdir: Path, users: Mapping[str, str]) -> Iterator[Broker]:
    """A plain listener that requires one of ``users`` (mosquitto_passwd must be on PATH)."""
    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        raise RuntimeError("mosquitto_passwd not found on PATH")
    workdir.mkdir(parents=True, exist_ok=True)
    password_file = workdir / "passwords"
    password_file.write_text("")
    for user, password in users.items():
        subprocess.run([passwd, "-b", str(password_file), user, password], check=True, capture_output=True)
    password_file.chmod(0o600)
    extra = ["allow_anonymous false", f"password_file {password_file}"]
    with _run_mosquitto(workdir, [[]], extra) as (broker, _ports):
        yield broker


class FakeBroker:
    """Accepts TCP connections on 127.0.0.1, answers CONNECT with ``connack`` (None: stays silent),
    then reads everything and never acknowledges a PUBLISH. With ``answer_pings`` it answers PINGREQ
    with PINGRESP; with ``drop_on_publish`` it closes the connection on the first PUBLISH, as a
    broker does with a topic it refuses."""

    def __init__(
        self, connack: bytes | None, *, answer_pings: bool = False, drop_on_publish: bool = False
    ) -> None:
        self.connack = connack
        self.answer_pings = answer_pings
        self.drop_on_publish = drop_on_publish
        self._server = socket.socket()
        self._server.bind((HOST, 0))
        self._server.listen(16)
        self._server.settimeout(0.1)
        self.port = int(self._server.getsockname()[1])
        self.connections = 0
        self.publishes = 0
        self._stop = threading.Event()
        self._clients: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, name="fake-mqtt-broker", daemon=True)

    def __enter__(self) -> FakeBroker:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for client in self._clients:
            client.close()
        self._server.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _addr = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self._clients.append(client)
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        client.settimeout(0.1)
        buffer = b""
        while not self._stop.is_set():
            try:
                data = client.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            buffer += data
            while (packet := _next_packet(buffer)) is not None:
                kind, size = packet
                buffer = buffer[size:]
                if not self._answer(client, kind):
                    return

    def _answer(self, client: socket.socket, kind: int) -> bool:
        """Answer one packet (by MQTT packet type); False once the connection is closed."""
        reply = b""
        if kind == 1 and self.connack is not None:  # CONNECT
            reply = self.connack
        elif kind == 3:  # PUBLISH
            self.publishes += 1
            if self.drop_on_publish:
                client.close()
                return False
        elif kind == 12 and self.answer_pings:  # PINGREQ
            reply = b"\xd0\x00"
        if reply:
            try:
                client.sendall(reply)
            except OSError:
                return False
        return True


def _next_packet(buffer: bytes) -> tuple[int, int] | None:
    """(packet type, total size) of the first whole MQTT packet in buffer, or None if incomplete."""
    length, multiplier, index = 0, 1, 1
    while True:
        if index >= len(buffer):
            return None
        byte = buffer[index]
        length += (byte & 0x7F) * multiplier
        multiplier *= 128
        index += 1
        if not byte & 0x80:
            break
    if len(buffer) < index + length:
        return None
    return buffer[0] >> 4, index + length
