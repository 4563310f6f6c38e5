"""A production install works: the real worker, run from a venv built from requirements.txt alone,
delivers through every channel into real local receivers (SNMPv3 authPriv included).

`make test` builds that venv (.venv-runtime: `pip install -r requirements.txt` and the wheel of
`make wheel`, not editable, as docs/operations.md installs production) and names it in
TEST_RUNTIME_VENV. Without it the test is skipped
locally and fails under CI, so a runtime dependency that only the dev tools pull in fails CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.processes import worker_env
from tests.rows import execute, insert_channel, insert_notification_job
from tests.servers.http import RecordingServer
from tests.servers.mqtt_subscriber import Subscriber
from tests.servers.smtp import smtp_config, smtp_server
from tests.servers.snmptrapd import LoggedTrap, TrapUser, require_snmptrapd, snmptrapd
from tests.support import SAMPLE_PAYLOAD

RUNTIME_VENV_ENV = "TEST_RUNTIME_VENV"
DEV_ONLY = ("pytest", "trustme", "aiosmtpd", "responses", "standardwebhooks")
V3_USER = TrapUser(
    name="smoke",
    engine_id=bytes.fromhex("80001f8804736d6f6b65"),
    auth_password="smoke-auth-pass",
    priv_password="smoke-priv-pass",
)
TRAP_OPEN = "1.3.6.1.4.1.99999.0.1"
PULSE_ALERT_ID = "1.3.6.1.4.1.99999.1.1.0"

# Every runtime module, imported by the runtime venv's interpreter: a missing import fails here by name.
IMPORT_EVERYTHING = """
import importlib, pkgutil, sys
import channels, delivery_worker
names = []
for package in (channels, delivery_worker):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
            names.append(module.name)
# pysnmp imports these lazily, only when SNMPv3 privacy is used.
import cryptography.hazmat.primitives.ciphers
from pysnmp.proto.secmod.rfc3826.priv import aes
from pysnmp.proto.secmod.rfc3414.priv import des
print(len(names))
"""


@pytest.fixture(scope="module")
def runtime_venv() -> Path:
    configured = os.environ.get(RUNTIME_VENV_ENV, "")
    if not configured:
        if os.environ.get("CI"):
            pytest.fail(f"${RUNTIME_VENV_ENV} is not set: run the tests with `make test` (see docs/ci.md)")
        pytest.skip(f"${RUNTIME_VENV_ENV} is not set (`make test` sets it)")
    venv = Path(configured)
    assert (venv / "bin" / "delivery-worker").is_file(), f"{venv} holds no delivery-worker: rebuild it"
    require_snmptrapd()  # skips without it, fails under CI (.ci/ensure-tools installs it)
    return venv


def run_in(venv: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    result = subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        env=env or {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def summary(trap: LoggedTrap) -> tuple[str, str, str]:
    """How snmptrapd accepted a trap (v2c community / v3 user at authPriv), its OID and pulseAlertId."""
    return trap.security, trap.trap_oid, str(trap.values.get(PULSE_ALERT_ID))


def test_the_runtime_venv_holds_no_dev_tool_and_imports_every_module(runtime_venv: Path) -> None:
    for name in DEV_ONLY:
        found = subprocess.run(
            [str(runtime_venv / "bin" / "python"), "-c", f"import {name}"],
            capture_output=True,
            check=False,
            timeout=60,
        )
        assert found.returncode != 0, f"{name} (a dev tool) is in {runtime_venv}: not a runtime venv"
    assert int(run_in(runtime_venv, "python", "-c", IMPORT_EVERYTHING)) > 20


def test_the_runtime_install_runs_from_its_wheel_and_migrates_an_empty_database(
    runtime_venv: Path, empty_database: str, tmp_path: Path
) -> None:
    where = subprocess.run(
        [
            str(runtime_venv / "bin" / "python"),
            "-c",
            "import delivery_worker; print(delivery_worker.__file__)",
        ],
        cwd=tmp_path,  # not the checkout, whose package would shadow the installed one
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert Path(where.stdout.strip()).is_relative_to(runtime_venv.resolve()), where.stdout
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DATABASE_URL": empty_database}
    out = run_in(runtime_venv, "delivery-worker", "--config", "/dev/null", "migrate", env=env)
    assert out.startswith("applied ") and "001_platform_tables.sql" in out  # the wheel holds sql/


def test_every_channel_delivers_from_the_runtime_install(
    runtime_venv: Path, database: str, http_server: RecordingServer, tmp_path: Path
) -> None:
    topic = f"smoke/{uuid.uuid4().hex[:10]}"
    subscriber = Subscriber()
    subscriber.subscribe(topic)
    try:
        with (
            smtp_server() as smtp,
            snmptrapd(tmp_path, community="public", users=[V3_USER]) as trapd,
        ):
            snmp = {"host": trapd.host, "port": trapd.port}
            channels = {
                "slack": {"webhook_url": http_server.url("/slack")},
                "teams": {"webhook_url": http_server.url("/teams")},
                "pagerduty": {"integration_key": "R0UT1NGKEY0000000000000000000000"},
                "webhook": {"url": http_server.url("/webhook")},
                "email": {"smtp": smtp_config(smtp.port), "recipients": {"to": ["oncall@acme.test"]}},
                "mqtt": {"broker_url": "mqtt://127.0.0.1:1883", "topic": topic, "qos": 1},
                "snmp v2c": {**snmp, "version": "2c", "community": "public"},
                "snmp v3 authPriv": {
                    **snmp,
                    "version": "3",
                    "username": V3_USER.name,
                    "auth_protocol": "SHA",
                    "auth_password": V3_USER.auth_password,
                    "priv_protocol": "AES",
                    "priv_password": V3_USER.priv_password,
                    "engine_id": "0x" + V3_USER.engine_id.hex(),
                },
            }
            jobs, alert_ids = {}, {}
            for number, (label, config) in enumerate(channels.items()):
                channel_id = insert_channel(database, label.split()[0], config)
                alert_ids[label] = 770_000 + number
                payload = {**SAMPLE_PAYLOAD, "alert_id": alert_ids[label]}
                payload["message"] = f"smoke {label} — Überhitzung"
                jobs[label] = insert_notification_job(
                    database, channel_id, payload, alert_id=alert_ids[label]
                )

            env = worker_env(database, pagerduty_events_url=http_server.url("/v2/enqueue"))
            run_in(runtime_venv, "delivery-worker", "--config", "/dev/null", "run", "--drain", env=env)

            rows = execute(database, "SELECT job_id, status, last_error FROM notification_jobs")
            outcome = {row["job_id"]: (row["status"], row["last_error"]) for row in rows}
            assert {label: outcome[job_id] for label, job_id in jobs.items()} == {
                label: ("COMPLETED", None) for label in jobs
            }
            # The alert id is a varbind (pulseAlertId): each trap arrived, decoded, from its own job.
            traps = trapd.wait_for_traps(2)
            assert sorted(summary(trap) for trap in traps) == sorted(
                [
                    ("TRAP2, SNMP v2c, community public", TRAP_OPEN, str(alert_ids["snmp v2c"])),
                    (
                        f"TRAP2, SNMP v3, user {V3_USER.name}, context ",
                        TRAP_OPEN,
                        str(alert_ids["snmp v3 authPriv"]),
                    ),
                ]
            )
            assert len(trapd.traps()) == 2
            (mail,) = smtp.messages
        assert "smoke email" in mail.strict_message().get_content()
        assert json.loads(subscriber.get().payload)["message"] == "smoke mqtt — Überhitzung"
    finally:
        subscriber.close()
    for path, needle in [
        ("/slack", "smoke slack"),
        ("/teams", "smoke teams"),
        ("/v2/enqueue", "smoke pagerduty"),
        ("/webhook", "smoke webhook"),
    ]:
        (request,) = http_server.received(path)
        assert needle in request.body.decode(), (path, request.body)
