"""The example unit never gives up, outlasts the worker's own shutdown, and is valid for systemd."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import make_settings

UNIT = Path(__file__).resolve().parent.parent / "config" / "delivery-worker.service"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return parser


def test_the_unit_restarts_forever_and_its_stop_timeout_covers_the_shutdown():
    service, section = unit()["Service"], unit()["Unit"]
    assert section["StartLimitIntervalSec"] == "0"
    assert service["Restart"] == "always" and float(service["RestartSec"]) > 0
    shutdown = make_settings().worker.shutdown_timeout
    assert float(service["TimeoutStopSec"]) >= shutdown + 10  # the last outcomes are written after it
    assert int(service["LimitNOFILE"]) >= 1024
    assert service["StateDirectory"] == "delivery-worker"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    # verify checks that ExecStart exists: point it at a binary that does, keep everything else.
    text = UNIT.read_text(encoding="utf-8")
    lines = ["ExecStart=/bin/true" if line.startswith("ExecStart=") else line for line in text.splitlines()]
    copy = tmp_path / "delivery-worker.service"
    copy.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0 and "Unknown key" not in result.stderr, result.stderr
