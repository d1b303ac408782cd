"""trading_ops/db/revisions.py: the revisions written out agree with what Alembic reads from the migrations, the
check every bot, paper venue and reconciler runs at its start says what Alembic's would, and those processes do not
import Alembic to run it."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy import text

from trading_ops.db import migrate
from trading_ops.db.base import make_engine
from trading_ops.db.errors import NOT_MIGRATED
from trading_ops.db.revisions import HEADS, KNOWN, schema_problem


def test_the_revisions_written_out_are_the_migrations() -> None:
    script = migrate.script_directory()
    assert KNOWN == tuple(reversed([r.revision for r in script.walk_revisions()])), (
        "trading_ops/db/revisions.py: KNOWN must list every migration's revision, oldest first"
    )
    assert frozenset(script.get_heads()) == HEADS, "trading_ops/db/revisions.py: HEADS must be the migrations' head"


def test_the_check_at_start_reads_a_database_as_alembic_does(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        assert schema_problem(engine) == NOT_MIGRATED  # no alembic_version table: never migrated
        migrate.upgrade(database_url, KNOWN[0])
        assert migrate.current(database_url) == {KNOWN[0]}
        assert schema_problem(engine) == NOT_MIGRATED  # behind the head
        migrate.upgrade(database_url)
        assert migrate.current(database_url) == set(HEADS)
        assert schema_problem(engine) is None
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        assert schema_problem(engine) == (
            "database is at revision 9999, which this version of trading-ops does not know: upgrade trading-ops"
        )
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM alembic_version"))  # what a downgrade to base leaves
        assert migrate.current(database_url) == set()
        assert schema_problem(engine) == NOT_MIGRATED
    finally:
        engine.dispose()


def test_the_long_running_processes_start_without_alembic() -> None:
    """A bot, the paper venue and the reconciler import no Alembic (nor Mako and Pygments, which it brings): a fifth
    of a CPU-second at every start, for a check that reads one table."""
    modules = ("trading_ops.bot.main", "trading_ops.paper.cli", "trading_ops.reconciler.app", "trading_ops.cli")
    probe = (
        f"import sys\nfor m in {modules!r}: __import__(m)\n"
        "print(sorted({n.split('.')[0] for n in sys.modules} & {'alembic', 'mako', 'pygments'}))"
    )
    result = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
