"""docs/deploy-systemd.md run as written: its blocks of commands, in order, in a Debian root booted under real systemd
(systemd-nspawn, tests/nspawn_machine.py) with a network of its own (loopback only: the page's fixed ports are the
machine's, never this host's), then the health the page promises checked from inside. The page is for Debian 12 or 13:
it runs on a bookworm root (`make test`) and on a trixie root (Debian 13's systemd, Python 3.13, PostgreSQL 17,
Prometheus 2.53, Alertmanager 0.28; marked `hosts`, `make test-hosts`: its root is another debootstrap of minutes).

What the machine provides instead of the network, and only that: the root is built (once, cached) with the packages
the page's `apt-get install` names, so its apt lines are not run; the repository the page clones is this checkout,
copied to /opt/trading-ops/src; pip installs from the cached wheelhouse of the root's Python (PIP_NO_INDEX,
PIP_FIND_LINKS), the page's pip command as it is. Two traces of the machine's making are undone: the root's PostgreSQL
cluster was created beside this host's server and took port 5433 (a fresh host's is 5432). Everything else (the user,
the modes, PostgreSQL, `config check`, `db upgrade`, `config render`, Alertmanager's arguments for a single host (a
machine with loopback only has no private address to gossip on), the local mail server `--local-receivers` sends to,
the units, `systemctl enable --now`, the health checks, `reconciler history` as the page runs it) runs as the page has
it: a doc change that breaks a step fails here. Then "A bot of your own" as written, its Kraken account the only
stand-in: a paper gateway in the machine (its URLs and keys put in the page's two placeholders). Needs root,
debootstrap and systemd-nspawn (systemd-container)."""

from __future__ import annotations

import base64
import re
import shutil
from collections.abc import Iterator

import pytest
from debian_root import PYTHONS, SYSTEMD_PACKAGES, debian_root, wheelhouse
from doc_commands import apt_packages, page_blocks, script, section
from nspawn_machine import Machine, Overlay
from polling import until
from system_binaries import REPO_ROOT, require_binary

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

PAGE = REPO_ROOT / "docs" / "deploy-systemd.md"
# The page's blocks run here end at this section (a bot of your own needs an exchange account).
LAST_SECTION = "## A bot of your own"
# Lines the machine provides for instead (see the module's docstring); each must be on the page.
PROVIDED = (
    "apt-get update",
    "apt-get install ",
    "git clone https://github.com/trading-ops/trading-ops /opt/trading-ops/src",
)
# polkitd answers for systemd with logind (libpam-systemd), as in tests/nspawn_machine.py's root.
EXTRA_PACKAGES = ("libpam-systemd",)
SCRIPT_TIMEOUT_SECONDS = 900.0
# "A bot of your own": the Kraken account it needs is a paper gateway in the machine, reached by the page's bot
# through ccxt's `urls` (the page's `kraken_tier` line gets them, and the gateway keeps no call counter), with these
# keys in place of the page's placeholders.
GATEWAY_PORT = 9400
GATEWAY_KEY = "deploy-docs-key"
GATEWAY_SECRET = base64.b64encode(b"the deploy docs test's gateway secret").decode()
GATEWAY_URL = f"http://127.0.0.1:{GATEWAY_PORT}"
OWN_BOT_REPLACED = {
    "your-kraken-api-key": GATEWAY_KEY,
    "your-kraken-api-secret": GATEWAY_SECRET,
    "  kraken_tier: starter\n": (
        f"  kraken_tier: 'off'\n  enable_rate_limit: false\n  urls: {{public: {GATEWAY_URL}, private: {GATEWAY_URL}}}\n"
    ),
}
OWN_BOT = "trading-ops-bot@eth-mm.service"
UNITS = ("trading-ops-paper-bot", "trading-ops-reconciler", "prometheus", "prometheus-alertmanager")
# The releases the page is written for: Debian 12 in `make test`, Debian 13 among the tests of whole machines.
SUITES = ("bookworm", pytest.param("trixie", marks=pytest.mark.hosts))


def systemd_blocks(text: str) -> list[list[str]]:
    """The command blocks marked `installs` before LAST_SECTION, each as its lines."""
    return page_blocks(section(text, end=LAST_SECTION))


def test_the_page_has_the_steps_the_issue_asks_for() -> None:
    """Without booting anything: the install, the user and its modes, PostgreSQL, the check, db upgrade before the
    units start, the monitoring rendered for this host, enable, health; and no sudo (Debian hosts have none)."""
    text = PAGE.read_text()
    commands = script(systemd_blocks(text), PROVIDED)
    order = [
        "python3 -m venv /opt/trading-ops/.venv",
        "useradd --system",
        "install -d -o trading-ops -g trading-ops -m 0750 /var/lib/trading-ops",
        "createdb --owner trading-ops trading-ops",
        "config check",
        "db upgrade",
        "config render -o /etc/prometheus",
        "systemctl enable --now trading-ops-paper-bot.service trading-ops-reconciler.service",
        "curl -fsS --retry 120 --retry-delay 1 --retry-connrefused http://127.0.0.1:9101/readyz",
    ]
    positions = [commands.find(step) for step in order]
    assert -1 not in positions, [step for step, at in zip(order, positions, strict=True) if at < 0]
    assert positions == sorted(positions), order
    assert "sudo" not in commands
    assert {"postgresql", "prometheus", "prometheus-alertmanager", "prometheus-node-exporter"} <= set(
        apt_packages(systemd_blocks(text))
    )


@pytest.fixture(scope="module", params=SUITES)
def machine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    """A booted machine of Debian `request.param` with the page's packages, this checkout at /opt/trading-ops/src and
    the wheelhouse of its Python at /wheels, on a network of its own."""
    require_binary("systemd-nspawn")
    require_binary("nsenter")
    suite = str(request.param)
    packages = sorted({*SYSTEMD_PACKAGES, *EXTRA_PACKAGES, *apt_packages(systemd_blocks(PAGE.read_text()))})
    root = debian_root(tuple(packages), suite=suite)
    wheels = wheelhouse(PYTHONS[suite])
    tmp = tmp_path_factory.mktemp(f"deploy-docs-{suite}")
    overlay = Overlay([root], tmp / "machine")
    booted: Machine | None = None
    try:
        merged = overlay.mount()
        source = merged / "opt" / "trading-ops" / "src"
        shutil.copytree(
            REPO_ROOT,
            source,
            ignore=shutil.ignore_patterns(".git", ".venv", "var", "build", "dist", "site", "*.egg-info", "__pycache__"),
        )
        for conf in (merged / "etc" / "postgresql").glob("*/main/postgresql.conf"):
            conf.write_text(re.sub(r"(?m)^port = \d+", "port = 5432", conf.read_text()))
        booted = Machine(merged, tmp / "console.log", ["--private-network", f"--bind-ro={wheels}:/wheels"])
        booted.boot()
        yield booted
    finally:
        try:
            if booted is not None:
                booted.poweroff()
        finally:
            overlay.unmount()


def test_the_systemd_page_deploys_a_healthy_host_as_written(machine: Machine) -> None:
    commands = script(systemd_blocks(PAGE.read_text()), PROVIDED)
    env = ["env", "PIP_NO_INDEX=1", "PIP_FIND_LINKS=/wheels", "PIP_DISABLE_PIP_VERSION_CHECK=1"]
    ran = machine.run(*env, "bash", "-c", commands, check=False, timeout=SCRIPT_TIMEOUT_SECONDS)
    if ran.returncode != 0:
        journal = machine.run("journalctl", "--no-pager", "-p", "warning", "-n", "40", check=False).stdout
        pytest.fail(f"the page's commands failed: {ran.stderr[-2500:]}\n--- the journal's warnings ---\n{journal}")
    for unit in UNITS:
        assert machine.run("systemctl", "is-active", unit, check=False).stdout.strip() == "active", unit
    # The modes the page sets: secrets readable by the units' group only, state the units' user's.
    modes = machine.run(
        "stat",
        "-c",
        "%n %a %U %G",
        "/etc/trading-ops",
        "/etc/trading-ops/control-token",
        "/etc/trading-ops/trading-ops.yaml",
        "/var/lib/trading-ops",
    ).stdout.splitlines()
    assert modes == [
        "/etc/trading-ops 750 root trading-ops",
        "/etc/trading-ops/control-token 640 root trading-ops",
        "/etc/trading-ops/trading-ops.yaml 640 root trading-ops",
        "/var/lib/trading-ops 750 trading-ops trading-ops",
    ], modes

    def scraped() -> bool:
        query = "http://127.0.0.1:9090/api/v1/query?query=up%7Bjob%3D%22tradingbot%22%7D%3D%3D1"
        answer = machine.run("curl", "-fsS", query, check=False).stdout
        return '"instance":"127.0.0.1:9101"' in answer

    until("Prometheus scraping the bot the page deployed", scraped, deadline=120)
    # The reconciler reads its ledger in PostgreSQL, peer-authenticated as its user.
    history = machine.run(
        "runuser",
        "-u",
        "trading-ops",
        "--",
        "/opt/trading-ops/.venv/bin/trading-ops",
        "--config",
        "/etc/trading-ops/trading-ops.yaml",
        "reconciler",
        "history",
        "--brief",
        check=False,
    )
    assert history.returncode == 0, history.stderr

    # The page's own mail server took --local-receivers' mail: the Watchdog, always firing, reached the dead-man
    # receiver by e-mail, and no notification failed (without it every one did, and
    # TradingOpsAlertmanagerNotificationsFailing went pending).
    def mailed() -> bool:
        metrics = machine.run("curl", "-fsS", "http://127.0.0.1:9093/metrics", check=False).stdout
        sent = re.search(r'^alertmanager_notifications_total\{integration="email"[^}]*\} (\S+)$', metrics, re.M)
        return sent is not None and float(sent.group(1)) > 0

    until("an e-mail notification sent", mailed, deadline=300)
    metrics = machine.run("curl", "-fsS", "http://127.0.0.1:9093/metrics").stdout
    failed = re.findall(r'^alertmanager_notifications_failed_total\{integration="email"[^}]*\} (\S+)$', metrics, re.M)
    assert failed and all(float(value) == 0 for value in failed), failed


def test_a_bot_of_your_own_is_deployed_as_written(machine: Machine) -> None:
    """After the page's host: its "A bot of your own" as written, the example bot as eth-mm under the template unit,
    on a paper gateway standing in for Kraken. Its pasted eth-mm.yaml and environment file start it (Type=notify:
    active once its startup reconciliation passed), its journal in its state directory; appended to `bots:`, the
    reconciler's configuration checks, and Prometheus scrapes it."""
    setup = (
        "set -eu\n"
        "install -d -m 0700 /root/gateway\n"
        f"printf %s {GATEWAY_KEY} > /root/gateway/key\n"
        f"printf %s {GATEWAY_SECRET} > /root/gateway/secret\n"
        "head -c 24 /dev/urandom | base64 > /root/gateway/token\n"
        "chmod 0600 /root/gateway/*\n"
        "cat > /root/gateway/gateway.yaml <<'EOF'\n"
        f"gateway:\n  listen: {{host: 127.0.0.1, port: {GATEWAY_PORT}}}\n"
        "  api_key_file: /root/gateway/key\n  api_secret_file: /root/gateway/secret\n"
        "  control_token_file: /root/gateway/token\n"
        "paper: {seed: 11, symbols: [ETH-USD]}\n"
        "EOF\n"
        "systemd-run --unit=paper-gateway /opt/trading-ops/.venv/bin/trading-ops --config /root/gateway/gateway.yaml "
        "paper-gateway\n"
        f"curl -fsS --retry 60 --retry-delay 1 --retry-connrefused {GATEWAY_URL}/0/public/Time\n"
    )
    started = machine.run("bash", "-c", setup, check=False, timeout=120)
    assert started.returncode == 0, started.stderr[-2000:]
    commands = script(page_blocks(section(PAGE.read_text(), start=LAST_SECTION)), replaced=OWN_BOT_REPLACED)
    ran = machine.run("bash", "-c", commands, check=False, timeout=SCRIPT_TIMEOUT_SECONDS)
    if ran.returncode != 0:
        journal = machine.run("journalctl", "--no-pager", "-u", OWN_BOT, "-n", "60", check=False).stdout
        pytest.fail(f"the section's commands failed: {ran.stderr[-2500:]}\n--- its journal ---\n{journal}")
    assert machine.run("systemctl", "is-active", OWN_BOT, check=False).stdout.strip() == "active"
    assert machine.run("systemctl", "is-active", "trading-ops-reconciler", check=False).stdout.strip() == "active"
    state = machine.run("stat", "-c", "%n %a %U", "/var/lib/trading-ops/bots/eth-mm/journal.db").stdout.strip()
    assert state.endswith(" trading-ops"), state

    def scraped() -> bool:
        query = "http://127.0.0.1:9090/api/v1/query?query=up%7Binstance%3D%22127.0.0.1%3A9111%22%7D%3D%3D1"
        return '"instance":"127.0.0.1:9111"' in machine.run("curl", "-fsS", query, check=False).stdout

    until("Prometheus scraping the bot of your own", scraped, deadline=120)
