"""A Debian root booted under real systemd with systemd-nspawn, with trading-ops installed as a user would install it
(a virtualenv at /opt/trading-ops/.venv made by Debian's python3 and pip from wheels), for the deployment tests.

The cached root (tests/debian_root.py) is never written: the machine runs on an overlay whose lower layers are the
root and a cached layer holding the virtualenv with trading-ops' dependencies (built once per root and wheelhouse:
tests/debian_root.py's, which the compose test's image build installs from too, one download for both), and whose
upper layer is the test's own. Only the project's wheel is installed per run (`pip install --no-deps`, a second or
two), so a change of the code is always what runs. Commands run inside through `nsenter -t <its systemd>`; the
machine is stopped by the pid of its systemd-nspawn (SIGTERM: a clean poweroff; SIGKILL after a deadline)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import pytest
from debian_root import SYSTEMD_PACKAGES, _locked, cache_dir, debian_root, wheelhouse
from system_binaries import REPO_ROOT, require_binary

# polkitd answers systemd's "may this user restart that unit" (the reconciler's polkit rule; it needs logind,
# libpam-systemd); part of the root so that no test installs it.
ROOT_PACKAGES = (*SYSTEMD_PACKAGES, "libpam-systemd", "polkitd")
# A bot host reached over SSH (tests/deploy/test_remote_hosts_real.py): the root's own OpenSSH server, Debian's package
# (its privilege separation user included), never a copy of the host's binary, which may be another release's.
SSH_ROOT_PACKAGES = (*ROOT_PACKAGES, "openssh-server")
VENV = "/opt/trading-ops/.venv"
# A boot on a busy 2-core machine, several machines booting at once (the fleet page boots three): a deadline, not a
# measurement.
BOOT_TIMEOUT_SECONDS = 180.0
POWEROFF_TIMEOUT_SECONDS = 20.0
COMMAND_TIMEOUT_SECONDS = 120.0
# How many of the console's last lines a failed boot quotes.
LOG_TAIL_LINES = 8
NSPAWN_NOISE = "Attempted to remove disk file system under"
# Beside an overlay's upper layer: the pid of the test process that mounted it (a killed run's mounts are reaped).
OWNER_FILE = "owner.pid"
MACHINE_PREFIX = "--machine=trading-ops-"


def _fail(message: str) -> NoReturn:
    pytest.fail(message, pytrace=False)


def _run(
    argv: Sequence[str | Path], timeout: float = 600.0, stdin: int | None = None
) -> subprocess.CompletedProcess[str]:
    command = [str(a) for a in argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, stdin=stdin)


def _must(result: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    if result.returncode != 0:
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        # systemd-nspawn's own remark about its propagation directory is no cause of anything.
        lines = [line for line in lines if NSPAWN_NOISE not in line] or ["no output"]
        _fail(f"{what} failed (exit {result.returncode}): {lines[-1]}")
    return result


def _pip() -> list[str]:
    return [sys.executable, "-m", "pip"]


def build_project_wheel(into: Path) -> Path:
    """The wheel of this checkout (built from a copy, so nothing is written into the worktree)."""
    into.mkdir(parents=True, exist_ok=True)
    source = into / "source"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(
        REPO_ROOT,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv", "var", "build", "dist", "site", "*.egg-info", "__pycache__"),
    )
    _must(_run([*_pip(), "wheel", "--no-deps", "--wheel-dir", into, source]), "building trading-ops' wheel")
    shutil.rmtree(source)
    return next(into.glob("trading_ops-*.whl"))


class Overlay:
    """A writable view of read-only layers (the first one on top): `merged`, written to `upper`."""

    def __init__(self, lowers: Sequence[Path], workdir: Path) -> None:
        self.lowers = list(lowers)
        self.upper = workdir / "upper"
        self.work = workdir / "work"
        self.merged = workdir / "merged"
        self.mounted = False

    def mount(self) -> Path:
        for path in (self.upper, self.work, self.merged):
            path.mkdir(parents=True, exist_ok=True)
        lower = ":".join(str(p) for p in self.lowers)
        options = f"lowerdir={lower},upperdir={self.upper},workdir={self.work}"
        (self.upper.parent / OWNER_FILE).write_text(str(os.getpid()))
        _must(_run(["mount", "-t", "overlay", "overlay", "-o", options, self.merged], 60), "mounting the overlay")
        self.mounted = True
        return self.merged

    def unmount(self) -> None:
        if self.mounted:
            result = _run(["umount", self.merged], 60)
            if result.returncode != 0:
                _run(["umount", "-l", self.merged], 60)
            self.mounted = False


def nspawn_pipe(root: Path, script: str, binds: Sequence[tuple[Path, str]] = (), timeout: float = 600.0) -> str:
    """Run a shell script in `root` with systemd-nspawn without booting it (apt, pip, useradd)."""
    argv: list[str | Path] = [
        require_binary("systemd-nspawn"),
        "--quiet",
        "--register=no",
        "--keep-unit",
        "--pipe",
        "-D",
        root,
    ]
    argv += [f"--machine=trading-ops-{uuid.uuid4().hex[:10]}"]
    argv += [f"--bind-ro={host}:{inside}" for host, inside in binds]
    argv += ["/bin/sh", "-euc", script]
    return _must(_run(argv, timeout, stdin=subprocess.DEVNULL), f"in the root: {script.splitlines()[0][:80]}").stdout


def venv_layer(root: Path, wheels: Path, requirements: Sequence[str]) -> Path:
    """An overlay layer over `root` holding /opt/trading-ops/.venv with trading-ops' dependencies, `requirements`,
    installed from the wheelhouse `wheels` (cached)."""
    spec = "\n".join([root.name, wheels.name, VENV, *requirements])
    key = hashlib.sha256(spec.encode()).hexdigest()[:12]
    target = cache_dir().parent / "layers" / f"venv-{key}"
    with _locked(target.with_suffix(".lock")):
        if (target / "opt" / "trading-ops" / ".complete").exists():
            return target
        building = target.with_name(target.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        overlay = Overlay([root], building)
        merged = overlay.mount()
        try:
            nspawn_pipe(
                merged,
                f"python3 -m venv {VENV}\n"
                f"{VENV}/bin/pip install --quiet --no-index --no-cache-dir --find-links /wheels "
                f"{shlex.join(requirements)}",
                binds=[(wheels, "/wheels")],
            )
            (merged / "opt" / "trading-ops" / ".complete").write_text(wheels.name + "\n", encoding="utf-8")
        finally:
            overlay.unmount()
        shutil.rmtree(building / "work", ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        (building / "upper").rename(target)
        shutil.rmtree(building, ignore_errors=True)
    return target


class Machine:
    """A booted systemd (`boot()`); `run()` executes inside it; `poweroff()` stops it by its nspawn's pid."""

    def __init__(self, root: Path, log: Path, options: Sequence[str] = ()) -> None:
        self.root = root
        self.log = log
        # More systemd-nspawn options, e.g. --network-namespace-path= of a test host (tests/netns_hosts.py).
        self.options = list(options)
        self.name = f"trading-ops-{uuid.uuid4().hex[:10]}"
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.pid = 0  # the machine's systemd, as the host sees it

    def log_tail(self) -> str:
        """The console's last lines (the machine's boot as systemd-nspawn showed it), and where the rest is."""
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()[-LOG_TAIL_LINES:]
        except OSError:
            lines = []
        return " | ".join([*lines, f"(all of it: {self.log})"])

    def boot(self) -> None:
        nspawn = require_binary("systemd-nspawn")
        argv = [nspawn, "-D", str(self.root), "--boot", "--register=no", "--keep-unit", "--console=pipe"]
        argv += [f"--machine={self.name}", *self.options]
        with open(self.log, "ab") as out:
            self.nspawn = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + BOOT_TIMEOUT_SECONDS
        while not self.pid:
            if self.nspawn.poll() is not None:
                _fail(f"systemd-nspawn exited {self.nspawn.returncode} while booting: {self.log_tail()}")
            children = _run(["ps", "--ppid", str(self.nspawn.pid), "-o", "pid=,comm="], 10).stdout.split()
            if len(children) >= 2 and children[1] == "systemd":
                self.pid = int(children[0])
            elif time.monotonic() > deadline:
                _fail(f"no systemd started under systemd-nspawn within {BOOT_TIMEOUT_SECONDS:g}s: {self.log_tail()}")
            else:
                time.sleep(0.05)
        while True:
            left = max(1.0, deadline - time.monotonic())
            try:
                state = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=left)
            except subprocess.TimeoutExpired:
                _fail(f"the machine did not finish booting within {BOOT_TIMEOUT_SECONDS:g}s: {self.log_tail()}")
            if state.stdout.strip() in ("running", "degraded"):
                return
            if time.monotonic() > deadline:
                _fail(f"the machine did not finish booting ({state.stdout.strip()}): {self.log_tail()}")
            time.sleep(0.2)

    def run(
        self,
        *argv: str,
        user: str | None = None,
        check: bool = True,
        timeout: float = COMMAND_TIMEOUT_SECONDS,
        input: str | None = None,  # noqa: A002
    ) -> subprocess.CompletedProcess[str]:
        """`argv` inside the machine (as `user` through runuser, else root); `check`: fail the test on an error."""
        command = ["nsenter", "-t", str(self.pid), "-a", "--"]
        if user is not None:
            command += ["runuser", "-u", user, "--"]
        result = subprocess.run(
            [*command, *argv], capture_output=True, text=True, timeout=timeout, check=False, input=input
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)}: exit {result.returncode}: {(result.stderr or result.stdout)[-2000:]}"
            )
        return result

    def systemctl(self, *args: str, user: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, user=user, check=check)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        shown = self.systemctl("show", "--timestamp=unix", f"--property={','.join(props)}", unit).stdout
        return dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)

    def journal(self, unit: str, since: str | None = None) -> str:
        args = ["journalctl", "--no-pager", "-o", "cat", "-u", unit]
        if since:
            args += ["--since", since]
        return self.run(*args, check=False).stdout

    def poweroff(self) -> None:
        """Stop the machine by its nspawn's pid: SIGTERM makes nspawn halt the container cleanly; SIGKILL if that
        takes longer than POWEROFF_TIMEOUT_SECONDS."""
        proc = self.nspawn
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(POWEROFF_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def prepared_root() -> tuple[Path, Path]:
    """The cached root (with polkitd) and the cached layer with trading-ops' dependencies (its runtime ones, from the
    wheelhouse the compose test's image build uses too) installed over it."""
    root = debian_root(ROOT_PACKAGES)
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    return root, venv_layer(root, wheelhouse(), dependencies)


def reap_killed_runs(cache: Path | None = None) -> list[str]:
    """At a run's start: what a killed run left of its machines, stopped and unmounted by pid and path, never a live
    run's (reap_machines, then reap_overlays). Left mounted, the next run's root or layer build over the same cache
    failed. What was reaped, one line each."""
    return reap_machines() + reap_overlays(cache or cache_dir())


def reap_machines() -> list[str]:
    """Each systemd-nspawn of ours (--machine=trading-ops-...) whose test process is gone (its parent no longer a
    Python process: it was handed to init), stopped (SIGTERM: a clean poweroff; SIGKILL after the deadline)."""
    reaped = []
    for pid, argv in _processes():
        if argv[0].endswith("systemd-nspawn") and any(a.startswith(MACHINE_PREFIX) for a in argv):
            if not _parent_is_python(pid):
                _stop(pid)
                reaped.append(f"systemd-nspawn {pid} ({' '.join(argv[-3:])})")
    return reaped


def reap_overlays(cache: Path) -> list[str]:
    """Each overlay over the cached layers under `cache` whose owner (OWNER_FILE) is dead and that no systemd-nspawn
    runs on, unmounted."""
    reaped = []
    running_on = {arg for _, argv in _processes() if argv[0].endswith("systemd-nspawn") for arg in argv}
    for mountpoint, options in _overlays():
        if str(cache) not in options or mountpoint in running_on:
            continue
        try:
            pid = int((Path(mountpoint).parent / OWNER_FILE).read_text())
        except (OSError, ValueError):
            pid = 0
        if pid and Path(f"/proc/{pid}").exists():
            continue  # a live run's, between its mount and its machine's start
        if _run(["umount", mountpoint], 60).returncode != 0:
            _run(["umount", "-l", mountpoint], 60)
        reaped.append(f"overlay {mountpoint}")
    return reaped


def _processes() -> list[tuple[int, list[str]]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
                if argv and argv[0]:
                    found.append((int(entry.name), argv))
    return found


def _parent_is_python(pid: int) -> bool:
    try:
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        parent = Path(f"/proc/{ppid}/cmdline").read_bytes().split(b"\0")[0]
    except (OSError, IndexError, ValueError):
        return False
    return ppid != 1 and b"python" in Path(parent.decode(errors="replace")).name.encode()


def _stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + POWEROFF_TIMEOUT_SECONDS
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _overlays() -> list[tuple[str, str]]:
    """(mount point, super options) of every overlay mount of this mount namespace."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, rest = line.partition(" - ")
        parts = rest.split()
        if len(parts) >= 3 and parts[0] == "overlay":
            found.append((fields.split()[4].replace("\\040", " "), parts[2]))
    return found
