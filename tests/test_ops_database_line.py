"""Every operator command says which database it acts on, on stderr, with the password masked."""

from __future__ import annotations

import getpass

import psycopg2.extensions
import pytest

from tests.rows import insert_channel

PASSWORD = "hunter2-s3cret"


@pytest.mark.parametrize(
    "argv",
    [
        ["stats"],
        ["stats", "--by", "tenant", "--json"],
        ["requeue", "--all", "--dry-run"],
        ["requeue", "--tenant", "acme", "--json"],
        ["prune", "--older-than", "30d"],
        ["prune", "--older-than", "30d", "--dry-run", "--json"],
        ["send-test", "--channel-id", "{channel}"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_the_masked_database_line_is_on_stderr_once(database, cli, monkeypatch, argv):
    channel = insert_channel(database, "webhook", {"url": "https://example.invalid/hook"}, enabled=False)
    name = psycopg2.extensions.parse_dsn(database)["dbname"]
    monkeypatch.setenv("DATABASE_URL", f"{database} password={PASSWORD}")

    result = cli(*(arg.format(channel=channel) for arg in argv))

    assert result.code in (0, 1), result.err  # send-test to a disabled channel fails, and says so
    lines = [line for line in result.err.splitlines() if line.startswith("database: ")]
    assert len(lines) == 1
    assert f"dbname={name}" in lines[0] and "password=***" in lines[0]
    assert PASSWORD not in result.err + result.out
    assert not result.out.startswith("database:")


def test_a_url_dsn_is_masked_too(database, cli, monkeypatch):
    parts = psycopg2.extensions.parse_dsn(database)
    user = parts.get("user") or getpass.getuser()
    url = f"postgresql://{user}:{PASSWORD}@{parts['host']}:{parts['port']}/{parts['dbname']}"
    monkeypatch.setenv("DATABASE_URL", url)

    result = cli("requeue", "--all", "--dry-run")

    assert result.code == 0, result.err
    assert (
        f"database: postgresql://{user}:***@{parts['host']}:{parts['port']}/{parts['dbname']}" in result.err
    )
    assert PASSWORD not in result.err + result.out
