"""`delivery-worker` command line: migrate, run, check-config, and the operator commands in ops/."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

import psycopg2
import structlog

from delivery_worker import __version__
from delivery_worker.config import ConfigError, Settings, load_settings
from delivery_worker.db import OPERATOR_SESSION, DatabaseRejected, DatabaseUnavailable, connect
from delivery_worker.lease_check import lease_problem
from delivery_worker.logs import configure_logging
from delivery_worker.ops import cancel, demo, pause, prune, replay, requeue, send_test, show, stats

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

# name -> (add_parser, run). Each lives in its own module under delivery_worker/ops/.
OPERATOR_COMMANDS: dict[str, tuple[Callable[..., None], Callable[[Settings, argparse.Namespace], int]]] = {
    "stats": (stats.add_parser, stats.run),
    "requeue": (requeue.add_parser, requeue.run),
    "prune": (prune.add_parser, prune.run),
    "send-test": (send_test.add_parser, send_test.run),
    "show": (show.add_parser, show.run),
    "replay": (replay.add_parser, replay.run),
    "cancel": (cancel.add_parser, cancel.run),
    "pause": (pause.add_pause_parser, pause.run_pause),
    "resume": (pause.add_resume_parser, pause.run_resume),
    "demo": (demo.add_parser, demo.run),
}


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

    check = commands.add_parser(
        "check-config",
        help="validate the configuration; print it (secrets masked) and the metrics listener",
        description="Exit 0 if the configuration is valid (deployment warnings on stderr), else exit 2 "
        "with one line naming the key.",
    )
    check.add_argument("--json", action="store_true", help="one JSON document on stdout")
    for add_parser, _ in OPERATOR_COMMANDS.values():
        add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        config_error(str(exc), args)
        return EXIT_CONFIG
    configure_logging(settings.logging.level)

    if args.command in OPERATOR_COMMANDS:
        return operator_command(settings, args)
    if args.command in ("check-config", "run") and (problem := lease_problem(settings.worker)):
        config_error(problem, args)
        return EXIT_CONFIG
    if args.command == "check-config":
        from delivery_worker.check_config import check_config

        return check_config(settings, os.environ, as_json=args.json)
    if args.command == "migrate":
        return migrate(settings, create_database=args.create_database)
    return run(settings, drain=args.drain)


def config_error(message: str, args: argparse.Namespace) -> None:
    """One line on stderr; `check-config --json` also prints the verdict on stdout."""
    print(f"delivery-worker: config error: {message}", file=sys.stderr)
    if args.command == "check-config" and args.json:
        print(json.dumps({"ok": False, "error": message}))


def migrate(settings: Settings, *, create_database: bool) -> int:
    from delivery_worker.migrate import (
        MigrationFailed,
        MigrationLockTimeout,
        apply_migrations,
        create_database_if_missing,
    )
    from delivery_worker.ops.output import announce_database

    dsn = settings.database.migrate_dsn
    announce_database(dsn)
    try:
        if create_database and create_database_if_missing(dsn):
            print("created database")
        conn = connect(dsn, session=OPERATOR_SESSION)
        try:
            applied = apply_migrations(
                conn,
                lock_timeout=settings.database.migrate_lock_timeout,
                report=lambda line: print(f"migrate: {line}", file=sys.stderr, flush=True),
            )
        finally:
            conn.close()
    except (DatabaseUnavailable, MigrationLockTimeout) as exc:
        print(f"delivery-worker: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except (DatabaseRejected, MigrationFailed) as exc:
        print(f"delivery-worker: migrate failed (does this role own the tables?): {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "schema is up to date")
    return EXIT_OK


def run(settings: Settings, *, drain: bool) -> int:
    from delivery_worker.service import CannotListen, MissingPrivileges, SchemaNotReady, run_worker

    try:
        if settings.worker.processes > 1:  # several worker processes under this one (supervisor.py)
            from delivery_worker.supervisor import run_processes

            return run_processes(settings, drain=drain)
        run_worker(settings, drain=drain)
    except (DatabaseUnavailable, SchemaNotReady, MissingPrivileges, CannotListen) as exc:
        print(f"delivery-worker: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def operator_command(settings: Settings, args: argparse.Namespace) -> int:
    """Run stats, requeue, prune or send-test: the result on stdout, log lines on stderr."""
    log_to_stderr()
    _, command = OPERATOR_COMMANDS[args.command]
    try:
        return command(settings, args)
    except DatabaseUnavailable as exc:
        print(f"delivery-worker: {exc}", file=sys.stderr)
    except DatabaseRejected as exc:  # e.g. the worker's role, which may not DELETE (docs/configuration.md)
        print(f"delivery-worker: {args.command}: the database refused: {exc}", file=sys.stderr)
    except psycopg2.Error as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"delivery-worker: {args.command}: the database refused: {reason}", file=sys.stderr)
    return EXIT_FAILURE


def log_to_stderr() -> None:
    """Keep stdout for the command's table or JSON. Loggers are not cached and look up sys.stderr
    on each line, so running several commands in one process (the tests) never writes to a stale
    stream."""
    structlog.configure(
        logger_factory=lambda *_args: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )


if __name__ == "__main__":
    sys.exit(main())
