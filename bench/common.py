"""What every benchmark shares: a scratch database, the fast HTTP sink, the worker as a child
process with its CPU and peak RSS, percentiles, tables, and summaries of py-spy profiles.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

from delivery_worker.db import connect
from delivery_worker.migrate import apply_migrations

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "bench" / "profiles"
ADMIN_DSN = os.environ.get("BENCH_ADMIN_DSN", "postgresql://127.0.0.1:5432/postgres")
LOOPBACK_ONLY = "127.0.0.0/8"
TENANT = "bench"

# The producer's payload shape (see tests/support.py), built in SQL so that large N stays fast.
PAYLOAD_SQL = """jsonb_build_object(
    'alert_id', g, 'tenant_id', 'bench', 'device_id', 'sensor-' || (g %% 100), 'site_id', 'plant-3',
    'alert_type', 'THRESHOLD', 'severity', 4, 'message', 'Temperature 92.5C above 85C',
    'details', jsonb_build_object('metric', 'temp_c', 'value', 92.5),
    'triggered_at', '2026-11-29T03:00:00Z', 'event_type', 'OPEN', 'channel_type', 'webhook')"""


# --- the scratch database ------------------------------------------------------------------------


def _admin(statement: str) -> None:
    conn = psycopg2.connect(ADMIN_DSN)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


@contextmanager
def scratch_database(name: str) -> Iterator[str]:
    """A freshly created and migrated database ``dw_bench_<name>_<pid>``, dropped on the way out
    (the pid keeps two runs of one benchmark from dropping each other's database)."""
    dbname = f"dw_bench_{name}_{os.getpid()}"
    _admin(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    _admin(f'CREATE DATABASE "{dbname}"')
    dsn = psycopg2.extensions.make_dsn(ADMIN_DSN, dbname=dbname)
    try:
        conn = connect(dsn)
        try:
            apply_migrations(conn)
        finally:
            conn.close()
        yield dsn
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def execute(dsn: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement, params)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


def insert_webhook_channel(dsn: str, url: str) -> int:
    rows = execute(
        dsn,
        "INSERT INTO notification_channels (tenant_id, name, channel_type, config)"
        " VALUES (%s, 'bench sink', 'webhook', %s) RETURNING channel_id",
        (TENANT, json.dumps({"url": url})),
    )
    return int(rows[0][0])


def insert_jobs_sql(channel_id: int, first: int, count: int) -> tuple[str, tuple[Any, ...]]:
    """One INSERT of ``count`` jobs (alert ids first..first+count-1) returning their ids."""
    return (
        "INSERT INTO notification_jobs (tenant_id, alert_id, channel_id, payload_json)"
        f" SELECT %s, g, %s, {PAYLOAD_SQL} FROM generate_series(%s::bigint, %s::bigint) AS g"
        " RETURNING job_id",
        (TENANT, channel_id, first, first + count - 1),
    )


def insert_jobs(dsn: str, channel_id: int, count: int, *, first: int = 1) -> list[int]:
    statement, params = insert_jobs_sql(channel_id, first, count)
    ids = [int(job_id) for (job_id,) in execute(dsn, statement, params)]
    execute(dsn, "ANALYZE notification_jobs")
    return ids


def job_key(job_id: int) -> str:
    return f"notification_jobs:{job_id}"


# --- the sink ------------------------------------------------------------------------------------


class Sink:
    """The asyncio sink (bench/sink.py) in a child process, and a small client for its controls."""

    def __init__(self, *, hold_seconds: float = 60.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.sink", "--hold-seconds", str(hold_seconds)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        if len(line) != 2 or line[0] != "PORT":
            self.close()
            raise RuntimeError(f"the sink did not start (said {line!r})")
        self.port = int(line[1])
        self._conn: http.client.HTTPConnection | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _get(self, target: str, timeout: float = 10.0) -> Any:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout + 5)
            self._conn.timeout = timeout + 5
            try:
                self._conn.request("GET", target)
                response = self._conn.getresponse()
                return json.loads(response.read())
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def stats(self) -> dict[str, float]:
        return dict(self._get("/__stats"))

    def arrivals(self) -> dict[str, float]:
        return dict(self._get("/__arrivals", timeout=60))

    def reset(self) -> None:
        self._get("/__reset")

    def wait_count(self, count: int, timeout: float) -> int:
        """Block until ``count`` distinct keys arrived or ``timeout`` passed; return the count."""
        return int(self._get(f"/__wait?count={count}&timeout={timeout}", timeout)["count"])

    def wait_key(self, key: str, timeout: float) -> float | None:
        """The arrival time (time.monotonic()) of ``key``, or None if it did not arrive in time."""
        arrival = self._get(f"/__wait?key={key}&timeout={timeout}", timeout)["t"]
        return None if arrival is None else float(arrival)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self.process.stdin is not None:
            self.process.stdin.close()  # the sink exits when its stdin closes
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# --- the worker as a child process ---------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """CPU and memory of one process (a worker child, or this process over a stretch)."""

    wall_s: float
    cpu_s: float  # user + system
    max_rss_mb: float | None


def worker_env(dsn: str, settings: dict[str, str]) -> dict[str, str]:
    """This environment without any worker settings of its own, plus DATABASE_URL and ``settings``
    as DELIVERY_WORKER_<SECTION>_<KEY> (e.g. {"worker_threads": "32"})."""
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DELIVERY_WORKER_", "WORKER_", "WATCHDOG_"))
        and key not in ("DATABASE_URL", "PORT", "NOTIFY_SOCKET")
    }
    env = {**inherited, "DATABASE_URL": dsn, "DELIVERY_WORKER_HTTP_ALLOWED_NETWORKS": LOOPBACK_ONLY}
    env.update({f"DELIVERY_WORKER_{key.upper()}": value for key, value in settings.items()})
    return env


class WorkerProcess:
    """``python -m delivery_worker --config /dev/null run [--drain]``, optionally under py-spy."""

    def __init__(
        self,
        dsn: str,
        settings: dict[str, str],
        *,
        drain: bool,
        profile: Path | None = None,
        profile_args: Sequence[str] = (),
    ) -> None:
        command = [sys.executable, "-m", "delivery_worker", "--config", "/dev/null", "run"]
        if drain:
            command.append("--drain")
        if profile is not None:
            py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
            if py_spy is None:
                raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
            command = [py_spy, "record", "--format", "raw", "-o", str(profile), *profile_args, "--", *command]
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed once the child is reaped
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command, cwd=REPO, env=worker_env(dsn, settings), stdout=subprocess.DEVNULL, stderr=self.stderr
        )
        self.usage: Usage | None = None
        self.peak_rss_mb: float | None = None

    def _sample_peak_rss(self) -> None:
        """VmHWM of the running child (its peak resident set since the exec), in MB."""
        if time.monotonic() - self.started < 0.5:
            return  # it may not have exec'd yet: the figure would be this process's
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_rss_mb = max(self.peak_rss_mb or 0.0, int(line.split()[1]) / 1024)

    def wait(self, timeout: float) -> Usage:
        """Wait for the exit (SIGTERM, then SIGKILL, once ``timeout`` has passed); its rusage."""
        return wait_all([self], timeout)[0]

    def stop(self, grace: float = 30.0) -> Usage:
        """SIGTERM (finish in-flight jobs and exit), SIGKILL after ``grace``; its rusage."""
        if self.usage is not None:
            return self.usage
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while not self._reap():
            if time.monotonic() > deadline:
                self.process.kill()
                deadline = math.inf
            time.sleep(0.02)
        assert self.usage is not None
        return self.usage

    def _reap(self) -> bool:
        if self.usage is not None:
            return True
        self._sample_peak_rss()
        pid, status, rusage = os.wait4(self.process.pid, os.WNOHANG)
        if pid == 0:
            return False
        wall = time.monotonic() - self.started
        self.process.returncode = os.waitstatus_to_exitcode(status)
        # ru_maxrss would also count the image forked from this process before the exec.
        peak = self.peak_rss_mb or rusage.ru_maxrss / 1024
        self.usage = Usage(wall, rusage.ru_utime + rusage.ru_stime, peak)
        if self.process.returncode not in (0, -signal.SIGTERM):
            self.stderr.seek(0)
            tail = self.stderr.read()[-2000:]
            print(f"worker exited with {self.process.returncode}:\n{tail}", file=sys.stderr)
        self.stderr.close()
        return True


def wait_all(workers: Sequence[WorkerProcess], timeout: float) -> list[Usage]:
    """Wait for every worker to exit, sampling each one's peak RSS meanwhile; stop any still
    running after ``timeout``. Never Popen.poll()/wait(): they would reap a child with its rusage."""
    deadline = time.monotonic() + timeout
    while not all([worker._reap() for worker in workers]) and time.monotonic() < deadline:
        time.sleep(0.02)
    usages = []
    for worker in workers:
        if worker.usage is None:
            print(f"worker still running after {timeout:.0f} s: stopping it", file=sys.stderr)
            worker.stop()
        assert worker.usage is not None
        usages.append(worker.usage)
    return usages


# --- measuring this process ----------------------------------------------------------------------


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """VmHWM of this process (the peak resident set), in MB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- figures -------------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), linear between closest ranks; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.nan


def span_rate(arrivals: Sequence[float]) -> float:
    """Arrivals per second between the first and the last arrival."""
    if len(arrivals) < 2:
        return math.nan
    return (len(arrivals) - 1) / (max(arrivals) - min(arrivals))


def fmt(value: float | int | str | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, title: str = "") -> None:
    """A plain aligned table: text columns left, figures right."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True)):
            out.append(str(cell).ljust(width) if i == 0 else str(cell).rjust(width))
        return "  ".join(out).rstrip()

    if title:
        print(f"\n{title}")
    print(line(headers))
    print("  ".join("-" * width for width in widths))
    for row in rows:
        print(line(row))


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small N: seconds, for CI")
    return parser


def machine() -> str:
    return f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"


# --- py-spy profiles -----------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short_frame(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "/lib/python3.11/", str(REPO) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['func']} ({path})"


def _thread_kind(frames: Sequence[str]) -> str:
    text = ";".join(frames)
    if "Poller.run" in text or "run (delivery_worker/poller.py)" in text:
        return "poll loop"
    if "listener.py" in text:
        return "listener"
    if "concurrent/futures/thread.py" in text:
        return "delivery threads"
    if "_run_module_as_main" in text:
        return "main thread: start-up, shutdown"
    if "Thread._bootstrap" in text:
        return "other threads"
    return "unattributed (stack cut short by --nonblocking sampling)"


def summarize_profile(raw_path: Path, *, title: str, top: int = 30, only: str | None = None) -> str:
    """Self and inclusive time per function from a py-spy ``--format raw`` file, as text;
    ``only`` keeps the stacks of one kind of thread (e.g. "poll loop")."""
    self_samples: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    by_kind: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw_path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short_frame(frame) for frame in stack.split(";") if not frame.startswith("process ")]
        frames = [frame for frame in frames if not frame.startswith("thread (")]
        if not frames or (only is not None and _thread_kind(frames) != only):
            continue
        total += count
        self_samples[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
        by_kind[_thread_kind(frames)] += count
    if not total:
        return f"{title}\n(no samples)\n"

    def pct(n: int) -> str:
        return f"{100 * n / total:5.1f}%"

    out = [title, f"samples: {total}", "", "by thread:"]
    out += [f"  {pct(n)}  {kind}" for kind, n in by_kind.most_common()]
    out += ["", f"top {top} by self time (the frame that was running):"]
    out += [f"  {pct(n)}  {frame}" for frame, n in self_samples.most_common(top)]
    out += ["", f"top {top} by inclusive time (the frame or anything it called):"]
    out += [f"  {pct(n)}  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(out) + "\n"
