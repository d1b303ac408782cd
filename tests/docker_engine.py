"""A real Docker engine for the deployment tests: this test run's own `dockerd`, started once per test session and
stopped by its pid.

The engine lives in network and mount namespaces of its own (`unshare --net --mount`): its bridges, the ports
compose publishes on 127.0.0.1 and the mounts of its containers exist only there, nothing it runs can reach any
address outside the machine (the namespace has a loopback and the engine's own bridges, no route out), and when it
stops its mounts go with the namespace. Its data root is cached under ``~/.cache/trading-ops/docker`` (one run at a
time holds it, by a file lock; a run that finds it held uses a fresh one), so the images it built and Docker's build
cache survive the run: the build cache is keyed by content (a changed Dockerfile or source file rebuilds from that
step on), and an imported Debian root is re-imported when its cache key (`debian_root.root_key`) changes.

    engine = DockerEngine.start(tmp)   # dockerd up, answering on engine.socket
    engine.docker("ps")                 # the docker CLI against it
    engine.stop()                       # containers, dockerd, leftovers of the namespace: by pid
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import pytest
from debian_root import cache_dir as roots_cache_dir
from system_binaries import require_binary

# Keep unix socket paths short (108 bytes): containerd's sockets live under the exec root.
SHORT_TMP = Path("/tmp")


def cache_dir() -> Path:
    return roots_cache_dir().parent / "docker"


class DockerEngine:
    def __init__(
        self, workdir: Path, data_root: Path, lock: IO[str] | None, netns: str = "", options: Sequence[str] = ()
    ) -> None:
        self.workdir = workdir
        # A network namespace to run in (a test host's, tests/netns_hosts.py) instead of one of its own, and more
        # dockerd options (e.g. --tlsverify and a tcp:// --host on that host's address).
        self.netns = netns
        self.options = list(options)
        self.data_root = data_root
        self.exec_root = workdir / "exec"
        self.socket = workdir / "docker.sock"
        self.pidfile = workdir / "docker.pid"
        self.log = workdir / "dockerd.log"
        self.cgroup_parent = f"trading-ops-test-{os.getpid()}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.mount_ns = ""
        self._lock = lock
        self.docker_bin = require_binary("docker")
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}
        self.env.pop("DOCKER_CONTEXT", None)

    @classmethod
    def start(cls, netns: str = "", options: Sequence[str] = ()) -> DockerEngine:
        """dockerd in namespaces of its own (or in the network namespace `netns`, with more `options`), with the
        cached data root when no other run holds it."""
        if os.geteuid() != 0:
            pytest.fail("the compose deployment test needs root (dockerd)", pytrace=False)
        for binary in ("dockerd", "containerd", "unshare", "ip"):
            require_binary(binary)
        workdir = Path(subprocess.check_output(["mktemp", "-d", str(SHORT_TMP / "tod-XXXXXX")], text=True).strip())
        cached = cache_dir() / "data-root"
        cached.parent.mkdir(parents=True, exist_ok=True)
        lock: IO[str] | None = open(cache_dir() / "data-root.lock", "a")  # noqa: SIM115 - held until stop()
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[arg-type]
            data_root = cached
            reap_engines_of(cached)  # the lock was free: a dockerd still on the data root is a killed run's
        except BlockingIOError:
            lock.close()  # type: ignore[union-attr]
            lock = None
            data_root = workdir / "data-root"
        engine = cls(workdir, data_root, lock, netns, options)
        try:
            engine._run_dockerd()
        except BaseException:
            engine.stop()
            raise
        return engine

    def _run_dockerd(self) -> None:
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.exec_root.mkdir(parents=True, exist_ok=True)
        dockerd = [
            require_binary("dockerd"),
            f"--data-root={self.data_root}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.pidfile}",
            f"--host=unix://{self.socket}",
            "--group=docker" if _group_exists("docker") else "--group=root",
            "--storage-driver=overlay2",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            f"--cgroup-parent={self.cgroup_parent}",
            "--exec-opt=native.cgroupdriver=cgroupfs",
            "--log-level=warn",
            "--containerd-namespace=trading-ops-test",
            "--containerd-plugins-namespace=trading-ops-test-plugins",
            *self.options,
        ]
        # unshare execs the shell, which execs dockerd: one process, this pid, in its own network and mount
        # namespaces (mounts are slaves of the host's: rslave bind mounts work, nothing propagates back).
        script = 'mount --make-rshared / && ip link set lo up && exec "$@"'
        argv = ["unshare", "--net", "--mount", "--propagation", "slave", "--", "sh", "-c", script, "dockerd", *dockerd]
        if self.netns:  # the test host's network, not one of its own; nsenter execs (the same pid) and, unlike `ip
            # netns exec`, mounts no /sys of its own over the cgroup hierarchies dockerd needs
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", *argv[:1], *argv[2:]]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"dockerd exited {self.proc.returncode}: {self.log_tail()}", pytrace=False)
            if self.socket.exists() and self.docker("version", check=False).returncode == 0:
                self.mount_ns = os.readlink(f"/proc/{self.proc.pid}/ns/mnt")
                self.reset()
                return
            time.sleep(0.2)
        pytest.fail(f"dockerd did not answer within 60 s: {self.log_tail()}", pytrace=False)

    def reset(self) -> None:
        """What an earlier run left in the cached data root (a run killed before its cleanup): its containers,
        networks and volumes, and images no tag names; not the build cache of the current images."""
        ids = self.docker("ps", "-aq").stdout.split()
        if ids:
            self.docker("rm", "-f", "-v", *ids)
        self.docker("network", "prune", "-f")
        self.docker("volume", "prune", "-f")
        # Images an earlier build replaced (untagged): the cached data root does not grow with every source change.
        self.docker("image", "prune", "-f")

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "no log"

    def docker(
        self, *args: str, check: bool = True, timeout: float = 600, input: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.docker_bin, *args],
            env=self.env,
            capture_output=True,
            timeout=timeout,
            check=False,
            input=input.decode() if input is not None else None,
            text=True,
        )
        if check and result.returncode != 0:
            last = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise AssertionError(f"docker {' '.join(args[:3])} failed (exit {result.returncode}): {' | '.join(last)}")
        return result

    def image_label(self, image: str, label: str) -> str | None:
        result = self.docker(
            "image", "inspect", "--format", f'{{{{index .Config.Labels "{label}"}}}}', image, check=False
        )
        return result.stdout.strip() if result.returncode == 0 else None

    def import_root(self, root: Path, image: str, key: str, changes: Sequence[str] = ()) -> None:
        """`docker import` a Debian root (a tar of it streamed to the engine) as `image`, unless the image there was
        imported from the same root (its label org.trading-ops.root). apt's sources and lists are left out: the
        engine has no network, so the image's apt installs only what the root already holds."""
        label = "org.trading-ops.root"
        if self.image_label(image, label) == key:
            return
        buffer = io.BytesIO()
        skip = ("./etc/apt/sources.list", "./var/lib/apt/lists/", "./.complete", "./var/cache/apt/")
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(str(root), arcname=".", filter=lambda info: None if info.name.startswith(skip) else info)
        argv = ["import", "--change", f"LABEL {label}={key}"]
        for change in changes:
            argv += ["--change", change]
        subprocess.run(
            [self.docker_bin, *argv, "-", image],
            env=self.env,
            input=buffer.getvalue(),
            capture_output=True,
            check=True,
            timeout=600,
        )

    def stop(self) -> None:
        """Every container, then dockerd (SIGTERM, SIGKILL after 30 s), then any process left in its namespace: all
        by pid. The namespace, and with it every mount the engine made, goes with its last process."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                ids = self.docker("ps", "-q", check=False, timeout=30).stdout.split()
                if ids:
                    self.docker("kill", *ids, check=False, timeout=60)
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            for pid in self.leftovers():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._remove_cgroups()
        finally:
            if self._lock is not None:
                fcntl.flock(self._lock, fcntl.LOCK_UN)
                self._lock.close()
                self._lock = None
            if self.data_root.is_relative_to(self.workdir) and not self.leftovers():
                shutil.rmtree(self.data_root, ignore_errors=True)
            shutil.rmtree(self.workdir, ignore_errors=True)

    def leftovers(self) -> list[int]:
        """Processes still in the engine's mount namespace (containerd shims, container processes)."""
        if not self.mount_ns:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(entry / "ns" / "mnt") == self.mount_ns:
                        found.append(int(entry.name))
        return found

    def _remove_cgroups(self) -> None:
        """The relative --cgroup-parent's directories, once empty: under dockerd's cgroup (this process's) in every
        hierarchy."""
        paths = {line.split(":", 2)[2].strip() for line in Path("/proc/self/cgroup").read_text().splitlines()}
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            for path in paths:
                directory = hierarchy / path.lstrip("/") / self.cgroup_parent
                if directory.is_dir():
                    for child in sorted(directory.glob("**/"), key=lambda p: len(p.parts), reverse=True):
                        with contextlib.suppress(OSError):
                            child.rmdir()


def reap_killed_runs() -> list[int]:
    """At a run's start: a dockerd a killed run left on the cached data root, stopped (reap_engines_of) when no live
    run holds the data root's lock; the pids stopped."""
    lock_path = cache_dir() / "data-root.lock"
    if not lock_path.exists():
        return []
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []  # a live run's engine
        try:
            return reap_engines_of(cache_dir() / "data-root")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def engines_of(data_root: Path) -> list[int]:
    """The pids of the dockerd processes serving `data_root` (by their command line's --data-root)."""
    wanted = f"--data-root={data_root}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if wanted in argv and any(arg.endswith(b"dockerd") for arg in argv):
                    found.append(int(entry.name))
    return found


def reap_engines_of(data_root: Path, wait: float = 30.0) -> list[int]:
    """Stop what a run killed before its cleanup left on `data_root` (whose lock this run now holds): each dockerd
    still serving it (SIGTERM, SIGKILL after `wait` seconds), then every process left in its mount namespace
    (containerd, shims, containers), all by pid; the pids of the engines stopped. Another dockerd on the same data root
    would fail on its lock, and the next run with it."""
    stopped = []
    for pid in engines_of(data_root):
        try:
            mount_ns = os.readlink(f"/proc/{pid}/ns/mnt")
        except OSError:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists() and not _zombie(pid):
            time.sleep(0.2)
        # The engine's own namespace (unshare --mount) holds only what it ran; never this run's own.
        others = _in_mount_namespace(mount_ns) if mount_ns != os.readlink("/proc/self/ns/mnt") else []
        for other in [pid, *others]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(other, signal.SIGKILL)
        stopped.append(pid)
    return stopped


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _in_mount_namespace(mount_ns: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "mnt") == mount_ns:
                    found.append(int(entry.name))
    return found


def _group_exists(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True
