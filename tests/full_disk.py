"""A filesystem that fills, for the tests of a journal on a full disk: a small tmpfs mounted for the test (root), and
a file written into it until not one byte is left."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (mount's notation, e.g. 64m) mounted at `path`, unmounted after it whatever happened."""
    if os.geteuid() != 0:
        pytest.fail("mounting the test's tmpfs needs root", pytrace=False)
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"mount -t tmpfs failed: {done.stderr.strip()}", pytrace=False)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=30, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30, check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no byte left (ENOSPC), then return it. Unbuffered: a write that failed
    must not be retried by a buffer's flush at close."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        for size in (1 << 20, 4096, 1):
            block = b"\0" * size
            while True:
                try:
                    out.write(block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    return filler
