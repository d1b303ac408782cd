"""Secrets written as a deployment must write them: readable by their owner alone (a 0600 file in a 0700 folder), since
every service and `config check` refuse a secret or private-key file others can read (trading_ops.secret_files)."""

from __future__ import annotations

import os
from pathlib import Path


def write_secret(path: Path, text: str) -> Path:
    """`text` into `path`, a file of mode 0600 from its first byte, in a folder of mode 0700 (made if missing); the
    path."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)  # a secret's folder its owner's alone too: no one else lists or swaps what it holds
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)  # a file that was there before keeps its mode through O_CREAT: made its owner's alone here
    return path
