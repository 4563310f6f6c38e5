"""`check-config` as an operator runs it: the metrics listener ($PORT included), --json, refusals
(exit 2) for what is wrong everywhere and warnings for what is wrong for a deployment."""

from __future__ import annotations

import json
import re
from pathlib import Path

from delivery_worker.check_config import EXAMPLE_UNIT_TIMEOUT_STOP_SEC, SHUTDOWN_MARGIN_SECONDS
from tests.test_config import run_cli
from tests.test_lease_check import closed_port_dsn

UNIT = Path(__file__).resolve().parents[1] / "config" / "delivery-worker.service"


def check(*args: str, **env: str):
    return run_cli("--config", "/dev/null", "check-config", *args, env=env)


def test_defaults_pass_without_a_warning_and_say_there_is_no_listener():
    result = check()
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[:2] == [
        "config OK (/dev/null)",
        "metrics listener: none ([metrics] port = 0 and no $PORT)",
    ]


def test_the_port_variable_listener_is_shown_as_run_will_bind_it():
    text = check(PORT="5000")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[1] == (
        "metrics listener: 0.0.0.0:5000 (from $PORT): /metrics /livez /readyz /healthz"
    )
    report = json.loads(check("--json", PORT="5000").stdout)
    assert report["ok"] is True
    assert report["metrics_listener"] == {
        "host": "0.0.0.0",
        "port": 5000,
        "from": "$PORT",
        "paths": ["/metrics", "/livez", "/readyz", "/healthz"],
    }
    assert report["warnings"] == []
    assert report["settings"]["worker"]["threads"] == 16


def test_json_masks_the_password_like_the_text_output():
    result = check("--json", DATABASE_URL="postgresql://app:hunter2@db/x")
    assert result.returncode == 0
    assert "hunter2" not in result.stdout
    assert json.loads(result.stdout)["settings"]["database"]["dsn"] == "postgresql://app:***@db/x"


def test_a_configured_port_wins_over_the_port_variable_with_a_warning():
    result = check("--json", PORT="5000", DELIVERY_WORKER_METRICS_PORT="9464")
    assert result.returncode == 0
    report = json.loads(result.stdout)
    assert (
        report["metrics_listener"]["port"] == 9464 and report["metrics_listener"]["from"] == "[metrics] port"
    )
    assert result.stderr.startswith(
        "delivery-worker: warning: $PORT=5000 is set but [metrics] port = 9464 wins"
    )
    assert len(report["warnings"]) == 1


def test_a_port_variable_that_is_not_a_port_is_refused():
    result = check(PORT="web")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "delivery-worker: config error: $PORT: expected a port number, got 'web'"
    ]


def test_a_shutdown_timeout_the_example_unit_would_cut_short_is_a_warning_naming_both_limits():
    result = check(DELIVERY_WORKER_WORKER_SHUTDOWN_TIMEOUT="100")
    assert result.returncode == 0  # a longer TimeoutStopSec or grace period makes it right
    [line] = result.stderr.splitlines()
    assert line.startswith("delivery-worker: warning: [worker] shutdown_timeout = 100: ")
    assert "TimeoutStopSec=40" in line
    assert "lower shutdown_timeout to at most 35" in line and "to 105" in line


def test_the_largest_shutdown_timeout_the_example_unit_allows_passes():
    largest = EXAMPLE_UNIT_TIMEOUT_STOP_SEC - SHUTDOWN_MARGIN_SECONDS
    assert check(DELIVERY_WORKER_WORKER_SHUTDOWN_TIMEOUT=f"{largest:g}").stderr == ""
    assert check(DELIVERY_WORKER_WORKER_SHUTDOWN_TIMEOUT=f"{largest + 1:g}").stderr != ""


def test_on_a_port_platform_the_limit_is_its_30_seconds():
    report = json.loads(check("--json", PORT="5000", DELIVERY_WORKER_WORKER_SHUTDOWN_TIMEOUT="28").stdout)
    [warning] = report["warnings"]
    assert "(Heroku) sends SIGKILL after 30 s" in warning and "at most 25" in warning


def test_the_margin_is_checked_against_the_shipped_unit():
    [value] = re.findall(r"^TimeoutStopSec=(\d+)$", UNIT.read_text(), flags=re.M)
    assert float(value) == EXAMPLE_UNIT_TIMEOUT_STOP_SEC


def test_an_allowed_network_with_host_bits_is_refused_suggesting_the_network():
    for command in ("check-config", "run"):
        result = run_cli(
            "--config",
            "/dev/null",
            command,
            env={"DELIVERY_WORKER_HTTP_ALLOWED_NETWORKS": "10.0.0.1/8", "DATABASE_URL": closed_port_dsn()},
        )
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.splitlines() == [
            "delivery-worker: config error: [http] allowed_networks: 10.0.0.1/8 has host bits set: "
            "write 10.0.0.0/8 for the network, or 10.0.0.1/32 for the one host "
            "(from $DELIVERY_WORKER_HTTP_ALLOWED_NETWORKS)"
        ]


def test_json_reports_a_refusal_on_stdout_too():
    result = check("--json", DELIVERY_WORKER_HTTP_ALLOWED_NETWORKS="192.168.1.1/24")
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert report["ok"] is False and "192.168.1.0/24" in report["error"]
    assert len(result.stderr.splitlines()) == 1


def test_run_logs_the_same_warnings_at_start():
    result = run_cli(
        "--config",
        "/dev/null",
        "run",
        "--drain",
        env={"DATABASE_URL": closed_port_dsn(), "DELIVERY_WORKER_WORKER_SHUTDOWN_TIMEOUT": "100"},
    )
    assert result.returncode == 1  # the database is unreachable: --drain does not wait
    warnings = [json.loads(line) for line in result.stdout.splitlines() if '"config.warning"' in line]
    assert len(warnings) == 1 and "shutdown_timeout = 100" in warnings[0]["warning"]
