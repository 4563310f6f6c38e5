"""Configured secrets never reach the logs, last_error, error_msg or delivery_attempts.error.

Every destination below fails in a way that tempts a leak: receivers echo the secret back in their
error body, credentials are refused, hosts are unreachable.
"""

from __future__ import annotations

import json

from tests.processes import start_worker
from tests.rows import (
    execute,
    insert_channel,
    insert_delivery_job,
    insert_integration,
    insert_notification_job,
)
from tests.servers.http import Reply
from tests.servers.smtp import closed_port, smtp_server

SECRETS = {
    "webhook": "whk-secret-7f3a9c",
    "slack_path": "/services/T0SECRET/B0SECRET/slackTokenXyz123",
    "teams_path": "/workflows/teamsSigQ9w8e7",
    "routing_key": "pdRoutingKey0123456789abcdef00",
    "smtp_password": "smtp-Pa55-leakcheck",
    "mqtt_password": "mqtt-Pa55-leakcheck",
    "community": "snmp-community-leakcheck",
    "auth_password": "snmp-auth-leakcheck",
    "priv_password": "snmp-priv-leakcheck",
    "integration_secret": "int-webhook-secret-42",
}


def echo(text: str, status: int) -> Reply:
    return Reply(status, f"rejected request carrying {text}".encode())


def test_no_configured_secret_appears_anywhere(database, http_server):
    http_server.script("/webhook", *[echo(SECRETS["webhook"], 500)] * 5)
    http_server.script(SECRETS["slack_path"], *[echo(SECRETS["slack_path"], 404)] * 5)
    http_server.script(SECRETS["teams_path"], *[echo(http_server.url(SECRETS["teams_path"]), 503)] * 5)
    http_server.script("/v2/enqueue", *[echo(SECRETS["routing_key"], 400)] * 5)
    http_server.script("/int", *[echo(SECRETS["integration_secret"], 502)] * 5)
    dead_port = closed_port()

    with smtp_server(users={"pulse": "the-real-password"}, auth_require_tls=False) as smtp:
        channels = [
            ("webhook", {"url": http_server.url("/webhook"), "secret": SECRETS["webhook"]}),
            ("slack", {"webhook_url": http_server.url(SECRETS["slack_path"])}),
            ("teams", {"webhook_url": http_server.url(SECRETS["teams_path"])}),
            ("pagerduty", {"integration_key": SECRETS["routing_key"]}),
            (
                "email",
                {
                    "smtp": {
                        "smtp_host": "127.0.0.1",
                        "smtp_port": smtp.port,
                        "smtp_tls": False,
                        "smtp_user": "pulse",
                        "smtp_password": SECRETS["smtp_password"],
                        "from_address": "a@pulse.test",
                    },
                    "recipients": {"to": ["ops@acme.test"]},
                },
            ),
            (
                "mqtt",
                {
                    "broker_url": f"mqtt://127.0.0.1:{dead_port}",
                    "username": "u",
                    "password": SECRETS["mqtt_password"],
                },
            ),
            (
                "snmp",
                {
                    "host": "127.0.0.1",
                    "port": dead_port,  # nobody answers the inform
                    "inform": True,
                    "version": "3",
                    "username": "pulse",
                    "auth_password": SECRETS["auth_password"],
                    "priv_password": SECRETS["priv_password"],
                },
            ),
            ("snmp", {"host": "127.0.0.1", "port": "not-a-port", "community": SECRETS["community"]}),
        ]
        for kind, config in channels:
            insert_notification_job(database, insert_channel(database, kind, config))
        integration = insert_integration(
            database,
            "webhook",
            config_json={"url": http_server.url("/int"), "secret": SECRETS["integration_secret"]},
        )
        insert_delivery_job(database, integration)

        worker = start_worker(
            database,
            "--drain",
            worker_max_attempts="2",
            pagerduty_events_url=http_server.url("/v2/enqueue"),
            logging_level="DEBUG",
            snmp_timeout="0.5",
        )
        out, err = worker.communicate(timeout=120)

    assert worker.returncode == 0, err
    stored = execute(
        database,
        "SELECT last_error AS text FROM notification_jobs UNION ALL SELECT last_error FROM delivery_jobs"
        " UNION ALL SELECT error_msg FROM notification_log UNION ALL SELECT error FROM delivery_attempts",
    )
    texts = [row["text"] for row in stored if row["text"]]
    failed = execute(database, "SELECT count(*) AS n FROM notification_jobs WHERE status = 'FAILED'")
    assert failed[0]["n"] == len(channels), texts  # every destination really failed
    haystack = "\n".join([out, err, *texts])
    for name, secret in SECRETS.items():
        assert secret not in haystack, f"{name} leaked"
    # The errors are still useful: they name the destination and what went wrong.
    assert any("HTTP 404" in t for t in texts) and any("refused login" in t or "535" in t for t in texts)
    assert json.loads(out.splitlines()[-1])["event"] == "worker.stopped"


# Secrets a tenant puts in URLs (path and query), headers and cookies. Each receiver below echoes them
# back in every form an error body can take: raw, URL-encoded, JSON-escaped (with "\/"), alone (the
# Slack token, the Teams sig) and straddling the 200-character excerpt cut.
URL_SECRETS = {
    "path": "pathSecretQ1w2E3r4",
    "query": "querySecretT5y6U7i8",
    "bearer": "bearerSecretO9p0A1s2",
    "cookie": "cookieSecretD3f4G5h6",
    "api_key": "apiKeySecretJ7k8L9z0",
    "slack_token": "slackOnlyTokenX1c2V3b4",
    "teams_sig": "teamsOnlySigN5m6Q7w8",
    "basic_password": "basicPassE9r0T1y2",
}


def _echo_forms(secret: str, path: str) -> bytes:
    """An error body quoting the secret and its path every way a receiver might, one at the cut."""
    from urllib.parse import quote

    forms = [
        secret,
        quote(path, safe=""),
        json.dumps(path).replace("/", "\\/"),
        quote(secret.encode("utf-16-be").decode("utf-16-be"), safe=""),
    ]
    lead = "e" * (200 - 12)  # the excerpt is cut at 200 characters: the first form straddles it
    return f"{lead}{secret} | {' | '.join(forms)}".encode()


def test_no_secret_from_urls_headers_or_cookies_leaks_in_any_form(database, http_server):
    import base64

    s = URL_SECRETS
    hook_path = f"/hook/{s['path']}"
    slack_path = f"/services/T0A1B2C3/B4D5E6F7/{s['slack_token']}"
    teams_path = "/workflows/wf01/triggers/manual/paths/invoke"
    basic = base64.b64encode(f"pulse:{s['basic_password']}".encode()).decode()
    http_server.script(hook_path, *[Reply(404, _echo_forms(s["path"], hook_path) + s["query"].encode())] * 5)
    http_server.script(slack_path, *[Reply(404, _echo_forms(s["slack_token"], slack_path))] * 5)
    http_server.script(teams_path, *[Reply(400, _echo_forms(s["teams_sig"], f"sig={s['teams_sig']}"))] * 5)
    http_server.script(
        "/headers", *[Reply(500, f"got {s['bearer']} {s['cookie']} {s['api_key']}".encode())] * 5
    )
    http_server.script("/basic", *[Reply(401, f"bad {basic} for pulse:{s['basic_password']}".encode())] * 5)
    channels = [
        ("webhook", {"url": http_server.url(f"{hook_path}?token={s['query']}")}),
        (
            "webhook",
            {
                "url": http_server.url("/headers"),
                "headers": {
                    "Authorization": f"Bearer {s['bearer']}",
                    "Cookie": f"sid={s['cookie']}; theme=dark",
                    "X-Api-Key": s["api_key"],
                },
            },
        ),
        ("webhook", {"url": http_server.url("/basic"), "headers": {"Authorization": f"Basic {basic}"}}),
        ("webhook", {"url": http_server.url("/x"), "headers": {"X-Token": f" {s['api_key']}"}}),  # refused
        ("slack", {"webhook_url": http_server.url(slack_path)}),
        (
            "teams",
            {"webhook_url": http_server.url(f"{teams_path}?api-version=2016-06-01&sig={s['teams_sig']}")},
        ),
    ]
    for kind, config in channels:
        insert_notification_job(database, insert_channel(database, kind, config))

    worker = start_worker(database, "--drain", worker_max_attempts="2", logging_level="DEBUG")
    out, err = worker.communicate(timeout=120)

    assert worker.returncode == 0, err
    stored = execute(
        database,
        "SELECT last_error AS text FROM notification_jobs UNION ALL SELECT error_msg FROM notification_log",
    )
    texts = [row["text"] for row in stored if row["text"]]
    failed = execute(database, "SELECT count(*) AS n FROM notification_jobs WHERE status = 'FAILED'")
    assert failed[0]["n"] == len(channels), texts
    haystack = "\n".join([out, err, *texts])
    for name, secret in URL_SECRETS.items():
        for size in range(8, len(secret) + 1):  # no piece of it, not even the part before a cut
            for start in range(len(secret) - size + 1):
                assert secret[start : start + size] not in haystack, (
                    f"{name} leaked ({secret[start : start + size]})"
                )
    assert "[REDACTED]" in haystack and any("HTTP 404" in t for t in texts)
    assert any("config.headers.X-Token has leading or trailing whitespace" in t for t in texts)
