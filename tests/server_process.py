"""A server a test runs as a process: wait until its HTTP endpoint answers, stop it whatever state it is in."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from typing import Any


def wait_http(url: str, deadline: float = 20.0, proc: subprocess.Popen[Any] | None = None) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {deadline}s")


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
