"""The server binaries the monitoring tests run, and the Debian package that provides each of them; the two
generations of Prometheus and Alertmanager the rule and configuration tests run on."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import monitoring_lts
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
    "patronictl": "patroni",
    "etcd": "etcd-server",
    # The node exporter on a bot's test host: its `up` tells a dead host from a dead bot (test_host_down_e2e.py).
    "prometheus-node-exporter": "prometheus-node-exporter",
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


@dataclass(frozen=True)
class Generation:
    """Prometheus (with promtool) and Alertmanager (with amtool) of one generation: the system's, on PATH (Debian
    bookworm's 2.42 / 0.25), or the long-term-support line (3.5 / 0.33 from Debian's packages, unpacked into a cache
    by `make monitoring-lts`, never installed over the system's)."""

    name: str
    bin_dir: Path | None  # None: PATH

    def binary(self, name: str) -> str:
        """The path of `name` in this generation; a missing one fails the test (never skips it) saying how to get it."""
        if self.bin_dir is None:
            return require_binary(name)
        path = self.bin_dir / name
        if not os.access(path, os.X_OK):
            pytest.fail(
                f"{name} of Prometheus {monitoring_lts.PROMETHEUS_VERSION} / Alertmanager "
                f"{monitoring_lts.ALERTMANAGER_VERSION} is not in {self.bin_dir}: run `{monitoring_lts.FILL}` "
                "(it fetches Debian's packages once; `make test` does it)",
                pytrace=False,
            )
        return str(path)

    def path_env(self) -> dict[str, str]:
        """The environment with this generation's binaries first on PATH (how `trading-ops up` picks them)."""
        if self.bin_dir is None:
            return dict(os.environ)
        self.binary("prometheus")
        return {**os.environ, "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


SYSTEM = Generation("system", None)
LTS = Generation("lts", monitoring_lts.BIN_DIR)
# Both, for tests parametrized over them (ids "system" and "lts").
GENERATIONS = (SYSTEM, LTS)


def run_binary(
    name: str, *args: str | Path, cwd: Path | None = None, generation: Generation = SYSTEM
) -> subprocess.CompletedProcess[str]:
    """Run a required binary (of `generation`) and return its completed process (output captured as text)."""
    return subprocess.run(
        [generation.binary(name), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=280, check=False
    )
