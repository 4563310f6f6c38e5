"""`delivery-worker run` in a child process serving /metrics on a port of 127.0.0.1, for the tests
that scrape it with a real Prometheus (tests/test_prometheus_*.py).

    worker = MetricsWorker.start(dsn, free_port(), tmp_path / "worker.log")
    ...
    worker.stop()  # SIGTERM, as systemd stops it

Queue gauges are sampled every second. Its JSON log lines go to a file (a pipe nobody reads would
block the worker), quoted by the assertions that fail.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.processes import wait_until, worker_env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class MetricsWorker:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def instance(self) -> str:
        """The ``instance`` label Prometheus gives this worker's series."""
        return f"127.0.0.1:{self.port}"

    @classmethod
    def start(cls, dsn: str, port: int, log_path: Path) -> MetricsWorker:
        env = worker_env(
            dsn, metrics_port=str(port), metrics_host="127.0.0.1", metrics_queue_sample_seconds="1"
        )
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "delivery_worker", "--config", "/dev/null", "run"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        worker = cls(process, port, log_path)
        try:
            assert wait_until(worker.serves_metrics, timeout=30), f"no /metrics: {worker.log()[-3000:]}"
        except BaseException:
            worker.stop()
            raise
        return worker

    def serves_metrics(self) -> bool:
        assert self.process.poll() is None, f"worker exited: {self.log()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://{self.instance}/metrics", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
