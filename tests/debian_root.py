"""A Debian bookworm root made by debootstrap, for the deployment tests: real systemd booted with systemd-nspawn, and
the base image a real Docker engine builds the project's image from (`docker import`); and the wheelhouse both install
trading-ops' dependencies from (Debian's Python 3.11).

A root takes about a minute and a few hundred MB to make, so it is made once per machine and cached outside the
repository, under ``$XDG_CACHE_HOME/trading-ops/roots`` (``~/.cache`` by default), keyed by what it holds (suite,
variant, packages): a test run reuses it, a change of its package list makes a new one. Two test workers that ask for
the same root at once wait for one build (a file lock). The cached root is never written by a test: copy it (`copy`)
or mount it read-only and give the test its own writable overlay.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from system_binaries import REPO_ROOT, require_binary

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# A root takes a minute or two on a quiet machine; 12:48 (trixie) and over 15 minutes (bookworm with openssh-server)
# were seen on the 2-core machine at a load of 40-60, eight engineers' tests beside it.
DEBOOTSTRAP_SECONDS = 1800
# A root that boots under systemd-nspawn and runs the project with Debian's own Python.
SYSTEMD_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "ca-certificates")
# Debian's Python per release: the wheelhouse is downloaded for the root's interpreter.
PYTHONS = {"bookworm": "3.11", "trixie": "3.13"}


def wheel_target(python: str = PYTHONS[SUITE]) -> list[str]:
    """pip download's options for CPython `python` (3.11: Debian bookworm's, 3.13: trixie's) on x86_64 Linux."""
    abi = "cp" + python.replace(".", "")
    return [
        "--only-binary=:all:",
        f"--python-version={python}",
        "--implementation=cp",
        f"--abi={abi}",
        "--platform=manylinux_2_28_x86_64",
        "--platform=manylinux_2_17_x86_64",
        "--platform=manylinux2014_x86_64",
        "--platform=linux_x86_64",
    ]


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "trading-ops" / "roots"


def apt_mirror() -> str:
    """The Debian mirror this machine's apt already uses (deb822 `.sources` or a one-line `sources.list`)."""
    candidates = sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]
    for path in candidates:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        for raw in text.splitlines():
            line = raw.strip()
            if line.startswith("URIs:"):
                for uri in line.split()[1:]:
                    if "security" not in uri:
                        return uri.rstrip("/")
            elif line.startswith("deb ") and "security" not in line:
                parts = [part for part in line.split() if not part.startswith("[")]
                if len(parts) >= 2 and parts[1].startswith(("http://", "https://", "file:")):
                    return parts[1].rstrip("/")
    return DEFAULT_MIRROR


def root_key(packages: Sequence[str], *, variant: str = "minbase", suite: str = SUITE) -> str:
    spec = "\n".join([suite, variant, *sorted(set(packages))])
    return f"{suite}-{variant}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def debian_root(packages: Sequence[str] = SYSTEMD_PACKAGES, *, variant: str = "minbase", suite: str = SUITE) -> Path:
    """The cached root of Debian `suite` holding `packages` (made now if this machine has none yet). Fails the test,
    never skips it, with one line when debootstrap or root is missing or the mirror cannot be reached."""
    if os.geteuid() != 0:
        pytest.fail("the deployment tests need root (debootstrap, systemd-nspawn, dockerd)", pytrace=False)
    debootstrap = require_binary("debootstrap")
    target = cache_dir() / root_key(packages, variant=variant, suite=suite)
    with _locked(target.with_suffix(".lock")):
        if (target / ".complete").exists():
            return target
        building = target.with_name(target.name + ".building")
        _unmount_under(building)
        shutil.rmtree(building, ignore_errors=True)
        command = [
            debootstrap,
            f"--variant={variant}",
            f"--include={','.join(sorted(set(packages)))}",
            suite,
            str(building),
            apt_mirror(),
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=DEBOOTSTRAP_SECONDS, check=False)
        finally:
            # A debootstrap killed half-way (a timeout, an interrupted test) leaves the root's /proc and /sys mounted.
            _unmount_under(building)
        if result.returncode != 0:
            shutil.rmtree(building, ignore_errors=True)
            last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            pytest.fail(f"debootstrap of a {suite} root failed (exit {result.returncode}): {last[0]}", pytrace=False)
        # apt's downloaded .debs are not part of the root.
        shutil.rmtree(building / "var/cache/apt/archives", ignore_errors=True)
        (building / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        (building / ".complete").write_text(" ".join(sorted(set(packages))) + "\n", encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)
        building.rename(target)
    return target


def _unmount_under(path: Path) -> None:
    """Unmount whatever is mounted at or below `path` (deepest first), so that removing it cannot reach into /proc,
    /sys or a bind-mounted /dev of the host."""
    prefix = str(path.resolve())
    mounts = []
    with open("/proc/self/mounts", encoding="utf-8") as handle:
        for line in handle:
            point = line.split()[1].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False, timeout=60)


def copy_root(source: Path, destination: Path) -> Path:
    """A writable copy of a cached root (hard links would let a test write through to the cache, so it copies;
    `cp -a --reflink=auto` keeps owners, modes, devices and extended attributes)."""
    subprocess.run(["cp", "-a", "--reflink=auto", f"{source}/.", str(destination)], check=True, timeout=600)
    return destination


def project_requirements() -> list[str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    return [
        *project["project"]["dependencies"],
        *project["project"]["optional-dependencies"]["postgres"],
        *project["project"]["optional-dependencies"]["mailbox"],
        *project["build-system"]["requires"],
    ]


def wheelhouse(python: str = PYTHONS[SUITE]) -> Path:
    """constraints.txt's wheels for Debian's Python `python` (bookworm's by default; with the build backend),
    downloaded once per machine and cached under ~/.cache/trading-ops/wheelhouse, keyed by constraints.txt, the
    project's requirements and the interpreter: one set for the deployment tests, the compose test's image build and
    the systemd test's virtualenv, another for the systemd page's run on Debian 13."""
    requirements = project_requirements()
    constraints = REPO_ROOT / "constraints.txt"
    target_options = wheel_target(python)
    spec = constraints.read_bytes() + "\n".join([*requirements, *target_options]).encode()
    target = cache_dir().parent / "wheelhouse" / hashlib.sha256(spec).hexdigest()[:16]
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return target
        building = target.with_name(target.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--dest",
            str(building),
            *target_options,
            "-c",
            str(constraints),
        ]
        result = subprocess.run([*command, *requirements], capture_output=True, text=True, timeout=900, check=False)
        if result.returncode != 0:
            last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            pytest.fail(f"pip download of the image's wheels failed: {last[0]}", pytrace=False)
        (building / ".complete").write_text("\n".join(requirements) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        building.rename(target)
    return target
