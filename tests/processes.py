"""Running the real `delivery-worker` command in child processes, as an operator would."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

# Every child worker's spool directory lives under one directory removed when the test run ends.
STATE_ROOT = tempfile.TemporaryDirectory(prefix="dw-state-")


def worker_env(dsn: str, **settings: str) -> dict[str, str]:
    """Environment for a child worker: DATABASE_URL plus DELIVERY_WORKER_<SECTION>_<KEY> overrides.

    The spool goes to a fresh temporary directory unless ``worker_state_dir`` is given: the default
    (./state) would leave spool files of dropped test databases in the checkout, replayed by every run.
    """
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DATABASE_URL": dsn,
        "DELIVERY_WORKER_WORKER_POLL_INTERVAL": "0.05",
        "DELIVERY_WORKER_WORKER_BACKOFF_BASE_SECONDS": "0",
        "DELIVERY_WORKER_WORKER_QUICK_RETRIES": "0",
        "DELIVERY_WORKER_HTTP_ALLOWED_NETWORKS": "127.0.0.0/8 ::1/128",
        "DELIVERY_WORKER_WORKER_STATE_DIR": tempfile.mkdtemp(dir=STATE_ROOT.name),
    }
    env.update({f"DELIVERY_WORKER_{key.upper()}": value for key, value in settings.items()})
    return env


STARTED: list[subprocess.Popen[str]] = []  # killed after each test by the conftest fixture


def kill_leftover_workers() -> None:
    """Kill any worker a test started and left running (e.g. after a failed assertion)."""
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


def start_worker(dsn: str, *args: str, **settings: str) -> subprocess.Popen[str]:
    """`delivery-worker --config /dev/null run ARGS`; settings like worker_threads="4"."""
    process = subprocess.Popen(
        [sys.executable, "-m", "delivery_worker", "--config", "/dev/null", "run", *args],
        env=worker_env(dsn, **settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    STARTED.append(process)
    return process


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
