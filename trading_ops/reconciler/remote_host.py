"""How systemd and docker steps reach a bot's own host (bots[].host) when it is not the reconciler's: over SSH with
known-hosts checking, as `systemctl --host` and Docker's `ssh://` do, and a failure told in one line.

`systemctl --host USER@HOST:PORT` runs `ssh -xT -p PORT -- USER@HOST systemd-stdio-bridge`, finding `ssh` on PATH
(systemd 252 has no other setting for it). The step puts first on that PATH a directory of its own holding an `ssh`
that is the real one with the host's settings (BatchMode, StrictHostKeyChecking=yes against the configured
known_hosts_file only, the configured identity, a connect timeout): a Python program that execs ssh, no shell."""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator

from trading_ops.config import BotHostConfig
from trading_ops.reconciler.actions.base import ActionContext, Refused, checked_label
from trading_ops.reconciler.actions.exec import minimal_env

# What ssh says when the host's key is not the one known (changed, or never recorded): the step refuses.
HOST_KEY_RE = re.compile(
    r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key verification failed|No \S+ host key is known", re.I
)
# What ssh says when it cannot reach the host at all.
UNREACHABLE_RE = re.compile(
    r"ssh: connect to host .*|ssh: Could not resolve hostname .*|Connection timed out during banner exchange.*|"
    r"Connection closed by .*|Connection reset by .*",
)
WRAPPER = """#!{python} -I
import os, sys
os.execv({ssh!r}, [{ssh!r}, *{options!r}, *sys.argv[1:]])
"""


def bot_host(ctx: ActionContext) -> BotHostConfig | None:
    """The host configured for the alert's bot (bots[].host, keyed by its instance), or None: the reconciler's own.
    A label picks a configured bot at most, never a host."""
    if "instance" not in ctx.labels:
        return None
    instance = checked_label(ctx.labels, "instance", ctx.label_pattern)
    target = ctx.config.reconciler.targets.get(instance)
    if target is None or not (target.host.address or target.host.docker_url):
        return None
    return target.host


def connect_timeout(host: BotHostConfig, within: float | None = None) -> int:
    """ssh's ConnectTimeout for `host` (whole seconds): the host's, and for a step of `within` seconds a second less
    than that at most, so that ssh says "connect to host ... timed out" before the step's time is up."""
    seconds = host.connect_timeout_seconds if within is None else min(host.connect_timeout_seconds, within - 1)
    return max(1, int(seconds))


def ssh_options(host: BotHostConfig, within: float | None = None) -> list[str]:
    """ssh's options for `host`: never a prompt, the host's key checked against its known_hosts_file alone; a
    connection given up in time for a step of `within` seconds.

    No keepalive (ServerAliveInterval=0, whatever an ssh_config says): a session that is merely slow is no dead one,
    and the step's own timeout (run_argv's) is what bounds it. sshd opens the PAM session (pam_systemd: logind, which
    may start or wait for the user's manager user@UID.service) in its privileged process after the key is accepted
    and before it serves the connection: nothing answers a keepalive meanwhile. On Debian 13 test hosts that took up
    to 85 s (a user manager stopping after the last logout, tests/deploy/test_deploy_fleet.py), and
    ServerAliveInterval=5 with ServerAliveCountMax=2 cut it ("Timeout, server ... not responding", systemctl:
    "Transport endpoint is not connected") in 2 of 3 runs; tests/deploy/test_remote_hosts_real.py has a host whose
    session takes 20 s to open."""
    options = [
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={host.known_hosts_file}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "UpdateHostKeys=no",
        "-o",
        f"ConnectTimeout={connect_timeout(host, within)}",
        "-o",
        "ServerAliveInterval=0",
    ]
    if host.identity_file:
        options += ["-o", "IdentitiesOnly=yes", "-i", host.identity_file]
    return options


def destination(host: BotHostConfig) -> str:
    return f"{host.ssh_user or getpass.getuser()}@{host.address}"


def ssh_binary() -> str:
    found = shutil.which("ssh")
    if found is None:
        raise Refused("ssh is not on PATH: install the package openssh-client on the reconciler's host")
    return found


@contextlib.contextmanager
def systemctl_over_ssh(host: BotHostConfig, within: float | None = None) -> Iterator[tuple[list[str], dict[str, str]]]:
    """(systemctl's argv up to its verb, its environment) to act on `host`'s service manager, within a step of
    `within` seconds."""
    ssh = ssh_binary()
    with tempfile.TemporaryDirectory(prefix="trading-ops-ssh-") as directory:
        wrapper = os.path.join(directory, "ssh")
        with open(wrapper, "w", encoding="utf-8") as out:
            out.write(WRAPPER.format(python=sys.executable, ssh=ssh, options=ssh_options(host, within)))
        os.chmod(wrapper, 0o700)
        env = minimal_env()
        env["PATH"] = os.pathsep.join([directory, env.get("PATH", os.defpath)])
        target = destination(host) + (f":{host.ssh_port}" if host.ssh_port != 22 else "")
        yield ["systemctl", "--host", target], env


def failure_line(output: str, host: BotHostConfig) -> str | None:
    """One line for a failure to reach `host` (its key refused, or no connection), from what ssh printed; None when
    the output says nothing of the kind (the command itself failed there)."""
    if HOST_KEY_RE.search(output):
        return (
            f"host {host.address}: its SSH host key does not match {host.known_hosts_file}; refused "
            "(a changed key is checked by a person, never accepted by the reconciler)"
        )
    found = UNREACHABLE_RE.search(output)
    if found:
        return f"host {host.address} unreachable: {found.group(0).strip()[:200]}"
    return None
