"""A bot on another host, restarted by the reconciler as systemd reaches other hosts: `systemctl --host` over SSH into
a booted systemd (systemd-nspawn) on a test host of its own (tests/netns_hosts.py), OpenSSH's sshd in it, the
reconciler's user there allowed to manage units by the polkit rule docs/deployment.md gives. The bot's unit runs a
process that never makes progress (a hung bot); the reconciler restarts it there, and the unit's new main process
says so; with a host key that is not the machine's the same step is refused in one line. The same through a remote
Docker engine: this run's own dockerd (tests/docker_engine.py) on a test host, `--tlsverify` on tcp://HOST:2376,
its container restarted by the reconciler with a client certificate, then over ssh:// (sshd on that host, `docker
system dial-stdio` there), and an engine whose certificate is not of the configured CA refused in one line. Heavy
(boots a machine, starts dockerd): run it alone. Needs root, `ip`, systemd-container, debootstrap (the roots are
cached), sshd, ssh, docker.io and `prometheus-alertmanager`."""

from __future__ import annotations

import contextlib
import getpass
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from alertmanager_server import Alertmanager, start_alertmanager
from compose_images import ensure_base_image
from debian_root import debian_root
from docker_engine import DockerEngine
from netns_hosts import Host, host_network
from nspawn_machine import SSH_ROOT_PACKAGES, Machine, Overlay
from polling import until, until_async
from reconciler_server import AUTH, READ_AUTH, write_one_rule_config
from server_process import stop
from system_binaries import require_binary
from web_pki import make_pki
from webhook_payloads import alert, payload

from trading_ops.config import load_config
from trading_ops.db import migrate
from trading_ops.reconciler.app import create_app

# Boots a machine and starts a dockerd: out first in lanes, and given the time a first run needs to build the roots.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

UNIT = "trading-ops-bot@remote-1.service"
CONTAINER = "trading-ops-remote-1"
INSTANCE = "remote-1.example:9101"
HUNG = "TradingBotHeartbeatStale"
USER = "trading-ops-remote"
ENDED = ("recovered", "escalated", "failed", "resolved")
# The polkit rule of docs/deployment.md ("A fleet on several hosts"): the reconciler's user on a bot host may start,
# stop and restart the bots' units, nothing else.
POLKIT_RULE = """polkit.addRule(function(action, subject) {
    if (action.id == "org.freedesktop.systemd1.manage-units" && subject.user == "%s") {
        var unit = action.lookup("unit"), verb = action.lookup("verb");
        if (unit && unit.indexOf("trading-ops-bot@") == 0 && ["start", "stop", "restart"].indexOf(verb) >= 0) {
            return polkit.Result.YES;
        }
    }
});
"""
# The hung bot: a process whose loop never completes.
BOT_UNIT = """[Unit]
Description=a bot whose trading loop hangs
[Service]
ExecStart=/usr/bin/python3 -c "import time; time.sleep(10**9)"
"""
SSHD_CONFIG = """ListenAddress {address}
Port 22
HostKey /etc/ssh/trading_ops_host_key
PidFile /run/sshd-trading-ops.pid
AuthorizedKeysFile /etc/ssh/authorized_keys/%u
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
X11Forwarding no
LogLevel ERROR
"""
SSHD_UNIT = """[Unit]
Description=OpenSSH server of the test host
[Service]
ExecStartPre=/bin/mkdir -p /run/sshd
ExecStart=/usr/sbin/sshd -D -e -f /etc/ssh/sshd_config_trading_ops
"""
# The same host's second sshd, on SLOW_PORT with PAM: a host slow to open the session after the key is accepted, as
# Debian 13's pam_systemd is on a loaded machine (logind starting the user's manager, 10 s and more). sshd opens it
# in its privileged process before it serves the connection: nothing answers the client meanwhile, keepalives
# included. Its stack (PAM service sshd, which only this sshd reads): no password, every account, a session that
# takes SESSION_SECONDS to open.
SLOW_PORT = 2222
SESSION_SECONDS = 20
SLOW_SSHD_CONFIG = (
    SSHD_CONFIG.replace("Port 22\n", f"Port {SLOW_PORT}\n")
    .replace("UsePAM no", "UsePAM yes")
    .replace("/run/sshd-trading-ops.pid", "/run/sshd-trading-ops-slow.pid")
)
SLOW_PAM = f"""auth required pam_deny.so
account required pam_permit.so
session required pam_permit.so
session required pam_exec.so quiet /usr/bin/sleep {SESSION_SECONDS}
"""
SLOW_SSHD_UNIT = SSHD_UNIT.replace("sshd_config_trading_ops", "sshd_config_trading_ops_slow")


@dataclass
class RemoteMachine:
    machine: Machine
    host: Host
    identity_file: Path
    known_hosts_file: Path
    alertmanager: Alertmanager


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)
    return path.with_suffix(".pub").read_text().strip()


def _install_sshd(root: Path, address: str, host_key: Path, client_public: str) -> None:
    """The root's own OpenSSH server (Debian's package, installed in the root: a copy of this machine's would not run
    on another Debian release's libraries) on a configuration of the test's, the package's ssh.service and ssh.socket
    masked; its host key, the reconciler's key authorized for USER, the polkit rule and units."""
    units = root / "etc/systemd/system"
    for unit in ("ssh.service", "ssh.socket"):
        (units / unit).unlink(missing_ok=True)
        (units / unit).symlink_to("/dev/null")
    ssh_dir = root / "etc/ssh"
    (ssh_dir / "authorized_keys").mkdir(parents=True, exist_ok=True)
    shutil.copy2(host_key, ssh_dir / "trading_ops_host_key")
    (ssh_dir / "trading_ops_host_key").chmod(0o600)
    (ssh_dir / "authorized_keys" / USER).write_text(client_public + "\n")
    (ssh_dir / "sshd_config_trading_ops").write_text(SSHD_CONFIG.format(address=address))
    (ssh_dir / "sshd_config_trading_ops_slow").write_text(SLOW_SSHD_CONFIG.format(address=address))
    (root / "etc/pam.d/sshd").write_text(SLOW_PAM)
    rules = root / "etc/polkit-1/rules.d"
    rules.mkdir(parents=True, exist_ok=True)
    (rules / "50-trading-ops-remote.rules").write_text(POLKIT_RULE % USER)
    (units / "trading-ops-bot@.service").write_text(BOT_UNIT)
    (units / "trading-ops-test-sshd.service").write_text(SSHD_UNIT)
    (units / "trading-ops-test-sshd-slow.service").write_text(SLOW_SSHD_UNIT)


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteMachine]:
    for binary in ("systemd-nspawn", "nsenter", "ssh", "ssh-keygen", "systemctl"):
        require_binary(binary)
    root = debian_root(SSH_ROOT_PACKAGES)
    tmp = tmp_path_factory.mktemp("remote-host")
    host_public = _keygen(tmp / "host_key")
    client_public = _keygen(tmp / "client_key")
    am = start_alertmanager(tmp / "alertmanager")
    overlay = Overlay([root], tmp / "machine")
    machine: Machine | None = None
    try:
        with host_network() as network:
            host = network.add_host("bot")
            merged = overlay.mount()
            _install_sshd(merged, host.address, tmp / "host_key", client_public)
            machine = Machine(merged, tmp / "console.log", options=[f"--network-namespace-path={host.path}"])
            machine.boot()
            machine.run("useradd", "--create-home", "--shell", "/bin/sh", USER)
            machine.run("usermod", "--password", "*", USER)  # no password, not a locked account (sshd without PAM)
            machine.systemctl("start", "trading-ops-test-sshd.service", "trading-ops-test-sshd-slow.service", UNIT)
            known = tmp / "known_hosts"
            known.write_text(f"{host.address} {host_public}\n")
            yield RemoteMachine(machine, host, tmp / "client_key", known, am)
    finally:
        try:
            if machine is not None:
                machine.poweroff()
        finally:
            overlay.unmount()
            stop(am.proc)


def write_config(tmp_path: Path, am: Alertmanager, host: dict[str, Any], step: str = "systemd") -> Path:
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate.upgrade(database)
    bot = {
        "name": "remote-1",
        "instance": INSTANCE,
        "url": f"http://{INSTANCE}",
        "token_file": "bot-token",
        "unit": UNIT,
        "container": CONTAINER,
        "host": host,
    }
    return write_one_rule_config(
        tmp_path, database, HUNG, {"action": step, "timeout": "1m"}, bot, alertmanager_url=am.url
    )


def ssh_settings(remote: RemoteMachine, known_hosts: Path) -> dict[str, Any]:
    return {
        "address": remote.host.address,
        "ssh_user": USER,
        "identity_file": str(remote.identity_file),
        "known_hosts_file": str(known_hosts),
    }


async def run_episode(client: Any, am: Alertmanager, state: str) -> dict[str, Any]:
    labels = {"alertname": HUNG, "instance": INSTANCE, "run": uuid.uuid4().hex[:8]}
    held = am.fire(labels)
    body = payload(alert(fingerprint=held["fingerprint"], starts_at=held["startsAt"], **labels))
    assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200

    async def ended() -> dict[str, Any] | None:
        found = (await (await client.get("/api/v1/episodes", headers=READ_AUTH)).json())["episodes"]
        done = [e for e in found if e["state"] in ENDED]  # one ledger per test: its one episode
        if done:
            return dict(await (await client.get(f"/api/v1/episodes/{done[0]['id']}", headers=READ_AUTH)).json())
        return None

    episode = await until_async("the episode ended", ended, deadline=120)
    assert episode["state"] == state, [s["output"] for a in episode["attempts"] for s in a["steps"]]
    return episode


@pytest.mark.parametrize("slow_session", [False, True], ids=["prompt-session", "slow-session"])
async def test_a_hung_bot_on_another_host_is_restarted_there_with_systemctl_host(
    aiohttp_client: Any, tmp_path: Path, remote: RemoteMachine, slow_session: bool
) -> None:
    """The reconciler's user restarts the unit on the bot's host through polkit. With `slow_session`, sshd says
    nothing for SESSION_SECONDS after the key is accepted (its PAM session opening): the step waits within its own
    timeout, as for a unit slow to start. (ssh's keepalive, ServerAliveInterval=5 with ServerAliveCountMax=2, gave up
    after 10 to 15 s: "Timeout, server ... not responding", the unit not restarted.)"""
    before = remote.machine.show(UNIT, "MainPID", "ActiveState")
    assert before["ActiveState"] == "active"
    ssh = ssh_settings(remote, remote.known_hosts_file)
    config = write_config(tmp_path, remote.alertmanager, {**ssh, "ssh_port": SLOW_PORT} if slow_session else ssh)
    client = await aiohttp_client(create_app(load_config(config)))
    episode = await run_episode(client, remote.alertmanager, "recovered")
    (step,) = episode["attempts"][0]["steps"]
    assert step["outcome"] == "success", step
    # On the bot's host: the unit runs a new main process.
    after = until(
        "the unit running again",
        lambda: (shown := remote.machine.show(UNIT, "MainPID", "ActiveState"))["ActiveState"] == "active" and shown,
    )
    assert after["MainPID"] != before["MainPID"]


async def test_the_machine_with_another_host_key_is_refused(
    aiohttp_client: Any, tmp_path: Path, remote: RemoteMachine
) -> None:
    before = remote.machine.show(UNIT, "MainPID")
    other = _keygen(tmp_path / "other_key")
    known = tmp_path / "known_hosts"
    known.write_text(f"{remote.host.address} {other}\n")
    config = write_config(tmp_path, remote.alertmanager, ssh_settings(remote, known))
    client = await aiohttp_client(create_app(load_config(config)))
    episode = await run_episode(client, remote.alertmanager, "escalated")
    (step,) = episode["attempts"][0]["steps"]
    assert step["outcome"] == "failure"
    assert step["output"].startswith(f"host {remote.host.address}: its SSH host key does not match {known}; refused")
    assert "\n" not in step["output"]
    assert remote.machine.show(UNIT, "MainPID") == before


# ---- a remote Docker engine over TLS -----------------------------------------------------------------------------


@dataclass
class RemoteEngine:
    engine: DockerEngine
    host: Host
    pki: Path
    # The same host's sshd, for docker_url ssh://: its sessions reach the engine (DOCKER_HOST set by sshd).
    identity_file: Path
    known_hosts_file: Path
    alertmanager: Alertmanager


@pytest.fixture(scope="module")
def remote_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteEngine]:
    """This run's own dockerd on a test host: --tlsverify on tcp://ADDRESS:2376 with a test CA's server
    certificate, client certificates of that CA only; a container standing for the bot."""
    tmp = tmp_path_factory.mktemp("remote-engine")
    am = start_alertmanager(tmp / "alertmanager")
    engine: DockerEngine | None = None
    try:
        with host_network() as network:
            host = network.add_host("engine")
            pki = make_pki(tmp / "pki", host.address)
            tls = [
                "--tlsverify",
                f"--tlscacert={pki.path('ca.crt')}",
                f"--tlscert={pki.path('server.crt')}",
                f"--tlskey={pki.path('server.key')}",
                f"--host=tcp://{host.address}:2376",
            ]
            engine = DockerEngine.start(netns=host.name, options=tls)
            image = ensure_base_image(engine)
            engine.docker("run", "-d", "--name", CONTAINER, "--network", "none", image, "sleep", "infinity")
            known = _engine_host_sshd(tmp, host, engine)
            yield RemoteEngine(engine, host, pki.dir, tmp / "client_key", known, am)
    finally:
        try:
            if engine is not None:
                engine.stop()
        finally:
            stop(am.proc)


def _engine_host_sshd(tmp: Path, host: Host, engine: DockerEngine) -> Path:
    """OpenSSH's sshd on the engine's host for this user, the engine's socket as its sessions' DOCKER_HOST (the docker
    CLI there runs `docker system dial-stdio` for an ssh:// client); the known_hosts file with its key."""
    host_public = _keygen(tmp / "host_key")
    (tmp / "authorized_keys").write_text(_keygen(tmp / "client_key") + "\n")
    user = getpass.getuser()
    config = tmp / "sshd_config"
    config.write_text(
        f"ListenAddress {host.address}\nPort 22\nHostKey {tmp / 'host_key'}\nPidFile {tmp / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}\nAllowUsers {user}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nLogLevel ERROR\n"
        f"SetEnv DOCKER_HOST=unix://{engine.socket}\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    host.popen([require_binary("sshd"), "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL)
    known = tmp / "known_hosts"
    known.write_text(f"{host.address} {host_public}\n")
    until("the engine host's sshd listening", lambda: _listening(host.address, 22), deadline=30)
    return known


def _listening(address: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=0.5):
        return True
    return False


def started_at(remote: RemoteEngine) -> str:
    return remote.engine.docker("inspect", "--format", "{{.State.StartedAt}}", CONTAINER).stdout.strip()


def docker_settings(remote: RemoteEngine, ca: str) -> dict[str, Any]:
    return {
        "docker_url": f"tcp://{remote.host.address}:2376",
        "docker_tls": {
            "ca_file": ca,
            "cert_file": str(remote.pki / "client.crt"),
            "key_file": str(remote.pki / "client.key"),
        },
    }


@pytest.mark.parametrize("transport", ["tls", "ssh"])
async def test_a_bot_container_on_another_host_is_restarted_through_its_engine(
    aiohttp_client: Any, tmp_path: Path, remote_engine: RemoteEngine, transport: str
) -> None:
    """The two ways Docker itself reaches a remote engine: TCP with TLS client certificates, and SSH (the docker
    CLI's `docker system dial-stdio` on the host, checked against known_hosts)."""
    before = started_at(remote_engine)
    if transport == "tls":
        host = docker_settings(remote_engine, str(remote_engine.pki / "ca.crt"))
    else:
        user = getpass.getuser()
        host = {
            "address": remote_engine.host.address,
            "ssh_user": user,
            "identity_file": str(remote_engine.identity_file),
            "known_hosts_file": str(remote_engine.known_hosts_file),
            "docker_url": f"ssh://{user}@{remote_engine.host.address}",
        }
    config = write_config(tmp_path, remote_engine.alertmanager, host, step="docker")
    client = await aiohttp_client(create_app(load_config(config)))
    episode = await run_episode(client, remote_engine.alertmanager, "recovered")
    (step,) = episode["attempts"][0]["steps"]
    assert step["outcome"] == "success" and step["output"].startswith("HTTP 204"), step
    assert started_at(remote_engine) != before


async def test_an_engine_whose_certificate_is_not_of_the_configured_ca_is_refused(
    aiohttp_client: Any, tmp_path: Path, remote_engine: RemoteEngine
) -> None:
    before = started_at(remote_engine)
    other = make_pki(tmp_path / "other-pki", remote_engine.host.address, ca_name="another CA")
    host = docker_settings(remote_engine, other.path("ca.crt"))
    config = write_config(tmp_path, remote_engine.alertmanager, host, step="docker")
    client = await aiohttp_client(create_app(load_config(config)))
    episode = await run_episode(client, remote_engine.alertmanager, "escalated")
    (step,) = episode["attempts"][0]["steps"]
    assert step["outcome"] == "failure"
    where = f"{remote_engine.host.address}:2376"
    assert step["output"].startswith(f"docker restart {CONTAINER}: the engine at {where}: TLS refused: ")
    assert "\n" not in step["output"]
    assert started_at(remote_engine) == before
