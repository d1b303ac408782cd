"""Test hosts on a network of their own: each host a network namespace (`ip netns add`, a random suffix in its name),
joined to a bridge in this namespace by a veth pair, with an address in a private /24 chosen among the ones no
interface of this machine is in. This namespace is the network's first address (.1), so a test reaches every host
and every host reaches servers the test binds there; the hosts reach each other through the bridge.

A host runs processes (`run`, `popen`: `ip netns exec`), and its link goes down and up (`link_down`, `link_up`: its
veth on the bridge), which partitions it from everyone else while it keeps running: a dead host as its peers see
it, or a network split between replicas. Everything is removed at the end (processes started with `popen` by their
pid, then the namespaces, the veths and the bridge), whether the test passed or not. Needs root and `ip`; without
them the test fails with one line. Hosts have their own network only, not their own files: a systemd-nspawn machine
joins one with `--network-namespace-path=host.path`."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# 10.2XX.Y.0/24: a /24 chosen at random in 10.200.0.0/13 that no interface of this machine is in.
FIRST_OCTETS = range(200, 208)
NETNS_DIR = Path("/run/netns")
STOP_TIMEOUT_SECONDS = 10.0


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`ip ARGS`; with `check`, a failure fails the test with ip's one line."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        pytest.fail(f"ip {' '.join(args)}: {result.stderr.strip()}", pytrace=False)
    return result


def free_subnet() -> str:
    """The first three octets of a /24 no interface of this machine is in (10.2XX.Y)."""
    used = ip("-o", "-4", "addr").stdout
    for _ in range(200):
        prefix = f"10.{FIRST_OCTETS[secrets.randbelow(len(FIRST_OCTETS))]}.{secrets.randbelow(256)}"
        if f" {prefix}." not in used:
            return prefix
    pytest.fail("no free /24 in 10.200.0.0/13 for the test hosts' network", pytrace=False)


@dataclass
class Host:
    """One test host: a network namespace with one address on the network."""

    name: str  # the namespace's name (ip netns)
    address: str
    veth: str  # its link's end on the bridge (this namespace)
    network: Network
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)

    @property
    def path(self) -> Path:
        """The namespace's file, for `systemd-nspawn --network-namespace-path` or `nsenter --net`."""
        return NETNS_DIR / self.name

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess[str]:
        """`argv` on this host, to its end."""
        return subprocess.run(self.argv(argv), capture_output=True, text=True, timeout=timeout, check=check)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """`argv` started on this host; stopped (by its pid) when the network is removed, if still running."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv(argv), **kwargs)
        self.processes.append(proc)
        return proc

    def link_down(self) -> None:
        """Cut this host off: its link to the bridge goes down (it keeps running, unreachable)."""
        ip("link", "set", self.veth, "down")

    def link_up(self) -> None:
        ip("link", "set", self.veth, "up")

    def stop_processes(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(STOP_TIMEOUT_SECONDS)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@dataclass
class Network:
    """A bridge in this namespace with address `<prefix>.1/24`, and the hosts on it."""

    tag: str
    prefix: str
    bridge: str
    hosts: list[Host] = field(default_factory=list)

    @property
    def gateway(self) -> str:
        """This namespace's address on the network: where a host reaches the test's servers."""
        return f"{self.prefix}.1"

    def add_host(self, label: str = "host") -> Host:
        """A new host on the network, its loopback and its link up, its address the next free one."""
        number = len(self.hosts)
        if number > 250:
            pytest.fail("more than 250 test hosts on one network", pytrace=False)
        name = f"trading-ops-{label}-{self.tag}-{number}"
        veth, peer = f"tov{self.tag}{number}", f"tov{self.tag}{number}p"
        address = f"{self.prefix}.{number + 2}"
        ip("netns", "add", name)
        host = Host(name, address, veth, self)
        self.hosts.append(host)  # removed at the end even if a step below fails
        ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        ip("link", "set", peer, "netns", name)
        ip("link", "set", veth, "master", self.bridge)
        ip("link", "set", veth, "up")
        ip("-n", name, "addr", "add", f"{address}/24", "dev", peer)
        ip("-n", name, "link", "set", peer, "up")
        ip("-n", name, "link", "set", "lo", "up")
        ip("-n", name, "route", "add", "default", "via", self.gateway)
        return host

    def remove(self) -> None:
        for host in self.hosts:
            host.stop_processes()
        for host in self.hosts:
            ip("link", "del", host.veth, check=False)
            ip("netns", "del", host.name, check=False)
        ip("link", "del", self.bridge, check=False)


@contextlib.contextmanager
def host_network() -> Iterator[Network]:
    """A network for test hosts (`add_host`), removed at the end whatever happened."""
    if shutil.which("ip") is None:
        pytest.fail("`ip` is not on PATH: install the Debian package 'iproute2'", pytrace=False)
    tag = secrets.token_hex(4)
    bridge = f"tob{tag}"
    probe = ip("link", "add", bridge, "type", "bridge", check=False)
    if probe.returncode != 0:
        pytest.fail(f"cannot make the test hosts' network (needs root): {probe.stderr.strip()}", pytrace=False)
    network = Network(tag, free_subnet(), bridge)
    try:
        ip("addr", "add", f"{network.gateway}/24", "dev", bridge)
        ip("link", "set", bridge, "up")
        yield network
    finally:
        network.remove()
