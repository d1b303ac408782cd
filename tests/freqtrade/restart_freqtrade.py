"""Restart the test's freqtrade, as a service manager would: the reconciler's exec action runs this with a fixed argv.

Usage: restart_freqtrade.py PIDFILE LOGFILE FREQTRADE-ARGV...
Kills the process in PIDFILE (continuing it first if it is stopped), starts FREQTRADE-ARGV in its own session (so it
outlives this script and the reconciler's action), writes its pid to PIDFILE and exits 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

KILL_WAIT_SECONDS = 10.0


def main(argv: list[str]) -> int:
    pidfile, logfile, command = Path(argv[0]), Path(argv[1]), argv[2:]
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        pid = 0
    if pid > 0:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
        end = time.monotonic() + KILL_WAIT_SECONDS
        while time.monotonic() < end:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
    with open(logfile, "ab") as log:
        # PYTHONFAULTHANDLER: SIGABRT makes it print every thread's Python stack to its stderr, as the tests' own
        # freqtrade does (freqtrade_helpers.diagnose: where a hung one hangs).
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True, env=env)
    pidfile.write_text(str(proc.pid))
    print(f"restarted freqtrade: pid {pid} -> {proc.pid}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
