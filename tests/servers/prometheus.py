"""The real Prometheus server (Debian's ``prometheus`` package) on 127.0.0.1, for tests.

    with prometheus(tmp_path, targets=["127.0.0.1:9464"], rule_files=[RULES]) as prom:
        prom.wait_for_scrapes()
        prom.query('sum(increase(delivery_worker_jobs_failed_total[5m]))')  # the API's "result" list

It scrapes the targets every second as job ``delivery-worker`` (the job name the shipped rules
select on), keeps its TSDB in a temporary directory, and listens on an ephemeral port of 127.0.0.1.

``require_tool("prometheus")`` / ``require_tool("promtool")`` return the binary's path; when it is not
installed (``apt-get install prometheus``; ``.ci/ensure-tools`` does it) the test is skipped, unless
the environment variable ``CI`` is set (then it fails).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HOST = "127.0.0.1"
JOB = "delivery-worker"
START_TIMEOUT = 30.0


def tool_binary(name: str) -> str | None:
    return shutil.which(name) or next(
        (path for path in (f"/usr/bin/{name}", f"/usr/local/bin/{name}") if os.path.exists(path)), None
    )


def require_tool(name: str) -> str:
    """The binary's path; skips the test when it is missing, or fails it when env CI is set."""
    binary = tool_binary(name)
    if binary is None:
        message = f"{name} is not installed (apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _config(targets: Sequence[str], rule_files: Sequence[Path]) -> str:
    """prometheus.yml; JSON is YAML, so no YAML writer is needed."""
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": list(targets)}]}],
    }
    return json.dumps(config, indent=2)


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/PATH; the ``data`` member of a successful answer, else AssertionError."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{path} {params}: HTTP {exc.code}: {exc.read().decode()}") from exc
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query now: the result list (``[{"metric": {...}, "value": [ts, "1"]}, ...]``)."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: {data['resultType']}"
        return list(data["result"])

    def value(self, expr: str) -> float:
        """The value of an instant query that must return exactly one series."""
        return single_value(self.query(expr))

    def wait_for_scrapes(self, count: int = 3) -> None:
        """Until Prometheus holds ``count`` successful scrapes of job delivery-worker in its last minute."""
        self.wait_until(f'sum_over_time(up{{job="{JOB}"}}[1m]) >= {count}')

    def metric_names(self) -> set[str]:
        return set(self.api("label/__name__/values"))

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets")["activeTargets"])

    def wait_until(self, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll an instant query until it returns a non-empty result; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr} stayed empty for {timeout} s; log:\n{self.log()[-3000:]}")
            time.sleep(0.25)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def single_value(result: list[dict[str, Any]]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def _ready(url: str, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def prometheus(
    workdir: Path, *, targets: Sequence[str], rule_files: Sequence[Path] = ()
) -> Iterator[Prometheus]:
    """Run Prometheus scraping ``targets`` every second until the block ends."""
    binary = require_tool("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(_config(targets, rule_files))
    for _attempt in range(3):
        port = _free_port()
        log_path = workdir / f"prometheus-{port}.log"
        command = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / f'tsdb-{port}'}",
            f"--web.listen-address={HOST}:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ]
        with log_path.open("ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=log, cwd=workdir)
        url = f"http://{HOST}:{port}"
        if _ready(url, process):
            try:
                yield Prometheus(url, process, log_path)
            finally:
                _stop(process)
            return
        _stop(process)
    raise RuntimeError(f"prometheus did not start: {log_path.read_text(errors='replace')[-3000:]}")
