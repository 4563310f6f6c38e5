"""The shipped alerting rules: `promtool check rules` accepts them and `promtool test rules` passes.

config/prometheus-rules.test.yml holds the unit tests (each alert firing and not firing, labels and
annotations exactly). Skipped without promtool locally; under CI (env CI set) a missing promtool fails.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.servers.prometheus import require_tool

CONFIG = Path(__file__).resolve().parent.parent / "config"
RULES = CONFIG / "prometheus-rules.yml"
RULE_TESTS = CONFIG / "prometheus-rules.test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_check_rules_accepts_the_shipped_rules():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_of_every_alert_pass():
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test_and_a_runbook_section():
    """An alert added to the rules without a promtool test, or a runbook link to nowhere, fails."""
    rules = RULES.read_text()
    tests = RULE_TESTS.read_text()
    runbook = (CONFIG.parent / "docs" / "alerting.md").read_text().lower()
    lines = [line.strip() for line in rules.splitlines()]
    alerts = {line.split(":", 1)[1].strip() for line in lines if line.startswith("- alert:")}
    assert len(alerts) >= 10
    for alert in sorted(alerts):
        assert f"alertname: {alert}" in tests, f"{alert} has no promtool test"
        assert f"#{alert.lower()}" in rules, f"{alert} has no runbook_url"
        assert f"### {alert.lower()}" in runbook, f"docs/alerting.md has no section for {alert}"


def test_a_missing_promtool_skips_locally_and_fails_under_ci(monkeypatch):
    monkeypatch.setattr("tests.servers.prometheus.tool_binary", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install prometheus"):
        require_tool("promtool")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="promtool is not installed"):
        require_tool("promtool")


def test_log_events_the_runbook_names_are_ones_the_worker_logs():
    """The descriptions and runbook send on-call people to log lines: those lines must exist."""
    root = CONFIG.parent
    code = "\n".join(
        path.read_text() for path in [*root.glob("delivery_worker/**/*.py"), *root.glob("channels/**/*.py")]
    )
    text = RULES.read_text() + (root / "docs" / "alerting.md").read_text()
    prefixes = ("database", "metrics", "job", "jobs", "lease", "circuit", "task", "outcome", "shutdown")
    named = {name for name in re.findall(r"\b([a-z]+\.[a-z_]+)\b", text) if name.split(".")[0] in prefixes}
    named -= {"metrics.md"}
    assert {"database.unavailable", "metrics.queue_sample_failed", "circuit.opened", "job.overdue"} <= named
    assert sorted(name for name in named if f'"{name}"' not in code) == []
