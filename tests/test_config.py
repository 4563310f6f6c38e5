"""Config parsing: defaults, file, legacy and general environment overrides, and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from delivery_worker.config import ConfigError, load_settings, redact_dsn

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "worker.ini"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "worker.ini"
    path.write_text(text)
    return str(path)


def test_example_file_is_valid_and_matches_defaults():
    from_file = load_settings(str(EXAMPLE), environ={})
    defaults = load_settings("/dev/null", environ={})
    assert from_file.worker == defaults.worker
    assert from_file.http == defaults.http
    assert from_file.pagerduty.events_url == "https://events.pagerduty.com/v2/enqueue"


def test_example_file_documents_every_key():
    from delivery_worker.config import SCHEMA

    text = EXAMPLE.read_text()
    for section, keys in SCHEMA.items():
        assert f"[{section}]" in text
        for key in keys:
            assert f"\n{key} =" in text, f"[{section}] {key} is not documented in config/worker.ini"


def test_file_values_and_environment_precedence(tmp_path):
    path = write(
        tmp_path, "[worker]\nthreads = 4\nmax_attempts = 9\n[database]\ndsn = postgresql://file/db\n"
    )
    env = {
        "DATABASE_URL": "postgresql://env/db",
        "WORKER_MAX_ATTEMPTS": "7",
        "WORKER_BACKOFF_BASE_SECONDS": "0",
        "DELIVERY_WORKER_WORKER_THREADS": "12",
        "DELIVERY_WORKER_HTTP_READ_TIMEOUT": "2.5",
        "DELIVERY_WORKER_RATE_LIMITS_SLACK": "0.5",
        "DELIVERY_WORKER_CIRCUIT_BREAKER_FAILURE_THRESHOLD": "9",
    }
    settings = load_settings(path, environ=env)
    assert settings.database.dsn == "postgresql://env/db"
    assert settings.database.migrate_dsn == "postgresql://env/db"
    assert settings.worker.max_attempts == 7
    assert settings.worker.backoff_base_seconds == 0
    assert settings.worker.threads == 12
    assert settings.http.read_timeout == 2.5
    assert settings.rate_limits.slack == 0.5
    assert settings.circuit_breaker.failure_threshold == 9


def test_general_variable_beats_legacy_variable():
    env = {"WORKER_MAX_ATTEMPTS": "7", "DELIVERY_WORKER_WORKER_MAX_ATTEMPTS": "3"}
    assert load_settings("/dev/null", environ=env).worker.max_attempts == 3


def test_config_path_from_environment(tmp_path):
    path = write(tmp_path, "[worker]\nthreads = 3\n")
    assert load_settings(None, environ={"DELIVERY_WORKER_CONFIG": path}).worker.threads == 3


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[worker]\nthreads = many\n", {}, "[worker] threads: expected an integer, got 'many'"),
        ("[worker]\nthreads = 0\n", {}, "[worker] threads: must be between 1 and 512, got 0"),
        ("[worker]\nthredas = 4\n", {}, "[worker] thredas: unknown key"),
        ("[workers]\nthreads = 4\n", {}, "unknown section [workers]"),
        ("[http]\nread_timeout = -1\n", {}, "[http] read_timeout: must be > 0, got -1"),
        ("[logging]\nlevel = LOUD\n", {}, "[logging] level: expected one of"),
        ("[pagerduty]\nevents_url = ftp://x\n", {}, "[pagerduty] events_url: expected an http(s) URL"),
        ("threads = 4\n", {}, "cannot parse: File contains no section headers."),
        ("", {"WORKER_MAX_ATTEMPTS": "lots"}, "[worker] max_attempts: expected an integer, got 'lots'"),
        (
            "",
            {"DELIVERY_WORKER_HTTP_TIMEOUT": "3"},
            "$DELIVERY_WORKER_HTTP_TIMEOUT: [http] timeout: unknown key",
        ),
        (
            "[worker]\nbackoff_base_seconds = 100\nbackoff_max_seconds = 10\n",
            {},
            "[worker] backoff_max_seconds: must be >= backoff_base_seconds",
        ),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, env, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ=env)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_zero_backoff_base_is_valid():
    assert (
        load_settings("/dev/null", environ={"WORKER_BACKOFF_BASE_SECONDS": "0"}).worker.backoff_base_seconds
        == 0
    )


def test_named_config_file_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(str(tmp_path / "missing.ini"), environ={})


def test_dsn_password_is_redacted():
    assert redact_dsn("postgresql://app:hunter2@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert redact_dsn("host=db password=hunter2 user=app") == "host=db password=*** user=app"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "delivery_worker", *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        check=False,
    )


def test_check_config_rejects_bad_file_with_one_line(tmp_path):
    path = write(tmp_path, "[worker]\nthreads = many\n")
    result = run_cli("--config", path, "check-config")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"delivery-worker: config error: [worker] threads: expected an integer, got 'many' (from {path})"
    ]


def test_check_config_accepts_good_file_and_masks_password(tmp_path):
    path = write(tmp_path, "[database]\ndsn = postgresql://app:hunter2@db/x\n")
    result = run_cli("--config", path, "check-config")
    assert result.returncode == 0
    assert result.stdout.startswith("config OK")
    assert "hunter2" not in result.stdout and "***" in result.stdout


@pytest.mark.parametrize("command", [[], ["migrate"], ["run"], ["check-config"]])
def test_every_command_has_help(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0
    assert "usage: delivery-worker" in result.stdout
