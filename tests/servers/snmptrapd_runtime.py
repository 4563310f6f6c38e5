"""Net-SNMP's real ``snmptrapd`` on 127.0.0.1, logging every trap it accepts as one line.

    with snmptrapd(community="public", users=[TrapdUser(...)]) as trapd:
        ...send to 127.0.0.1:trapd.port...
        trapd.wait_for("SNMP v3, user smoke", ".1.3.6.1.4.1.99999.0.1")

A v3 user is created for the sender's engine ID (traps are secured with it) and accepted only at
authPriv (``authUser log <name> priv``), so a line for that user proves an encrypted trap decoded.
A different receiver than the tests' pysnmp one: a reference implementation nobody here wrote.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
LINE_FORMAT = "TRAP %P\t%v\n"  # "TRAP TRAP2, SNMP v3, user smoke, context \t<varbinds>"


@dataclass(frozen=True)
class TrapdUser:
    name: str
    engine_id: str  # the sender's snmpEngineID, "0x..."
    auth_password: str
    priv_password: str
    auth_protocol: str = "SHA"
    priv_protocol: str = "AES"


@dataclass
class Snmptrapd:
    port: int
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def traps(self) -> list[str]:
        with self.arrived:
            return [line for line in self.lines if line.startswith("TRAP ")]

    def wait_for(self, *parts: str, timeout: float = 15.0) -> str:
        """The first trap line holding every one of ``parts``; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                for line in self.lines:
                    if line.startswith("TRAP ") and all(part in line for part in parts):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise AssertionError(f"snmptrapd logged no trap with {parts}; it logged: {self.lines}")
                self.arrived.wait(min(left, 0.2))


def executable() -> str | None:
    """snmptrapd's path; /usr/sbin is often missing from a non-root PATH."""
    return shutil.which("snmptrapd") or shutil.which("snmptrapd", path="/usr/sbin:/usr/local/sbin")


def available() -> bool:
    return executable() is not None


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextmanager
def snmptrapd(
    state_dir: Path, *, community: str | None = None, users: Sequence[TrapdUser] = ()
) -> Iterator[Snmptrapd]:
    """Run snmptrapd in the foreground with only the given config (``-C``: no system files)."""
    program = executable()
    assert program, "snmptrapd is not installed (apt-get install snmptrapd; .ci/ensure-tools does it)"
    lines = []
    if community is not None:
        lines.append(f"authCommunity log {community}")
    for user in users:
        lines.append(
            f"createUser -e {user.engine_id} {user.name} {user.auth_protocol} {user.auth_password} "
            f"{user.priv_protocol} {user.priv_password}"
        )
        lines.append(f"authUser log {user.name} priv")
    conf = state_dir / "snmptrapd.conf"
    conf.write_text("\n".join(lines) + "\n")
    port = _free_udp_port()
    process = subprocess.Popen(
        [
            program,
            "-f",  # foreground
            "-Lo",  # log to stdout
            "-C",
            "-c",
            str(conf),
            f"--persistentDir={state_dir / 'persist'}",
            "-m",
            "",  # no MIBs: numeric OIDs only
            "-M",
            "/dev/null",
            "-On",
            "-F",
            LINE_FORMAT,
            f"udp:{HOST}:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    trapd = Snmptrapd(port=port, process=process)

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with trapd.arrived:
                trapd.lines.append(line.rstrip("\n"))
                trapd.arrived.notify_all()

    reader = threading.Thread(target=read, name="snmptrapd-reader", daemon=True)
    reader.start()
    try:
        with trapd.arrived:  # it logs its version once it listens
            ready = trapd.arrived.wait_for(
                lambda: (
                    any(line.startswith("NET-SNMP version") for line in trapd.lines)
                    or process.poll() is not None
                ),
                timeout=15,
            )
        assert ready and process.poll() is None, f"snmptrapd did not start: {trapd.lines}"
        yield trapd
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        reader.join(timeout=5)
