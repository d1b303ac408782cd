"""`trading-ops db upgrade|downgrade|current|check`: run, inspect and verify the Alembic migrations."""

from __future__ import annotations

import argparse
from typing import Any

from trading_ops.cli import UsageError
from trading_ops.config import Config

REVISION_HELP = "a revision id (e.g. 0003; see `db current`), `head` (the newest) or `base` (before the first)"


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "db",
        help="database migrations (journal and reconciler ledger)",
        description="Migrations of the database named by database.url. Upgrading is safe and idempotent; "
        "downgrading drops what the newer revisions added (their data is lost) and needs --yes.",
    )
    inner = parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = inner.add_parser("upgrade", help="apply the migrations up to a revision (default: head)")
    up.add_argument("revision", nargs="?", default="head", help=f"where to upgrade to: {REVISION_HELP}")
    up.set_defaults(handler=upgrade)
    down = inner.add_parser(
        "downgrade",
        help="undo migrations down to an older revision (drops tables and columns: needs --yes)",
        description="Undo the migrations newer than REVISION. Stop the bots and the reconciler first and take a "
        "backup: the tables and columns the undone revisions added are dropped with their data. Then run the "
        "version of trading-ops that matches REVISION (a newer one refuses to start on an older schema).",
    )
    down.add_argument("revision", help=f"where to downgrade to: {REVISION_HELP}")
    down.add_argument("--yes", action="store_true", help="confirm: drop what the newer revisions added")
    down.set_defaults(handler=downgrade)
    current = inner.add_parser("current", help="print the revision the database is at and whether it is the newest")
    current.set_defaults(handler=show_current)
    check = inner.add_parser("check", help="fail when the models and the migrations disagree")
    check.set_defaults(handler=check_models)


def _target(revision: str) -> str | None:
    from trading_ops.db import migrate

    try:
        return migrate.resolve(revision)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _at(revisions: set[str]) -> str:
    return ", ".join(sorted(revisions)) or "base (empty)"


def _known_current(url: str) -> set[str]:
    """The database's revisions; a usage error when this version of trading-ops does not know one of them."""
    from trading_ops.db import migrate

    current = migrate.current(url)
    known = {r.revision for r in migrate.script_directory().walk_revisions()}
    if current - known:
        raise UsageError(
            f"database is at revision {_at(current - known)}, which this version of trading-ops does not know: "
            "upgrade trading-ops"
        )
    return current


def _older_than_current(current: set[str], target: str | None) -> bool:
    """Whether `target` is strictly before the database's revision (`None` is base)."""
    from trading_ops.db import migrate

    if not current:
        return False
    if target is None:
        return True
    return any(target in migrate.older_revisions(rev)[1:] for rev in current)


def upgrade(args: argparse.Namespace, config: Config) -> int:
    # Imported here: Alembic and Mako are not needed by the long-running commands (they parse this module too).
    from trading_ops.db import migrate

    url = config.database_url()
    target = _target(args.revision)
    current = _known_current(url)
    if current == ({target} if target else set()):
        print(f"database already at {_at(current)}")
        return 0
    if target is None or _older_than_current(current, target):
        raise UsageError(
            f"database is at {_at(current)}; {target or 'base'} is older: that is a downgrade, which drops data "
            f"(`trading-ops db downgrade {target or 'base'} --yes`)"
        )
    migrate.upgrade(url, target)
    print(f"database upgraded from {_at(current)} to {target}")
    return 0


def downgrade(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.db import migrate

    url = config.database_url()
    target = _target(args.revision)
    current = _known_current(url)
    shown = target or "base"
    if not _older_than_current(current, target):
        raise UsageError(f"database is at {_at(current)}; {shown} is not older: nothing to downgrade")
    if not args.yes:
        raise UsageError(
            f"downgrading from {_at(current)} to {shown} drops what the newer revisions added, with its data: "
            "stop the bots and the reconciler, take a backup, and re-run with --yes"
        )
    migrate.downgrade(url, shown)
    print(f"database downgraded from {_at(current)} to {shown}")
    return 0


def show_current(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.db import migrate

    url = config.database_url()
    current = _known_current(url)
    head = {str(h) for h in migrate.script_directory().get_heads()}
    if current == head:
        print(f"{_at(current)} (head)")
    else:
        print(f"{_at(current)} (head is {_at(head)}: run `trading-ops db upgrade`)")
    return 0


def check_models(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.db import migrate

    migrate.check(config.database_url())
    print("models and migrations agree")
    return 0
