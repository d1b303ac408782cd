"""trading-ops as a user runs it, for the tests of the paper bot's process: the console script beside this Python
on this checkout's code, and a started bot's /healthz waited for."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from system_binaries import REPO_ROOT

# The console script a user runs (beside this Python), on this checkout's code.
CONSOLE_SCRIPT = Path(sys.executable).parent / "trading-ops"


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )


def wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    # A deadline for a busy machine, not a measure: the bot's start (imports, migrations, the startup reconciliation)
    # took over 30 s while the machine ran other suites.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the bot exited while starting"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the paper bot did not answer 200 on http://127.0.0.1:{port}/healthz within {timeout:.0f} s")
