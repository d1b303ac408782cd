"""A checkout as `make run` leaves it, for the tests that run the documented commands in one (the docs' examples,
the README's tour)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from secret_file import write_secret
from system_binaries import REPO_ROOT

SECRETS_MAKE_RUN_WRITES = (
    "control-token",
    "reconciler-token",
    "reconciler-read-token",
    "reconciler-approve-token",
    "alice-token",
    "bob-token",
)


# What a documented command writes into (`trading-ops rules render` writes prometheus/rules/): copied, so that it
# writes into the test's checkout, never into the repository other tests read meanwhile.
WRITTEN = {"prometheus"}


def make_checkout(root: Path) -> Path:
    """A checkout as `make run` leaves it in `root`: the repository's files, trading-ops.yaml (the Makefile's copy of
    the example) and the tokens it writes."""
    for entry in REPO_ROOT.iterdir():
        if entry.name in WRITTEN:
            shutil.copytree(entry, root / entry.name)
        elif entry.name not in {"var", "trading-ops.yaml", ".git", ".venv", "site"}:
            (root / entry.name).symlink_to(entry)
    # Written by the Makefile's own rule, as `make run` writes it (the example, its backups kept on this host).
    subprocess.run(["make", "--no-print-directory", "-s", "-C", str(root), "trading-ops.yaml"], check=True, timeout=60)
    (root / "var" / "secrets").mkdir(parents=True, mode=0o700)
    for index, name in enumerate(SECRETS_MAKE_RUN_WRITES):
        secret = root / "var" / "secrets" / name
        write_secret(secret, f"docs-example-token-{index}-{'x' * 24}\n")
        secret.chmod(0o600)
    return root
