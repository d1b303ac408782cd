"""Secrets written as a deployment must write them: readable by their owner alone (0600), since every service and
`config check` refuse a secret or private-key file others can read (trading_ops.secret_files)."""

from __future__ import annotations

from pathlib import Path


def write_secret(path: Path, text: str) -> Path:
    """`text` into `path`, mode 0600; the path."""
    path.write_text(text)
    path.chmod(0o600)
    return path
