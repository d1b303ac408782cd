"""Where the highly available topology's Debian parts (etcd, Patroni, PostgreSQL's server, Prometheus, Alertmanager, the
node exporter: tests/ha_topology.py) come from: this host's own binaries (Debian 12), or a Debian 13 root's.

A release names how to run a Debian program (`Release`); `debian_parts` makes it ready for one topology and yields the
`DebianParts` its hosts run their programs with. Debian 13's root is the cached trixie root with its run-deps layer
and a layer of HA_PACKAGES (tests/debian13_root.py), mounted as an overlay of the test's own; a program runs in it
with `chroot` inside its host's network namespace (`ip netns exec NS chroot ROOT ...`), the test's data folders
bind-mounted into the root at the same paths, and /dev, /proc and /sys the host's. The project's Python (the
reconciler replicas, the example bot, the gateway) stays on the checkout's virtualenv either way."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from pg_cluster import server_binary
from system_binaries import alertmanager_binary, prometheus_binary, require_binary

# The Debian parts' binaries by their Debian 12 names (Debian 13's are the same, under /usr/bin in its root).
BINARIES = ("etcd", "patroni", "patronictl", "prometheus", "prometheus-alertmanager", "prometheus-node-exporter")
# What a program inside the root sees of this machine (its devices, /dev/shm for PostgreSQL's shared memory, and the
# kernel's views the node exporter reads).
SYSTEM_BINDS = ("/dev", "/proc", "/sys")
# By its path: Patroni's environment has no /usr/sbin on PATH.
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"


@dataclass(frozen=True)
class Release:
    """A Debian release the topology's Debian parts come from: `debian12` (this host's own binaries, on PATH) or
    `debian13` (a Debian 13 root's)."""

    name: str
    in_root: bool


DEBIAN12 = Release("debian12", in_root=False)
DEBIAN13 = Release("debian13", in_root=True)
RELEASES = (DEBIAN12, DEBIAN13)


@dataclass(frozen=True)
class DebianParts:
    """How a topology runs its Debian programs: on this host (`root` None) or inside the mounted root `root`."""

    release: Release
    root: Path | None = None

    def binary(self, name: str) -> str:
        """The path of `name` as the program runs it (inside the root, its own path there); a missing one fails the
        test with the package to install."""
        if self.root is None:
            if name == "prometheus":
                return prometheus_binary()
            if name == "prometheus-alertmanager":
                return alertmanager_binary()
            return require_binary(name)
        path = Path("/usr/bin") / name
        if not os.access(self.root / path.relative_to("/"), os.X_OK):
            pytest.fail(f"{name} is not in the {self.release.name} root ({self.root})", pytrace=False)
        return str(path)

    def pg_bin_dir(self) -> Path:
        """PostgreSQL's server programs (pg_ctl, pg_controldata, ...) as the program sees them: Patroni's `bin_dir`."""
        if self.root is None:
            return Path(server_binary("pg_ctl")).parent
        found = sorted(self.root.glob("usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
        if not found:
            pytest.fail(f"PostgreSQL's server is not in the {self.release.name} root ({self.root})", pytrace=False)
        return Path("/") / found[-1].parent.relative_to(self.root)

    def postgres_ids(self) -> tuple[int, int]:
        """The postgres user's uid and gid where PostgreSQL runs (the root's own /etc/passwd: they may differ from
        this host's); its data folders are chowned to them."""
        if self.root is None:
            entry = pwd.getpwnam("postgres")
            return entry.pw_uid, entry.pw_gid
        for line in (self.root / "etc" / "passwd").read_text(encoding="utf-8").splitlines():
            fields = line.split(":")
            if fields[0] == "postgres":
                return int(fields[2]), int(fields[3])
        pytest.fail(f"no postgres user in the {self.release.name} root ({self.root})", pytrace=False)

    def argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` as root runs it (in the root: `chroot ROOT argv`)."""
        return list(argv) if self.root is None else [CHROOT, str(self.root), *argv]

    def as_postgres(self, argv: Sequence[str]) -> list[str]:
        """`argv` as the postgres user (PostgreSQL refuses to run as root), with its groups."""
        if self.root is None:
            return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv]
        uid, gid = self.postgres_ids()
        return [CHROOT, f"--userspec={uid}:{gid}", str(self.root), *argv]

    def chown_postgres(self, path: Path) -> None:
        uid, gid = self.postgres_ids()
        os.chown(path, uid, gid)

    def require(self) -> None:
        """Fail the test at once, with the package to install, when a part is missing."""
        for name in BINARIES:
            self.binary(name)
        self.pg_bin_dir()
        if self.root is None:
            require_binary("setpriv")


def _must(argv: Sequence[str], what: str) -> None:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        pytest.fail(f"{what} failed (exit {result.returncode}): {result.stderr.strip()[-300:]}", pytrace=False)


@contextlib.contextmanager
def debian_parts(release: Release, workdir: Path, binds: Sequence[Path]) -> Iterator[DebianParts]:
    """`release`'s parts ready for one topology: for a root, its cached layers (built now if this machine has none)
    mounted as an overlay in `workdir`, with SYSTEM_BINDS and `binds` (the test's data folders) at the same paths
    inside, every mount undone at the end whatever happened (after the topology's processes are stopped)."""
    if not release.in_root:
        parts = DebianParts(release)
        parts.require()
        yield parts
        return
    from debian13_root import ha_layer, prepared_root
    from nspawn_machine import Overlay

    root, run_deps = prepared_root()
    overlay = Overlay([ha_layer(root, run_deps), run_deps, root], workdir)
    merged = overlay.mount()
    mounted: list[Path] = []
    try:
        for source in [Path(p) for p in SYSTEM_BINDS] + [Path(p) for p in binds]:
            inside = merged / source.relative_to("/")
            inside.mkdir(parents=True, exist_ok=True)
            _must(["mount", "--rbind", str(source), str(inside)], f"binding {source} into the root")
            _must(["mount", "--make-rslave", str(inside)], f"making {inside} a slave mount")
            mounted.append(inside)
        parts = DebianParts(release, merged)
        parts.require()
        yield parts
    finally:
        for inside in reversed(mounted):
            if subprocess.run(["umount", "-R", str(inside)], capture_output=True, timeout=60, check=False).returncode:
                subprocess.run(["umount", "-R", "-l", str(inside)], capture_output=True, timeout=60, check=False)
        overlay.unmount()
        shutil.rmtree(workdir / "work", ignore_errors=True)
