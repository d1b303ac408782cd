"""Shared fixtures and hooks: fresh registries and databases (a SQLite file and a PostgreSQL database per test), the
xdist lanes, and a failed test's server logs. What tests import lives in modules of their own (ports, polling,
shared_postgres, ...): a module named `conftest` is a different one in each folder."""

from __future__ import annotations

import functools
import logging
import os
import re
import resource
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from prometheus_client import CollectorRegistry

# The helper modules' asserts say what they compared, as a test module's do: pytest rewrites a module's asserts only
# when it is registered before anything imports it (the helpers are imported by their basename: tests/ is on sys.path).
HELPER_MODULES = sorted(
    {p.stem for p in Path(__file__).parent.rglob("*.py") if p.stem != "conftest" and not p.stem.startswith("test_")}
)
pytest.register_assert_rewrite(*HELPER_MODULES)

import deployment_prebuild  # noqa: E402 (a helper: registered above)
from rewrite_ahead import rewrite_ahead  # noqa: E402
from shared_postgres import new_database  # noqa: E402
from smtp_sink import SMTPServer, serve_smtp  # noqa: E402

# The suite meets the secret files' mode check (trading_ops/secret_files.py) as a deployment does: its fixtures write
# each secret its owner's alone (tests/secret_file.py: a 0600 file in a 0700 folder), and the servers it starts check
# them. Only a test marked `secrets_mounted` runs as under an orchestrator that mounts them with modes of its own
# (TRADING_OPS_SECRETS_MOUNTED=1, for it and what it starts); a run started with the variable set keeps it throughout.
SECRETS_MOUNTED = "TRADING_OPS_SECRETS_MOUNTED"
MOUNTED_BY_CALLER = os.environ.get(SECRETS_MOUNTED)

# Hypothesis's tests prove properties of what the code returns, never how fast: its default 200 ms deadline per example
# (and the too_slow health check on generating them) fail a correct test on a machine busy with something else, as a
# first `make test` beside other work did (an example that took 468 ms once, 26 ms when replayed). One profile, for
# every test of the suite (a test's own @settings adds to it), loaded before any test module is imported.
settings.register_profile("trading-ops", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("trading-ops")

# The background build of what the deployment tests need (tests/deployment_prebuild.py), in the run's main process.
PREBUILD = pytest.StashKey[Any]()

# A test module that starts something once for the module (a whole stack, a freqtrade): a fixture of module (or
# package, class) scope defined in it.
STARTS_ONCE_PER_MODULE = re.compile(r"@pytest\.fixture\([^)]*\bscope=[\"'](?:module|package|class)[\"']")


def pytest_configure(config: pytest.Config) -> None:
    """In lanes, the main process rewrites the tests' asserts once, before the workers start (tests/rewrite_ahead.py):
    each worker then reads them instead of rewriting all of them itself."""
    if not hasattr(config, "workerinput") and config.getoption("numprocesses", None):
        rewrite_ahead(config)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """TRADING_OPS_SECRETS_MOUNTED=1 for a test marked `secrets_mounted` (set before its fixtures start anything),
    unset for every other one."""
    if MOUNTED_BY_CALLER is not None:
        return
    if item.get_closest_marker("secrets_mounted") is not None:
        os.environ[SECRETS_MOUNTED] = "1"
    else:
        os.environ.pop(SECRETS_MOUNTED, None)


def pytest_sessionstart(session: pytest.Session) -> None:
    """A run that includes the deployment tests starts building their roots, wheelhouse and layer in the background
    now (cached: nothing to do on a warm machine), so that a new machine's first run overlaps that work with other
    tests."""
    session.config.stash[PREBUILD] = deployment_prebuild.start(session.config)


def pytest_sessionfinish(session: pytest.Session) -> None:
    deployment_prebuild.stop(session.config.stash.get(PREBUILD, None))


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Lanes (`pytest -n 3 --dist loadgroup`): the tests of a module that starts something once for the module run
    on one worker, in their order (its fixture starts once, not once per worker); every other test goes to whichever
    worker is free. xdist's own `xdist_group` marks cannot say it here: pytest 9.2's node ids no longer take the group
    suffix xdist 3.8 writes into them, so the scheduler groups by the test's module path itself."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    @functools.cache
    def grouped(path: str) -> bool:
        try:
            return bool(STARTS_ONCE_PER_MODULE.search((config.rootpath / path).read_text(encoding="utf-8")))
        except OSError:
            return False

    class ModuleGroups(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if grouped(path) else nodeid

    # The work goes out in collection order (pytest_collection_modifyitems puts the long work first), not xdist's
    # largest-number-of-tests first: a module of three five-minute tests handed out last would be the run's tail.
    config.option.loadscopereorder = False
    return ModuleGroups(config, log)


# The deployments and whole-stack runs (tests/deploy/: booted machines, Docker engines, network-namespace hosts, whole
# stacks killed and restarted) carry the `deploy` mark: `make test` leaves them to `make test-deploy`, and CI runs
# both (.ci/run). A test put in that folder is in that tier without marking it; a test elsewhere that runs for minutes
# (a failover of real servers, a fresh install, the venue's real rate) marks itself `deploy`, kept beside its module.
DEPLOY_DIR = Path(__file__).resolve().parent / "deploy"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/deploy/ is marked `deploy` (before `-m` selects: this hook runs first). In lanes, the
    long work first (longest processing time first, as a scheduler would): the modules that share a
    lane (they start something once) and have a test marked slow, with the slow tests of the other modules, then the
    other modules that share a lane, then the rest. A module that shares a lane keeps its tests' order. Workers
    collect, so this runs on each of them (where `dist` reads "no")."""
    for item in items:
        if DEPLOY_DIR in item.path.parents:
            item.add_marker(pytest.mark.deploy)
    if not hasattr(config, "workerinput"):
        return

    @functools.cache
    def once_per_module(path: Path) -> bool:
        try:
            return bool(STARTS_ONCE_PER_MODULE.search(path.read_text(encoding="utf-8")))
        except OSError:
            return False

    def own(item: pytest.Item) -> int:
        return 0 if item.get_closest_marker("slow") is not None else 1 if once_per_module(item.path) else 2

    module_rank: dict[Path, int] = {}
    for item in items:
        if once_per_module(item.path):
            module_rank[item.path] = min(own(item), module_rank.get(item.path, 2))
    items.sort(key=lambda item: module_rank.get(item.path, own(item)))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """A failed test's report carries the recent log of each server process it used (a fixture value with a
    `diagnostics()` method: freqtrade, the paper gateway), which is gone with the temporary directory after CI."""
    report = yield
    if report.failed:
        shown: set[int] = set()  # one report of each: a fixture handing on another's server is the same one
        for name, value in getattr(item, "funcargs", {}).items():
            diagnostics = getattr(value, "diagnostics", None)
            if callable(diagnostics) and id(value) not in shown:
                shown.add(id(value))
                try:
                    report.sections.append((f"{name}: its log's last lines", str(diagnostics())))
                except OSError as exc:
                    report.sections.append((f"{name}: its log", f"unreadable: {exc}"))
    return report


# `TRADING_OPS_TEST_CPU=FILE make test`: each test's wall time and the CPU seconds its worker and the processes it
# waited for spent (set-up, call and teardown), a line per test appended to FILE. In lanes on 2 cores the run is bound
# by CPU, not by the wall times `--durations` lists: this says where the CPU goes.
TEST_CPU = os.environ.get("TRADING_OPS_TEST_CPU")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[object]:
    if not TEST_CPU:
        return (yield)
    wall = time.monotonic()
    mine, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        return (yield)
    finally:
        after, after_children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (mine.ru_utime + mine.ru_stime)
        cpu_children = (after_children.ru_utime + after_children.ru_stime) - (children.ru_utime + children.ru_stime)
        with open(TEST_CPU, "a", encoding="utf-8") as out:
            out.write(f"{time.monotonic() - wall:.2f} {cpu:.2f} {cpu_children:.2f} {item.nodeid}\n")


@pytest.fixture(autouse=True)
def restore_root_logging() -> Iterator[None]:
    """`trading_ops.cli.main` configures the root logger on sys.stderr, which under capsys is a capture stream closed
    after the test: later tests' log lines would fail to write, and a failure's cause would vanish from its report."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'trading-ops.db'}"


@pytest.fixture(scope="session")
def migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database with every migration applied, once per worker: a test's own is a copy of it. The migrations
    themselves (about 1 s each time, mostly their commits' fsyncs) are tested in tests/db/."""
    from trading_ops.db import migrate

    path = tmp_path_factory.mktemp("migrated") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    # The write-ahead log folded into the file and left off, so the file alone is the whole database; a copy's first
    # engine (trading_ops.db.base.make_engine) turns WAL on again.
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.execute("PRAGMA journal_mode=DELETE")
    connection.close()
    return path


@pytest.fixture
def migrated_sqlite(tmp_path: Path, migrated_sqlite_template: Path) -> str:
    """A SQLite database of this test's own with every migration applied (for the reconciler's, the operations' and
    the readiness tests): at `sqlite_url`'s path."""
    path = tmp_path / "trading-ops.db"
    shutil.copyfile(migrated_sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def smtp_server() -> Iterator[SMTPServer]:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 and a free port, keeping what it receives (the operations' reports
    and the readiness review send through it)."""
    with serve_smtp() as server:
        yield server


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database on 127.0.0.1:5432 for this test, dropped afterwards."""
    with new_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request) -> str:
    """Each test using this runs twice: on SQLite and on the local PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Any]:
    """This test run's own Docker engine (tests/docker_engine.py), started once per run (per xdist worker) by the first
    test that asks for it, and stopped by its pid at the end, whatever happened."""
    from docker_engine import DockerEngine

    engine = DockerEngine.start()
    try:
        yield engine
    finally:
        engine.stop()
