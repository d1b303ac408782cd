"""A second host for the off-host backup tests: OpenSSH's real sshd, started by the test in a network namespace of its
own (a veth pair with addresses 10.231.X.Y/30 chosen here), with a host key and an authorized client key the test
generates. Where a namespace cannot be made it listens on loopback instead; without either the test fails (one line).

The namespace has its own network, not its own files: the repository directory is a directory of the test's, so a
test can look at (or damage) what reached the "other host"."""

from __future__ import annotations

import contextlib
import getpass
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ports import free_port
from system_binaries import require_binary

NETWORK = "10.231"  # 10.231.X.Y/30: X, Y chosen at random among the subnets no interface of this machine has
START_TIMEOUT_SECONDS = 15.0
# sshd's privilege separation directory (Debian's sshd refuses to start without it).
PRIVSEP_DIR = Path("/run/sshd")


@dataclass(frozen=True)
class SshHost:
    host: str
    port: int
    user: str
    identity_file: Path
    known_hosts_file: Path
    repository: Path  # the remote's repository directory, as this machine's file system sees it
    namespace: str  # "" on loopback
    pid: int

    def remote(self, **overrides: Any) -> dict[str, Any]:
        """A backup.remote section for this host."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "path": str(self.repository),
            "identity_file": str(self.identity_file),
            "known_hosts_file": str(self.known_hosts_file),
            **overrides,
        }


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)


def _free_subnet() -> tuple[str, str]:
    """(this side, the other side) of a /30 in NETWORK that no interface here is in."""
    used = _ip("-o", "-4", "addr").stdout
    for _ in range(100):
        x, y = secrets.randbelow(256), 4 * secrets.randbelow(64)
        if f" {NETWORK}.{x}." not in used:
            return f"{NETWORK}.{x}.{y + 1}", f"{NETWORK}.{x}.{y + 2}"
    pytest.fail(f"no free /30 subnet in {NETWORK}.0.0/16 for the backup host's namespace", pytrace=False)


@contextlib.contextmanager
def _namespace() -> Iterator[tuple[str, str]]:
    """A network namespace linked to this one by a veth pair: (its name, its address); ("", "") when namespaces
    cannot be made here (no `ip`, no privilege)."""
    tag = secrets.token_hex(4)
    name, here, there = f"trading-ops-backup-{tag}", f"trb{tag}", f"trb{tag}p"
    if shutil.which("ip") is None or _ip("netns", "add", name).returncode != 0:
        yield "", ""
        return
    try:
        local, remote = _free_subnet()
        for args in (
            ("link", "add", here, "type", "veth", "peer", "name", there),
            ("link", "set", there, "netns", name),
            ("addr", "add", f"{local}/30", "dev", here),
            ("link", "set", here, "up"),
            ("-n", name, "addr", "add", f"{remote}/30", "dev", there),
            ("-n", name, "link", "set", there, "up"),
            ("-n", name, "link", "set", "lo", "up"),
        ):
            result = _ip(*args)
            if result.returncode != 0:
                pytest.fail(f"ip {' '.join(args)}: {result.stderr.strip()}", pytrace=False)
        yield name, remote
    finally:
        _ip("link", "del", here)
        _ip("netns", "del", name)


def _keygen(path: Path) -> str:
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        pytest.fail("ssh-keygen is not on PATH: install the Debian package 'openssh-client'", pytrace=False)
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)
    return path.with_suffix(".pub").read_text().strip()


def _wait_listening(host: str, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited ({proc.returncode}): {log.read_text().strip()[-300:]}", pytrace=False)
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    said = log.read_text(errors="replace").strip()[-300:] or "nothing in its log"
    pytest.fail(f"sshd did not listen on {host}:{port} within {START_TIMEOUT_SECONDS:g}s: {said}", pytrace=False)


@contextlib.contextmanager
def ssh_host(workdir: Path) -> Iterator[SshHost]:
    """sshd serving `workdir`/repository on a host of its own (see the module's docstring); stopped at the end."""
    sshd = require_binary("sshd")
    require_binary("ssh")
    workdir.mkdir(parents=True, exist_ok=True)
    host_key, client_key = workdir / "host_key", workdir / "client_key"
    host_public = _keygen(host_key)
    (workdir / "authorized_keys").write_text(_keygen(client_key) + "\n")
    repository = workdir / "repository"
    repository.mkdir()
    user = getpass.getuser()
    port = free_port()
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    with _namespace() as (namespace, address):
        host = address or "127.0.0.1"
        config = workdir / "sshd_config"
        config.write_text(
            f"ListenAddress {host}\nPort {port}\nHostKey {host_key}\nPidFile {workdir / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {workdir / 'authorized_keys'}\nAllowUsers {user}\n"
            "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\nX11Forwarding no\n"
            "AllowTcpForwarding no\nLogLevel ERROR\n"
        )
        argv = [sshd, "-D", "-e", "-f", str(config)]
        if namespace:
            argv = ["ip", "netns", "exec", namespace, *argv]
        log = workdir / "sshd.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_listening(host, port, proc, log)
            known_hosts = workdir / "known_hosts"
            known_hosts.write_text(f"[{host}]:{port} {host_public}\n")
            yield SshHost(host, port, user, client_key, known_hosts, repository, namespace, proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
