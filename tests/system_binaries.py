"""The server binaries the monitoring tests run, and the Debian package that provides each of them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# Binary -> Debian package (the Makefile's system-deps target installs them).
DEBIAN_PACKAGES = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
    "docker-compose": "docker-compose",
    "systemd-analyze": "systemd",
    # A Debian root for the deployment tests: real systemd (booted with systemd-nspawn) and the image a real Docker
    # engine builds from (tests/debian_root.py).
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    # Runs commands inside the booted root (tests/nspawn_machine.py).
    "nsenter": "util-linux",
    "dockerd": "docker.io",
    "docker": "docker.io",
    "containerd": "docker.io",
    # The test's dockerd runs in network and mount namespaces of its own (tests/docker_engine.py).
    "unshare": "util-linux",
    "ip": "iproute2",
    # The operator console's browser tests (Playwright drives Debian's Chromium; no browser is ever downloaded).
    "chromium": "chromium",
    # The off-host backup repository's server and client (OpenSSH) and PostgreSQL's point-in-time recovery.
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "pgbackrest": "pgbackrest",
    # Copies pgBackRest's repository to the off-host backup repository (over SSH).
    "rsync": "rsync",
    # The reference high-availability deployment's test: PostgreSQL under Patroni (Debian's, on the system python3)
    # with etcd as its consensus store (tests/patroni_cluster.py).
    "patroni": "patroni",
    "etcd": "etcd-server",
}
# The Alertmanager server under Debian's name or upstream's, and the Prometheus server (None when not installed).
ALERTMANAGER_BIN = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
PROMETHEUS_BIN = shutil.which("prometheus")


def require_binary(name: str) -> str:
    """The path of `name`; fails the test (never skips it) with the package to install when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not on PATH: install the Debian package {DEBIAN_PACKAGES[name]!r} "
            f"(apt-get install {DEBIAN_PACKAGES[name]}; `make test` does it)",
            pytrace=False,
        )
    return path


def alertmanager_binary() -> str:
    """The Alertmanager server (Debian's name, or upstream's); a missing one fails the test, never skips it."""
    return ALERTMANAGER_BIN or require_binary("prometheus-alertmanager")


def prometheus_binary() -> str:
    """The Prometheus server; a missing one fails the test, never skips it."""
    return PROMETHEUS_BIN or require_binary("prometheus")


def run_binary(name: str, *args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a required binary and return its completed process (output captured as text)."""
    return subprocess.run(
        [require_binary(name), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120, check=False
    )
