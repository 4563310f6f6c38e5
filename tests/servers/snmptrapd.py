"""The real Net-SNMP ``snmptrapd`` on 127.0.0.1, logging every notification it accepts, for tests.

    users = [TrapUser("pulse", engine_id=ENGINE_ID, auth_password="...", priv_password="...")]
    with snmptrapd(tmp_path, community="s3cret", users=users) as trapd:
        ...send to trapd.host:trapd.port...
        trap = trapd.wait_for_traps(1)[0]
        trap.trap_oid, trap.values["1.3.6.1.4.1.99999.1.1.0"], trap.security

It accepts SNMPv2c with ``community`` and SNMPv3 authPriv (SHA/AES by default) for each
``TrapUser``: traps secured with the user's ``engine_id`` (the sender's snmpEngineID, as a trap
receiver must know it) and informs secured with snmptrapd's own engine ID. Anything else is
dropped by snmptrapd itself. It runs with ``-C`` (no system config), ``-On`` (numeric OIDs),
``-Ox`` (octet strings in hex, decoded here as UTF-8) and a ``-F`` format this module parses.

``snmptrapd_binary()`` is None when Net-SNMP's snmptrapd is not installed (``apt-get install
snmptrapd``); tests skip then, unless the environment variable ``CI`` is set (then they fail).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
FORMAT = r"TRAP %b|%P\n%V\n%v\nEND\n"  # %V\n: one varbind per line


def snmptrapd_binary() -> str | None:
    return shutil.which("snmptrapd") or next(
        (path for path in ("/usr/sbin/snmptrapd", "/usr/local/sbin/snmptrapd") if os.path.exists(path)), None
    )


def require_snmptrapd() -> str:
    """The binary's path; skips the test when it is missing, or fails it when env CI is set."""
    binary = snmptrapd_binary()
    if binary is None:
        message = "Net-SNMP snmptrapd is not installed (apt-get install snmptrapd)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


@dataclass(frozen=True)
class TrapUser:
    """An SNMPv3 USM user snmptrapd accepts at authPriv."""

    name: str
    engine_id: bytes  # the sending engine's ID, for traps
    auth_password: str
    priv_password: str
    auth_protocol: str = "SHA"
    priv_protocol: str = "AES"


@dataclass(frozen=True)
class LoggedTrap:
    """One notification as snmptrapd logged it."""

    source: str  # "UDP: [127.0.0.1]:port->[127.0.0.1]:port"
    security: str  # "TRAP2, SNMP v2c, community x" / "TRAP2, SNMP v3, user pulse, context " / "INFORM, ..."
    varbinds: list[tuple[str, Any]]  # (dotted OID without the leading dot, value) in order

    @property
    def names(self) -> list[str]:
        return [name for name, _value in self.varbinds]

    @property
    def values(self) -> dict[str, Any]:
        return dict(self.varbinds)

    @property
    def trap_oid(self) -> str:
        return str(self.values.get("1.3.6.1.6.3.1.1.4.1.0", ""))


def _value(text: str) -> Any:
    """A logged value: ``Hex-STRING: 31 32`` -> "12", ``INTEGER: 4`` -> 4, ``OID: .1.3`` -> "1.3"."""
    if text == '""':
        return ""
    kind, _, rest = text.partition(": ")
    if kind == "Hex-STRING":
        return bytes.fromhex(rest.replace(" ", "")).decode("utf-8", "surrogateescape")
    if kind == "STRING":
        return rest.strip('"')
    if kind in ("INTEGER", "Gauge32", "Counter32", "Timeticks"):
        return int(rest.split()[0])
    if kind == "OID":
        return rest.removeprefix(".")
    if not rest and text.isdigit():  # -Ot timeticks print as a bare number
        return int(text)
    return text


def parse_log(text: str) -> list[LoggedTrap]:
    traps: list[LoggedTrap] = []
    header: tuple[str, str] | None = None
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("TRAP "):
            source, _, security = line[len("TRAP ") :].partition("|")
            header, lines = (source, security), []
        elif line == "END" and header is not None:
            varbinds = []
            for entry in lines:
                name, _, value = entry.partition(" = ")
                varbinds.append((name.removeprefix("."), _value(value.strip())))
            traps.append(LoggedTrap(header[0], header[1], varbinds))
            header = None
        elif header is not None:
            if line.startswith(".") or not lines:
                lines.append(line)
            else:  # Net-SNMP wraps long hex strings over several lines
                lines[-1] += " " + line.strip()
    return traps


@dataclass
class Snmptrapd:
    host: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def traps(self) -> list[LoggedTrap]:
        return parse_log(self.log_path.read_text(errors="replace")) if self.log_path.exists() else []

    def wait_for_traps(self, count: int = 1, timeout: float = 5.0) -> list[LoggedTrap]:
        """The first ``count`` logged notifications; AssertionError if fewer arrive in ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            traps = self.traps()
            if len(traps) >= count or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        assert len(traps) >= count, f"snmptrapd logged {len(traps)} notification(s), expected {count}"
        return traps[:count]


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _config(community: str | None, users: Sequence[TrapUser]) -> str:
    lines = []
    if community is not None:
        lines.append(f"authCommunity log {community}")
    for user in users:
        keys = f"{user.auth_protocol} {user.auth_password} {user.priv_protocol} {user.priv_password}"
        lines.append(f"createUser -e 0x{user.engine_id.hex()} {user.name} {keys}")  # traps
        lines.append(f"createUser {user.name} {keys}")  # informs (snmptrapd's own engine)
        lines.append(f"authUser log {user.name} priv")
    return "\n".join(lines) + "\n"


def _started(log_path: Path, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        if log_path.exists() and "NET-SNMP version" in log_path.read_text(errors="replace"):
            return True
        time.sleep(0.05)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@contextmanager
def snmptrapd(
    workdir: Path, *, community: str | None = None, users: Sequence[TrapUser] = ()
) -> Iterator[Snmptrapd]:
    """Run snmptrapd on a free UDP port of 127.0.0.1 until the block ends."""
    binary = require_snmptrapd()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "snmptrapd.conf"
    conf.write_text(_config(community, users))
    conf.chmod(0o600)
    env = {**os.environ, "SNMP_PERSISTENT_DIR": str(workdir / "persist"), "MIBS": ""}
    for _attempt in range(3):
        port = _free_udp_port()
        log_path = workdir / f"snmptrapd-{port}.log"
        command = [binary, "-f", "-C", "-c", str(conf), "-Lf", str(log_path), "-On", "-Ox", "-Ot"]
        command += ["-m", "", "-M", str(workdir / "no-mibs"), "-F", FORMAT, f"udp:{HOST}:{port}"]
        with (workdir / "stderr.log").open("ab") as stderr:
            process = subprocess.Popen(command, stdout=stderr, stderr=stderr, env=env)
        if _started(log_path, process):
            try:
                yield Snmptrapd(HOST, port, process, log_path)
            finally:
                _stop(process)
            return
        _stop(process)
    raise RuntimeError(f"snmptrapd did not start: {(workdir / 'stderr.log').read_text(errors='replace')}")
