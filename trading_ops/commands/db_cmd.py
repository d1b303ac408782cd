"""`trading-ops db upgrade|check|current`: run and verify the Alembic migrations."""

from __future__ import annotations

import argparse
from typing import Any

from trading_ops.config import Config


def register(sub: Any) -> None:
    parser = sub.add_parser("db", help="database migrations")
    inner = parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = inner.add_parser("upgrade", help="apply the migrations up to a revision (default: head)")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(handler=upgrade)
    check = inner.add_parser("check", help="fail when the models and the migrations disagree")
    check.set_defaults(handler=check_models)


def upgrade(args: argparse.Namespace, config: Config) -> int:
    # Imported here: Alembic and Mako are not needed by the long-running commands (they parse this module too).
    from trading_ops.db import migrate

    url = config.database_url()
    migrate.upgrade(url, args.revision)
    print(f"database upgraded to {args.revision}")
    return 0


def check_models(args: argparse.Namespace, config: Config) -> int:
    from trading_ops.db import migrate

    migrate.check(config.database_url())
    print("models and migrations agree")
    return 0
