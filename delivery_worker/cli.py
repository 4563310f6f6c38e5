"""`delivery-worker` command line: migrate, run, check-config."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from delivery_worker import __version__
from delivery_worker.config import ConfigError, Settings, load_settings, redacted_view
from delivery_worker.db import DatabaseUnavailable, connect
from delivery_worker.logs import configure_logging

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="delivery-worker",
        description="Deliver alert notifications queued in PostgreSQL to their channels.",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="INI file (default: $DELIVERY_WORKER_CONFIG, else config/worker.ini if present)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    migrate = commands.add_parser(
        "migrate",
        help="create or upgrade the schema (safe to run again)",
        description="Create missing tables, columns, indexes and triggers. Never drops or renames.",
    )
    migrate.add_argument(
        "--create-database",
        action="store_true",
        help="create the DSN's database first if it does not exist (local set-up)",
    )

    run = commands.add_parser(
        "run",
        help="deliver jobs until SIGTERM/SIGINT",
        description="Poll notification_jobs and delivery_jobs and deliver what is due.",
    )
    run.add_argument(
        "--drain",
        action="store_true",
        help="exit 0 once no job is due and none is in flight",
    )

    commands.add_parser(
        "check-config",
        help="validate the configuration and print it with secrets masked",
        description="Exit 0 if the configuration is valid, else exit 2 with one line naming the key.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"delivery-worker: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.logging.level)

    if args.command == "check-config":
        return check_config(settings)
    if args.command == "migrate":
        return migrate(settings, create_database=args.create_database)
    return run(settings, drain=args.drain)


def check_config(settings: Settings) -> int:
    print(f"config OK ({settings.source})")
    print(json.dumps(redacted_view(settings), indent=2))
    return EXIT_OK


def migrate(settings: Settings, *, create_database: bool) -> int:
    from delivery_worker.migrate import apply_migrations, create_database_if_missing

    dsn = settings.database.migrate_dsn
    try:
        if create_database and create_database_if_missing(dsn):
            print("created database")
        conn = connect(dsn)
        try:
            applied = apply_migrations(conn)
        finally:
            conn.close()
    except DatabaseUnavailable as exc:
        print(f"delivery-worker: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "schema is up to date")
    return EXIT_OK


def run(settings: Settings, *, drain: bool) -> int:
    from delivery_worker.service import SchemaNotReady, run_worker

    try:
        run_worker(settings, drain=drain)
    except (DatabaseUnavailable, SchemaNotReady) as exc:
        print(f"delivery-worker: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
