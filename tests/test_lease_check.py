"""`check-config` and `run` refuse a lease shorter than the longest possible attempt."""

from __future__ import annotations

import socket

from delivery_worker.lease_check import LEASE_MARGIN_SECONDS, lease_problem
from tests.support import make_settings
from tests.test_config import run_cli


def closed_port_dsn() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"postgresql://root@127.0.0.1:{probe.getsockname()[1]}/nothing"


def test_defaults_pass_and_the_margin_is_enforced():
    assert lease_problem(make_settings().worker) is None  # 300 s lease, 60 s attempts
    exact = make_settings(worker={"job_timeout_seconds": 60.0, "lease_seconds": 60.0 + LEASE_MARGIN_SECONDS})
    assert lease_problem(exact.worker) is None
    short = make_settings(worker={"job_timeout_seconds": 60.0, "lease_seconds": 61.0})
    assert lease_problem(short.worker) == (
        "[worker] lease_seconds: must be >= job_timeout_seconds + 2 s = 62, got 61 (a job still being "
        "sent would be claimed again by another worker and sent twice)"
    )


def test_check_config_and_run_refuse_a_lease_shorter_than_an_attempt_with_one_line():
    env = {
        "DATABASE_URL": closed_port_dsn(),
        "DELIVERY_WORKER_WORKER_JOB_TIMEOUT_SECONDS": "120",
        "DELIVERY_WORKER_WORKER_LEASE_SECONDS": "100",
    }
    for command in ("check-config", "run"):
        result = run_cli("--config", "/dev/null", command, env=env)
        assert result.returncode == 2, (command, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            "delivery-worker: config error: [worker] lease_seconds"
        )
        assert "122" in lines[0]


def test_a_long_attempt_with_a_long_enough_lease_is_accepted():
    env = {
        "DELIVERY_WORKER_WORKER_JOB_TIMEOUT_SECONDS": "600",
        "DELIVERY_WORKER_WORKER_LEASE_SECONDS": "630",
    }
    result = run_cli("--config", "/dev/null", "check-config", env=env)
    assert result.returncode == 0, result.stderr
