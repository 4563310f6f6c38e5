"""Running operator commands as an operator would: `delivery_worker.cli.main`, configured from the
environment only (`--config /dev/null`), stdout and stderr captured. Plus row helpers they share."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from delivery_worker.cli import main
from tests.rows import execute


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Cli = Callable[..., Run]


@pytest.fixture
def cli(database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    for name in list(os.environ):
        if name.startswith("DELIVERY_WORKER_") or name.startswith("WORKER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", database)
    monkeypatch.setenv("DELIVERY_WORKER_HTTP_ALLOWED_NETWORKS", "127.0.0.0/8")
    monkeypatch.setenv("DELIVERY_WORKER_WORKER_QUICK_RETRIES", "0")

    def run(*argv: str) -> Run:
        capsys.readouterr()  # drop what an in-process worker or an earlier step wrote
        code = main(["--config", "/dev/null", *argv])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


def set_job(
    dsn: str, table: str, job_id: int, status: str, *, age: str = "0 seconds", **columns: Any
) -> None:
    assignments = "".join(f", {name} = %({name})s" for name in columns)
    execute(
        dsn,
        f"UPDATE {table} SET status = %(status)s, updated_at = now() - %(age)s::interval{assignments}"
        " WHERE job_id = %(job_id)s",
        {"status": status, "age": age, "job_id": job_id, **columns},
    )


def count(dsn: str, statement: str, params: Any = None) -> int:
    return int(execute(dsn, statement, params)[0]["n"])


def statuses(dsn: str, table: str) -> dict[int, tuple[str, int]]:
    rows = execute(dsn, f"SELECT job_id, status, attempts FROM {table}")
    return {row["job_id"]: (row["status"], row["attempts"]) for row in rows}
