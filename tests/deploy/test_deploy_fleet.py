"""docs/deploy-fleet.md run as written on three hosts: an ops host and two bot hosts, each a network namespace of its
own (tests/netns_hosts.py) with a Debian root booted under real systemd in it (systemd-nspawn,
tests/nspawn_machine.py), on Debian 12 (bookworm) and Debian 13 (trixie). (On trixie the reconciler's restart over
ssh failed in 2 of 3 runs before the page lingered the bot hosts' user: the user's manager, stopped 10 s after the
page's own ssh logged out, took its whole 120 s stop timeout in these containers, every login meanwhile held in
pam_systemd, and the reconciler's ssh keepalive gave up on the silent session.) The ops host
runs steps 1 to 4 of docs/deploy-systemd.md, then the fleet page's blocks for it; each bot host the page's blocks
for a bot host (Debian's openssh-server and prometheus-node-exporter, the example ccxt bot under
trading-ops-bot@.service); then the ops host's last block (the hosts' keys, Prometheus and Alertmanager rendered
by `config render` for the fleet, the reconciler, its ssh to each bot host's systemd). Then the fleet's health as
the page promises it (Prometheus scrapes both bots and both node exporters), and one fault: the second bot host's
bot stops, TradingBotDown fires for it, and the reconciler restarts it there, over ssh, and nowhere else.

What the machines provide instead of the network, and only that: one cached root holds the packages the pages'
`apt-get install` lines name (so those lines and apt-get update are not run), with a cached layer holding the
virtualenv's dependencies (tests/nspawn_machine.py's venv_layer: the pages' `python3 -m venv` and `pip install` run as
written and install the project from the source); the repository the pages clone is this checkout, copied to
/opt/trading-ops/src; pip reads the wheelhouse (PIP_NO_INDEX, PIP_FIND_LINKS). The root's PostgreSQL cluster took
port 5433 beside this host's server when the root was made: set back to a fresh host's 5432. The venue is the one
simulated part: `trading-ops paper-gateway` on the ops host's network at the address the page's commented `urls:`
line gives, with a sub-account per bot (each bot's key is its own account's, as the page's Kraken keys would be).
The values the page tells a reader to change (addresses, the printed key and token, the exchange keys, the second
host's bot) are replaced by the test's, each of which must be on the page. Needs root, `ip`, debootstrap and
systemd-nspawn (systemd-container)."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from debian_root import PYTHONS, SYSTEMD_PACKAGES, debian_root, project_requirements, wheelhouse
from doc_commands import apt_packages, page_blocks, script, section, slowest
from netns_hosts import Host, host_network
from nspawn_machine import Machine, Overlay, venv_layer
from polling import until
from secret_file import write_secret
from system_binaries import REPO_ROOT, require_binary

pytestmark = [pytest.mark.hosts, pytest.mark.slow, pytest.mark.timeout(1800)]

FLEET = REPO_ROOT / "docs" / "deploy-fleet.md"
SYSTEMD = REPO_ROOT / "docs" / "deploy-systemd.md"
# The systemd page's steps the fleet page's ops host runs first ("steps 1 to 4").
SYSTEMD_STEPS_END = "## 5. "
OPS_FIRST = ("## On the ops host", "## On each bot host")
BOT_HOST = ("## On each bot host", "## On the ops host again")
OPS_AGAIN = "## On the ops host again"
PROVIDED = (
    "apt-get update",
    "apt-get install ",
    "git clone https://github.com/trading-ops/trading-ops /opt/trading-ops/src",
)
FLEET_OPS_PROVIDED = ("apt-get install ",)
# The page's example addresses of the bot hosts (the ops host's is only in URLS_LINE).
BOT_ADDRESSES = ("10.0.1.21", "10.0.1.22")
# The page's bot hosts: the first block's variables line for each (the page names the second host's in its text).
BOTS = (("eth-mm", "ETH-USD"), ("btc-mm", "BTC-USD"))
BOT_LINE = "BOT={name} ADDRESS={address} SYMBOL={symbol}"
RECONCILER_KEY_LINE = "RECONCILER_KEY='ssh-ed25519 AAAA... trading-ops-reconciler'"
CONTROL_TOKEN_LINE = "CONTROL_TOKEN='the token printed on the ops host'"
GATEWAY_PORT = 9110
URLS_LINE = "  # urls: {public: http://10.0.0.2:9110, private: http://10.0.0.2:9110}"
# polkitd answers for systemd with logind (libpam-systemd), as in tests/nspawn_machine.py's root.
EXTRA_PACKAGES = ("libpam-systemd",)
PIP_ENV = ("env", "PIP_NO_INDEX=1", "PIP_FIND_LINKS=/wheels", "PIP_DISABLE_PIP_VERSION_CHECK=1")
SCRIPT_TIMEOUT_SECONDS = 900.0
ENDED = ("recovered", "escalated", "failed", "resolved")
# The releases the page runs on here, each root with its own Python's wheelhouse.
SUITES = ("bookworm", "trixie")


@dataclass
class Fleet:
    ops: FleetHost
    bots: list[FleetHost]
    gateway: subprocess.Popen[bytes]
    gateway_log: Path


@dataclass
class FleetHost:
    host: Host
    machine: Machine
    overlay: Overlay


def pages() -> tuple[str, str]:
    return SYSTEMD.read_text(), FLEET.read_text()


def all_blocks() -> list[list[str]]:
    systemd, fleet = pages()
    return page_blocks(section(systemd, end=SYSTEMD_STEPS_END)) + page_blocks(fleet)


def ops_script(replaced: dict[str, str]) -> str:
    systemd, fleet = pages()
    first = script(page_blocks(section(systemd, end=SYSTEMD_STEPS_END)), PROVIDED)
    fleet_first = script(page_blocks(section(fleet, *OPS_FIRST)), FLEET_OPS_PROVIDED, replaced)
    return first + fleet_first


def bot_script(replaced: dict[str, str]) -> str:
    return script(page_blocks(section(pages()[1], *BOT_HOST)), PROVIDED, replaced)


def ops_again_script(replaced: dict[str, str]) -> str:
    return script(page_blocks(section(pages()[1], OPS_AGAIN)), (), replaced)


def test_the_fleet_page_has_the_steps_the_issue_asks_for() -> None:
    """Without booting anything: each host's steps in order, node exporters on the bot hosts, the fleet's Prometheus
    and Alertmanager rendered, the reconciler reaching each bot host over ssh; no sudo."""
    addresses = {BOT_ADDRESSES[0]: "B1", BOT_ADDRESSES[1]: "B2"}
    bot = bot_script({URLS_LINE: "", "YOUR-KRAKEN-API-KEY": "k", "YOUR-KRAKEN-API-SECRET": "s"})
    order = [
        "python3 -m venv /opt/trading-ops/.venv",
        "useradd --system",
        "loginctl enable-linger trading-ops",
        "authorized_keys",
        "50-trading-ops-remote.rules",
        "config check",
        "systemctl enable --now prometheus-node-exporter trading-ops-bot@$BOT.service",
    ]
    positions = [bot.find(step) for step in order]
    assert -1 not in positions, [step for step, at in zip(order, positions, strict=True) if at < 0]
    assert positions == sorted(positions), order
    again = ops_again_script(addresses)
    for step in ("ssh-keyscan -t ed25519 B1 B2", "config check", "config render -o /etc/prometheus", "ssh -i"):
        assert step in again, step
    assert again.index("config render") < again.index("systemctl enable --now trading-ops-reconciler.service")
    for text in (bot, again, ops_script(addresses)):
        assert "sudo" not in text
    assert {"openssh-server", "prometheus-node-exporter"} <= set(apt_packages(all_blocks()))


def write_gateway(tmp: Path, address: str, keys: dict[str, tuple[str, str]]) -> Path:
    """The paper venue behind Kraken's API on the ops host's address, a sub-account per bot with its key."""
    write_secret(tmp / "main-key", "fleet-main-key")
    write_secret(tmp / "main-secret", base64.b64encode(b"the fleet's main account").decode())
    write_secret(tmp / "chaos-token", "the fleet gateway's chaos token")
    accounts = []
    for name, (key, secret) in keys.items():
        write_secret(tmp / f"{name}-key", key)
        write_secret(tmp / f"{name}-secret", secret)
        accounts.append(
            {"name": name, "api_key_file": str(tmp / f"{name}-key"), "api_secret_file": str(tmp / f"{name}-secret")}
        )
    config = {
        "paper": {
            "symbols": ["BTC-USD", "ETH-USD"],
            "quote_asset": "USD",
            "starting_balance": 100_000,
            "reject_probability": 0,
            "partial_fill_probability": 0,
        },
        "gateway": {
            "listen": {"host": address, "port": GATEWAY_PORT},
            "api_key_file": str(tmp / "main-key"),
            "api_secret_file": str(tmp / "main-secret"),
            "control_token_file": str(tmp / "chaos-token"),
            "orders_per_second": 1000,
            "accounts": accounts,
        },
    }
    path = tmp / "gateway.yaml"
    path.write_text(json.dumps(config))
    return path


def prepare(overlay: Overlay) -> Path:
    merged = overlay.mount()
    shutil.copytree(
        REPO_ROOT,
        merged / "opt" / "trading-ops" / "src",
        ignore=shutil.ignore_patterns(".git", ".venv", "var", "build", "dist", "site", "*.egg-info", "__pycache__"),
    )
    for conf in (merged / "etc" / "postgresql").glob("*/main/postgresql.conf"):
        conf.write_text(re.sub(r"(?m)^port = \d+", "port = 5432", conf.read_text()))
    return merged


@pytest.fixture(scope="module", params=SUITES)
def fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    for binary in ("systemd-nspawn", "nsenter", "ip"):
        require_binary(binary)
    suite = str(request.param)
    packages = sorted({*SYSTEMD_PACKAGES, *EXTRA_PACKAGES, *apt_packages(all_blocks())})
    started = time.monotonic()
    root = debian_root(tuple(packages), suite=suite)
    wheels = wheelhouse(PYTHONS[suite])
    layer = venv_layer(root, wheels, project_requirements())
    print(f"{suite}: roots ready in {time.monotonic() - started:.1f}s")
    tmp = tmp_path_factory.mktemp(f"deploy-fleet-{suite}")
    hosts: list[FleetHost] = []
    try:
        with host_network() as network:
            for label in ("ops", "bot", "bot"):
                host = network.add_host(label)
                overlay = Overlay([layer, root], tmp / host.name)
                merged = prepare(overlay)
                machine = Machine(
                    merged,
                    tmp / f"{host.name}.log",
                    [f"--network-namespace-path={host.path}", f"--bind-ro={wheels}:/wheels"],
                )
                hosts.append(FleetHost(host, machine, overlay))
            booting = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                list(pool.map(lambda h: h.machine.boot(), hosts))
            print(f"three machines booted in {time.monotonic() - booting:.1f}s")
            gateway_config = write_gateway(tmp, hosts[0].host.address, ACCOUNT_KEYS)
            with open(tmp / "gateway.log", "wb") as log:
                gateway = hosts[0].host.popen(
                    [sys.executable, "-m", "trading_ops", "--config", str(gateway_config), "paper-gateway"],
                    cwd=REPO_ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            yield Fleet(hosts[0], hosts[1:], gateway, tmp / "gateway.log")
    finally:
        for fleet_host in hosts:
            try:
                fleet_host.machine.poweroff()
            finally:
                fleet_host.overlay.unmount()


ACCOUNT_KEYS = {
    name: (f"{name}-venue-key", base64.b64encode(f"the venue secret of {name}".encode()).decode()) for name, _ in BOTS
}


def run_script(machine: Machine, text: str, what: str) -> None:
    started = time.monotonic()
    ran = machine.run(*PIP_ENV, "bash", "-c", text, check=False, timeout=SCRIPT_TIMEOUT_SECONDS)
    print(f"{what}: {time.monotonic() - started:.1f}s; the slowest commands (s): {slowest(ran.stderr)}")
    if ran.returncode != 0:
        journal = machine.run("journalctl", "--no-pager", "-p", "warning", "-n", "30", check=False).stdout
        pytest.fail(
            f"{what}: the page's commands failed: {ran.stderr[-2500:]}\n--- the journal's warnings ---\n{journal}"
        )


def prometheus_up(ops: Host) -> dict[str, str]:
    """{instance: value} of `up` in the ops host's Prometheus, asked from the test's own network."""
    query = urllib.parse.urlencode({"query": "up"})
    with urllib.request.urlopen(f"http://{ops.address}:9090/api/v1/query?{query}", timeout=5) as resp:
        answer = json.loads(resp.read())
    return {r["metric"]["instance"]: r["value"][1] for r in answer["data"]["result"]}


def episodes(ops: FleetHost, token: str) -> list[dict[str, Any]]:
    got = ops.machine.run(
        "curl", "-fsS", "-H", f"Authorization: Bearer {token}", "http://127.0.0.1:9102/api/v1/episodes", check=False
    )
    return list(json.loads(got.stdout)["episodes"]) if got.returncode == 0 else []


def test_the_fleet_page_deploys_a_fleet_that_heals_the_right_host(fleet: Fleet) -> None:
    ops, bots, gateway = fleet.ops, fleet.bots, fleet.gateway
    gateway_url = f"http://{ops.host.address}:{GATEWAY_PORT}"

    def answers() -> bool:
        if gateway.poll() is not None:
            said = fleet.gateway_log.read_text()[-1000:]
            raise AssertionError(f"paper-gateway exited {gateway.returncode}: {said}")
        with urllib.request.urlopen(f"{gateway_url}/0/public/Time", timeout=2) as resp:
            return bool(resp.status == 200)

    until("the paper gateway answering", answers, deadline=60)
    addresses = {a: b.host.address for a, b in zip(BOT_ADDRESSES, bots, strict=True)}
    started = time.monotonic()
    run_script(ops.machine, ops_script(addresses), "the ops host's first steps")
    reconciler_key = ops.machine.run("cat", "/etc/trading-ops/bot-hosts-ssh-key.pub").stdout.strip()
    token = ops.machine.run("cat", "/etc/trading-ops/control-token").stdout.strip()

    def bot_host(index: int) -> None:
        name, symbol = BOTS[index]
        first_name, first_symbol = BOTS[0]
        key, secret = ACCOUNT_KEYS[name]
        replaced = {
            BOT_LINE.format(name=first_name, address=BOT_ADDRESSES[0], symbol=first_symbol): BOT_LINE.format(
                name=name, address=bots[index].host.address, symbol=symbol
            ),
            RECONCILER_KEY_LINE: f"RECONCILER_KEY='{reconciler_key}'",
            CONTROL_TOKEN_LINE: f"CONTROL_TOKEN='{token}'",
            "YOUR-KRAKEN-API-KEY": key,  # the page's Kraken keys: the bot's own account's at the paper venue
            "YOUR-KRAKEN-API-SECRET": secret,
            URLS_LINE: f"  urls: {{public: {gateway_url}, private: {gateway_url}}}",
        }
        run_script(bots[index].machine, bot_script(replaced), f"bot host {index + 1}")

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(bot_host, range(len(bots))))
    run_script(ops.machine, ops_again_script(addresses), "the ops host again")
    print(f"the page's commands on three hosts: {time.monotonic() - started:.1f}s")

    # The modes the page sets: the reconciler's SSH key its user's alone, each bot's exchange keys its group's.
    assert ops.machine.run("stat", "-c", "%a %U", "/etc/trading-ops/bot-hosts-ssh-key").stdout.split() == [
        "600",
        "trading-ops",
    ]
    for (name, _), bot in zip(BOTS, bots, strict=True):
        shown = bot.machine.run(
            "stat", "-c", "%a %U %G", f"/etc/trading-ops/bots/{name}-api-key", "/home/trading-ops/.ssh/authorized_keys"
        ).stdout.splitlines()
        assert shown == ["640 root trading-ops", "600 trading-ops trading-ops"], shown

    # Healthy as the page says: both bots and both hosts' node exporters scraped by the ops host's Prometheus.
    targets = [f"{b.host.address}:{port}" for b in bots for port in (9101, 9100)]
    up = until(
        "Prometheus scraping both bots and both bot hosts",
        lambda: (u := prometheus_up(ops.host)) and all(u.get(t) == "1" for t in targets) and u,
        deadline=90,
    )
    print({t: up[t] for t in targets})

    # The fault: the second host's bot stops (and stays stopped: a stop is no failure for Restart=on-failure).
    read_token = ops.machine.run("cat", "/etc/trading-ops/reconciler-read-token").stdout.strip()
    first_unit, second_unit = (f"trading-ops-bot@{name}.service" for name, _ in BOTS)
    second_before = bots[1].machine.show(second_unit, "MainPID")["MainPID"]
    fault = time.monotonic()
    bots[1].machine.systemctl("stop", second_unit)
    instance = f"{bots[1].host.address}:9101"

    def ended() -> dict[str, Any] | None:
        for episode in episodes(ops, read_token):
            mine = episode["alertname"] == "TradingBotDown" and episode["labels"].get("instance") == instance
            if mine and episode["state"] in ENDED:
                return episode
        return None

    episode = until("the reconciler's episode for the stopped bot ended", ended, deadline=240)
    detail = json.loads(
        ops.machine.run(
            "curl",
            "-fsS",
            "-H",
            f"Authorization: Bearer {read_token}",
            f"http://127.0.0.1:9102/api/v1/episodes/{episode['id']}",
        ).stdout
    )
    print(f"fault -> episode {detail['state']}: {time.monotonic() - fault:.1f}s")
    steps = [s for a in detail["attempts"] for s in a["steps"]]
    assert detail["labels"]["instance"] == instance, detail["labels"]
    if detail["state"] != "recovered":
        journal = bots[1].machine.run("journalctl", "--no-pager", "-n", "40", check=False).stdout
        raise AssertionError(
            f"episode {detail['state']}: {json.dumps(steps)[-3000:]}\n--- the bot host's journal ---\n{journal}"
        )
    assert [s["outcome"] for s in steps][-1] == "success", steps
    # On the second host: the unit runs a new main process, started while the reconciler's systemd step ran (its
    # restart over ssh, not systemd's own: a stop is no failure). The first host's bot runs on. (On a machine this
    # busy the first bot's loop may stall past its WatchdogSec: systemd then
    # restarts it, and the reconciler's bot-loop-restart finds systemd at it, which is no fault of the page.)
    restart = next(s for s in steps if s["action"] == "systemd")
    state = bots[1].machine.show(second_unit, "MainPID", "ActiveState", "ExecMainStartTimestamp")
    assert state["ActiveState"] == "active" and state["MainPID"] not in ("0", second_before), state
    began = datetime.fromisoformat(restart["started_at"]).timestamp()
    ended_at = datetime.fromisoformat(restart["finished_at"]).timestamp()
    # systemd gives the start in whole seconds (`@1795860452`): the step's start, to the second, is its bound.
    assert int(began) <= float(state["ExecMainStartTimestamp"].lstrip("@")) <= ended_at, (state, restart)
    assert bots[0].machine.show(first_unit, "ActiveState")["ActiveState"] in ("active", "activating")
