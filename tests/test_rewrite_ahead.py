"""tests/rewrite_ahead.py: what the lanes' main process writes ahead is what pytest reads back, with the asserts
rewritten, and a module changed since is rewritten, not run as it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _pytest.assertion import rewrite
from rewrite_ahead import rewrite_modules


def test_a_module_rewritten_ahead_is_read_back_by_pytest_with_its_asserts_rewritten(
    pytestconfig: pytest.Config, tmp_path: Path
) -> None:
    module = tmp_path / "test_sample.py"
    module.write_text("def check(x):\n    assert x == 2\n")
    pyc = rewrite.get_cache_dir(module) / (module.stem + rewrite.PYC_TAIL)
    assert rewrite_modules(pytestconfig, [module]) == 1
    assert rewrite_modules(pytestconfig, [module]) == 0  # up to date: left alone

    code = rewrite._read_pyc(module, pyc)  # as pytest's import hook reads it
    assert code is not None
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    with pytest.raises(AssertionError, match=r"assert 1 == 2"):  # pytest's explanation: rewritten
        namespace["check"](1)

    module.write_text("def check(x):\n    assert x == 3\n")
    assert rewrite._read_pyc(module, pyc) is None  # stale (hash-checked): pytest would not use it
    assert rewrite_modules(pytestconfig, [module]) == 1
