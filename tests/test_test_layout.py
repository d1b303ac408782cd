"""The tests' own modules stay importable in any order: pytest puts tests/ and each folder under it on sys.path
(rootdir-relative, no packages), so a module is found by its basename alone. Three conftest.py were three modules
named `conftest`, and which one `from conftest import` meant depended on the folders given on the command line
(`pytest tests/reconciler tests/ops` failed to collect). What tests import lives in helper modules whose basenames
are unique, imported by that basename only (`tests.ports` beside `ports` would be a second copy of the module). No
test module or benchmark imports a test module: what they share lives in a helper module, so that running, changing or
deleting one test module never breaks another's collection (or a benchmark's start)."""

from __future__ import annotations

import ast
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parent
BENCHMARKS = TESTS.parent / "benchmarks"


def python_files() -> list[Path]:
    return sorted(TESTS.rglob("*.py"))


def helper_modules() -> list[Path]:
    """The modules under tests/ that are neither a conftest nor a test module: what tests import."""
    return [p for p in python_files() if p.name != "conftest.py" and not p.name.startswith("test_")]


def imported_modules(source: str) -> Iterator[tuple[int, str]]:
    """(line, module) of every absolute import in `source`, at the top or inside a function."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)


def duplicate_basenames(paths: list[Path]) -> list[str]:
    """The modules (conftest.py aside: pytest loads each by its path) whose basename another module has too."""
    counts = Counter(path.stem for path in paths if path.name != "conftest.py")
    return sorted(str(path.relative_to(TESTS.parent)) for path in paths if counts[path.stem] > 1)


def conftest_imports(source: str) -> list[tuple[int, str]]:
    return [(line, name) for line, name in imported_modules(source) if name.split(".")[-1] == "conftest"]


def prefixed_imports(source: str, helpers: set[str]) -> list[tuple[int, str]]:
    """Imports of a helper module by a dotted name (`tests.ports`, `reconciler.fake_bot`), not by its basename."""
    return [
        (line, name)
        for line, name in imported_modules(source)
        if "." in name and name.split(".")[-1] in helpers and name.split(".")[0] in {"tests", *dirs_under_tests()}
    ]


def dirs_under_tests() -> set[str]:
    return {p.name for p in TESTS.iterdir() if p.is_dir()}


def names_of_test_modules() -> set[str]:
    return {path.stem for path in python_files() if path.name.startswith("test_")}


def imports_of_test_modules(source: str, tests: set[str]) -> list[tuple[int, str]]:
    """Imports of a test module: by its basename (`test_stack`), a dotted name (`tests.test_paper_cli`) or from its
    folder (`from tests import test_docs`); a module of another package named test_* (`aiohttp.test_utils`) is not."""
    prefixes = {"tests", *dirs_under_tests()}

    def ours(name: str) -> bool:
        parts = name.split(".")
        return parts[-1] in tests and (len(parts) == 1 or parts[0] in prefixes)

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if ours(alias.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if ours(node.module):
                found.append((node.lineno, node.module))
            elif node.module in prefixes:
                found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names if a.name in tests]
    return sorted(found)


def importers_of_test_modules() -> list[str]:
    """`path:line: module` for every import of a test module by a module under tests/ or a benchmark."""
    tests = names_of_test_modules()
    return [
        f"{path.relative_to(TESTS.parent)}:{line}: imports {name}"
        for path in [*python_files(), *sorted(BENCHMARKS.rglob("*.py"))]
        for line, name in imports_of_test_modules(path.read_text(encoding="utf-8"), tests)
    ]


def test_the_helper_modules_asserts_are_rewritten_as_a_tests_are() -> None:
    """A failed assert in a helper says what it compared (`assert 3 == 4`), not a bare AssertionError."""
    import importlib

    helpers = {path.stem for path in helper_modules()}
    for name in ("polling", "ports", "server_process", "webhook_payloads"):
        assert name in helpers, name
        module = importlib.import_module(name)
        assert type(module.__loader__).__name__ == "AssertionRewritingHook", (name, module.__loader__)


def test_no_module_under_tests_imports_a_conftest() -> None:
    found = [
        f"{path.relative_to(TESTS.parent)}:{line}: {name}"
        for path in python_files()
        for line, name in conftest_imports(path.read_text(encoding="utf-8"))
    ]
    assert not found, "conftest.py holds fixtures and hooks only; import a helper module:\n" + "\n".join(found)


def test_module_basenames_under_tests_are_unique() -> None:
    duplicated = duplicate_basenames(python_files())
    assert not duplicated, f"two modules of one basename under tests/ (one shadows the other): {duplicated}"
    # tests/ comes first on sys.path: a helper named `email` or `mailbox` would shadow the standard library's.
    shadowing = sorted({path.stem for path in python_files()} & sys.stdlib_module_names)
    assert not shadowing, f"modules under tests/ named as the standard library's: {shadowing}"


def test_helper_modules_are_imported_by_their_basename_only() -> None:
    helpers = {path.stem for path in helper_modules()}
    found = [
        f"{path.relative_to(TESTS.parent)}:{line}: {name}"
        for path in python_files()
        for line, name in prefixed_imports(path.read_text(encoding="utf-8"), helpers)
    ]
    assert not found, "a second copy of a helper module, under a dotted name:\n" + "\n".join(found)


def test_no_test_module_or_benchmark_imports_a_test_module() -> None:
    found = importers_of_test_modules()
    assert not found, "test modules imported; move what they share into a helper module:\n" + "\n".join(found)


def benchmark_import_problems(source: str, stems: set[str], root: Path) -> list[tuple[int, str]]:
    """Imports in a benchmark of a module under benchmarks/ by its basename (found only when it is in the benchmark's
    own folder: run as a script, a benchmark has that folder on the path, not its neighbours'), or by a dotted
    `benchmarks.` name that names no file."""
    found = []
    for line, name in imported_modules(source):
        if name.split(".")[0] in stems:
            found.append((line, f"{name}: import it as benchmarks.<folder>.{name}"))
        elif name.split(".")[0] == "benchmarks":
            path = root.joinpath(*name.split("."))
            if not (path.with_suffix(".py").is_file() or path.is_dir()):
                found.append((line, f"{name}: no such module"))
    return found


def test_benchmarks_mirror_the_tests_folders_and_import_each_other_by_dotted_name() -> None:
    """A benchmark sits where the tests of what it measures are (benchmarks/venues/ as tests/venues/; those of the
    package's top-level modules in benchmarks/ itself), what several share in benchmarks/_shared/."""
    folders = sorted({p.parent.relative_to(BENCHMARKS) for p in BENCHMARKS.rglob("*.py")} - {Path(".")})
    assert Path("venues") in folders and Path("_shared") in folders, folders
    strays = [str(f) for f in folders if f != Path("_shared") and not (TESTS / f).is_dir()]
    assert not strays, f"folders under benchmarks/ that tests/ has not: {strays}"
    benchmarks = sorted(BENCHMARKS.rglob("bench_*.py"))
    assert not [p for p in benchmarks if p.parent.name == "_shared"], "a benchmark in benchmarks/_shared/"
    duplicated = duplicate_basenames(benchmarks)
    assert not duplicated, f"two benchmarks of one basename: {duplicated}"
    stems = {p.stem for p in BENCHMARKS.rglob("*.py")}
    found = [
        f"{path.relative_to(TESTS.parent)}:{line}: {problem}"
        for path in sorted(BENCHMARKS.rglob("*.py"))
        for line, problem in benchmark_import_problems(path.read_text(encoding="utf-8"), stems, TESTS.parent)
    ]
    assert not found, "\n".join(found)
    sample = "from bench_recovery import Stack\nfrom benchmarks._shared import loopback_ports\nimport benchmarks.no\n"
    assert benchmark_import_problems(sample, stems, TESTS.parent) == [
        (1, "bench_recovery: import it as benchmarks.<folder>.bench_recovery"),
        (3, "benchmarks.no: no such module"),
    ]


def test_the_checks_find_each_way_of_importing_a_conftest_or_a_second_copy() -> None:
    source = """
from conftest import free_port
import conftest as servers
from tests.conftest import POSTGRES_ADMIN_URL
from reconciler.conftest import make_config

def late():
    from tests.ops.conftest import ops_config
from conftests_elsewhere import x
from ports import free_port
from tests.ports import free_ports
import reconciler.fake_bot
from tests.test_paper_cli import cli
"""
    assert [line for line, _ in conftest_imports(source)] == [2, 3, 4, 5, 8]
    assert prefixed_imports(source, {"ports", "fake_bot"}) == [(11, "tests.ports"), (12, "reconciler.fake_bot")]
    paths = [TESTS / "conftest.py", TESTS / "ops" / "conftest.py", TESTS / "helpers.py", TESTS / "ops" / "helpers.py"]
    assert duplicate_basenames(paths) == ["tests/helpers.py", "tests/ops/helpers.py"]


def test_the_check_finds_each_way_of_importing_a_test_module() -> None:
    source = """
from test_stack import UpProcess, alive
import test_docs
from tests.test_paper_cli import cli
import tests.test_webconfig as webconfig
from tests import test_dashboards, polling
from reconciler.test_reconciler_cli import run

def late():
    from test_freqtrade_e2e import heal
from aiohttp.test_utils import TestClient
import test_utils
from up_process import UpProcess
from tests import ports
from test_not_a_module_here import x
"""
    tests = {"test_stack", "test_docs", "test_paper_cli", "test_webconfig", "test_dashboards", "test_reconciler_cli"}
    assert imports_of_test_modules(source, tests | {"test_freqtrade_e2e"}) == [
        (2, "test_stack"),
        (3, "test_docs"),
        (4, "tests.test_paper_cli"),
        (5, "tests.test_webconfig"),
        (6, "tests.test_dashboards"),
        (7, "reconciler.test_reconciler_cli"),
        (10, "test_freqtrade_e2e"),
    ]
    # Against this checkout's files: the names are those of the test modules under tests/, at any depth.
    assert {"test_stack", "test_test_layout", "test_reconciler_cli"} <= names_of_test_modules()
    assert not names_of_test_modules() & {"up_process", "polling", "conftest"}


def test_make_bench_runs_every_benchmark_but_those_its_comment_names_to_run_alone() -> None:
    """`make bench` is every benchmark: a new one is added to it, or named in the comment above it as one to run on
    its own (an hour's soak, whole topologies as root). Twelve had been left out of it unnoticed."""
    makefile = (TESTS.parent / "Makefile").read_text()
    start = makefile.index("\nbench:")
    comment = makefile[makefile.rindex("\n\n", 0, start) : start]
    recipe = makefile[start : makefile.index("\n\n", start)]
    benchmarks = sorted(str(p.relative_to(TESTS.parent)) for p in BENCHMARKS.rglob("bench_*.py"))
    run = [b for b in benchmarks if f"$(PY) {b}" in recipe]
    alone = [b for b in benchmarks if b in comment.replace("\n# ", "")]
    assert alone, comment
    assert [b for b in benchmarks if b not in run and b not in alone] == []
    assert set(run).isdisjoint(alone)
