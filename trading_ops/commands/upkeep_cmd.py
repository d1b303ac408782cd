"""`trading-ops upkeep run|vacuum|retention|cleanup`: the database and disk upkeep of trading_ops.ops.upkeep, with
the reconciler's ledger pruned by the reconciler's own pruner (the command line wires the two; ops does not know the
ledger)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from trading_ops.config import Config
from trading_ops.ops.backup_cli import EXIT_FAILURE, EXIT_OK, expected_errors, fail, human


def register(sub: Any) -> None:
    upkeep = sub.add_parser("upkeep", help="database and disk upkeep: VACUUM/ANALYZE, retention, cleanup")
    uinner = upkeep.add_subparsers(dest="upkeep_command", metavar="ACTION", required=True)
    urun = uinner.add_parser("run", help="every upkeep task (or the ones named)")
    urun.add_argument("--vacuum", action="store_true", help="VACUUM/ANALYZE the database")
    urun.add_argument("--retention", action="store_true", help="delete rows older than their retention")
    urun.add_argument("--cleanup", action="store_true", help="clean the configured directories")
    urun.set_defaults(handler=upkeep_run)
    for task, text in (
        ("vacuum", "VACUUM/ANALYZE the database"),
        ("retention", "delete journal, recovery and ledger rows older than their retention"),
        ("cleanup", "delete old and excess files in the configured directories (logs, scratch, temp)"),
    ):
        uinner.add_parser(task, help=text).set_defaults(handler=upkeep_run, only=task)


def upkeep_run(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.ops.upkeep import TASKS, RetentionHook, run_upkeep_sync

    only = getattr(args, "only", None)
    if only:
        tasks: tuple[str, ...] = (only,)
    else:
        tasks = tuple(t for t in TASKS if getattr(args, t, False)) or TASKS
    retention: tuple[RetentionHook, ...] = ()
    if "retention" in tasks:  # the ledger (and SQLAlchemy) only for the task that prunes it: `cleanup` stays light
        from trading_ops.reconciler.retention import ledger_retention

        retention = (ledger_retention(config),)
    try:
        result = run_upkeep_sync(config, tasks, retention=retention)
    except expected_errors() as exc:
        return fail(f"upkeep {only or 'run'}", exc)
    deleted = {t: n for t, n in result.rows_deleted.items() if n}
    if "retention" in tasks:
        print("rows deleted: " + (", ".join(f"{t} {n}" for t, n in sorted(deleted.items())) or "none"))
    if "vacuum" in tasks:
        if result.vacuumed and result.database_bytes_before is not None:
            print(f"vacuum: {human(result.database_bytes_before)} -> {human(result.database_bytes_after or 0)}")
        else:
            print("vacuum: " + ("done" if result.vacuumed else "not run"))
    for r in result.cleanup:
        print(
            f"cleanup {r.name} ({r.path}): {r.files_deleted} file(s), {human(r.bytes_freed)} freed, "
            f"{human(r.bytes_left)} left" + (f", {r.failures} failure(s)" if r.failures else "")
        )
    for failure in result.failures:
        print(f"trading-ops: upkeep: {failure}", file=sys.stderr)
    return EXIT_FAILURE if result.failures else EXIT_OK
