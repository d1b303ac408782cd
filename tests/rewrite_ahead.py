"""pytest's assertion rewriting of the tests' modules, done once before the lanes start instead of once in each.

Every xdist worker collects the whole suite, and pytest rewrites the asserts of each module it imports from tests/
(the test modules, the conftests, the helpers registered in conftest.py): a third of a worker's collection (about
5 CPU-seconds each on this machine), done again by every worker at the same moment, because with
`PYTHONDONTWRITEBYTECODE` set (as on this machine) pytest writes no cache of its own, and without it the workers start
together and each rewrites before another has written. It still reads a cache it finds: the lanes' main process
writes one, for every module under tests/, in pytest's own format (hash-checked: a stale file is rewritten, never
used), split over two processes. Only pytest's code rewrites: its private helpers are used, for the pinned pytest
(constraints.txt); a change of theirs costs the time saved, never a result (pytest then rewrites in each lane)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

try:
    from _pytest.assertion import rewrite
    from _pytest.assertion.rewrite import assertstate_key
except ImportError:  # a pytest whose private helpers moved: each lane rewrites, as without this module
    rewrite = None  # type: ignore[assignment]

TESTS = Path(__file__).resolve().parent


def rewrite_modules(config: pytest.Config, modules: list[Path]) -> int:
    """The rewritten code of each of `modules` cached where pytest looks for it (an up-to-date cache is left alone);
    how many were written."""
    state = config.stash[assertstate_key]
    written = 0
    for module in modules:
        cache_dir = rewrite.get_cache_dir(module)
        pyc = cache_dir / (module.name[:-3] + rewrite.PYC_TAIL)
        if rewrite._read_pyc(module, pyc) is not None:
            continue
        if not rewrite.try_makedirs(cache_dir):
            return written  # a read-only checkout: the workers rewrite, as without this
        try:
            source_hash, code = rewrite._rewrite_test(module, config)
        except (SyntaxError, OSError, UnicodeDecodeError):
            continue  # the lane that imports it reports it, as pytest does
        written += rewrite._write_pyc(state, code, source_hash, pyc)
    return written


def rewrite_ahead(config: pytest.Config) -> None:
    """In a run of the whole of tests/, rewrite every module under it into pytest's cache, in this process and one
    forked child (two CPUs)."""
    if rewrite is None or config.getoption("assertmode") != "rewrite" or assertstate_key not in config.stash:
        return
    if not any(Path(config.invocation_params.dir, arg.split("::")[0]).resolve() == TESTS for arg in config.args):
        return  # a run of some modules: the lanes rewrite what they import, less than all of tests/
    modules = sorted(TESTS.rglob("*.py"))
    mine, theirs = modules[0::2], modules[1::2]
    child = os.fork()
    if child == 0:
        code = 1
        try:
            rewrite_modules(config, theirs)
            code = 0
        finally:
            os._exit(code)
    try:
        rewrite_modules(config, mine)
    except (AttributeError, TypeError):
        pass  # a pytest whose private helpers changed: the lanes rewrite what this did not
    finally:
        os.waitpid(child, 0)
