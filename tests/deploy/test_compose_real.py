"""docker-compose.yml on a real Docker engine: the image built from the Dockerfile, `docker-compose up` of the shipped
file, every healthcheck healthy, Prometheus scraping the bot and the reconciler over the compose network, and a
hung bot container restarted by the reconciler's `docker` action (playbook docker.yml) and verified healthy again,
and a critical alert's page arriving at the `mailbox` profile's local mail receiver (Alertmanager reading
alertmanager/alertmanager-local.yml, as docs/deploy-compose.md has a user try the routes).

The engine is this run's own dockerd in namespaces of its own (tests/docker_engine.py); no registry is reachable, so
the images come from Debian roots (tests/compose_images.py): Prometheus and Alertmanager are the versions
docker-compose.yml pins (Debian's packages of 3.5.3 and 0.33.1, as the host's tests run them), PostgreSQL and the node
exporter bookworm's (15, and 1.5.0 where the file pins 1.11.1), and a test reads the versions from the running servers.
The override file of the test changes only what must differ here: the images of the registry's services, the Docker
socket the reconciler mounts, the wheelhouse of the offline build, and the compose network made `internal`. Grafana
has no Debian package and is not started.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_images import NODE_EXPORTER_RUNS, ensure_base_image, ensure_service_images
from debian_root import wheelhouse
from docker_engine import DockerEngine
from polling import until
from system_binaries import REPO_ROOT, require_binary

# The first run on a machine makes two Debian roots and builds every image from scratch (several minutes).
pytestmark = pytest.mark.timeout(1200)

PROJECT = "tradingops"
BOT_CONTAINER = "trading-ops-paper-bot"
# Every service of docker-compose.yml but Grafana (no Debian package, no registry) and the freqtrade profile's; the
# mailbox profile's local mail receiver with Alertmanager's file for it (docs/deploy-compose.md, "the mailbox").
SERVICES = [
    "postgres",
    "db-migrate",
    "paper-bot",
    "reconciler",
    "prometheus",
    "alertmanager",
    "node-exporter",
    "mailbox",
]
ALERTMANAGER_FILE = "alertmanager-local.yml"
LONG_RUNNING = [s for s in SERVICES if s != "db-migrate"]
# The build context and the configuration folders compose mounts: what a user's checkout holds.
COPIED = [
    "Dockerfile",
    ".dockerignore",
    "docker-compose.yml",
    "trading-ops.docker.yaml",
    "pyproject.toml",
    "README.md",
    "constraints.txt",
    "trading_ops",
    "wheelhouse",
    "prometheus",
    "alertmanager",
    "grafana",
]


@dataclass
class Stack:
    engine: DockerEngine
    project_dir: Path
    env: dict[str, str]
    timings: dict[str, float]
    started: float

    def mark(self, what: str) -> None:
        """Seconds since the fixture started, for the report."""
        self.timings[what] = round(time.monotonic() - self.started, 1)

    def compose(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [require_binary("docker-compose"), "-p", PROJECT, "-f", "docker-compose.yml"]
        argv += ["-f", "docker-compose.test.yml", *args]
        try:
            result = subprocess.run(
                argv, cwd=self.project_dir, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            logs = self.logs() if args[0] != "logs" else ""
            raise AssertionError(f"docker-compose {args[0]}: no end within {timeout:g}s; logs:\n{logs}") from None
        if check and result.returncode != 0:
            last = (result.stderr or result.stdout).strip().splitlines()[-5:]
            raise AssertionError(f"docker-compose {args[0]} failed (exit {result.returncode}): {' | '.join(last)}")
        return result

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def inspect(self, container: str) -> dict[str, Any]:
        return dict(json.loads(self.engine.docker("inspect", container).stdout)[0])

    def health(self) -> dict[str, str]:
        states = {}
        for service in LONG_RUNNING:
            container = self.container(service)
            state = self.inspect(container)["State"] if container else {}
            states[service] = state.get("Health", {}).get("Status", state.get("Status", "missing"))
        return states

    def prometheus(self, query: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:9090/api/v1/query?query={query}"
        out = self.engine.docker("exec", self.container("prometheus"), "wget", "-q", "-O", "-", url).stdout
        return list(json.loads(out)["data"]["result"])

    def fetch(self, service: str, url: str) -> str:
        """A URL of the service's own server, read inside its container (its port is the compose network's)."""
        return self.engine.docker("exec", self.container(service), "wget", "-q", "-O", "-", url).stdout

    def episodes(self) -> list[dict[str, Any]]:
        script = (
            "import urllib.request, pathlib; token = pathlib.Path('/run/secrets/reconciler-read-token').read_text()"
            ".strip(); request = urllib.request.Request('http://127.0.0.1:9102/api/v1/episodes', headers="
            "{'Authorization': 'Bearer ' + token}); print(urllib.request.urlopen(request, timeout=5).read().decode())"
        )
        out = self.engine.docker("exec", self.container("reconciler"), "python", "-c", script).stdout
        return list(json.loads(out)["episodes"])

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "20", timeout=60, check=False).stdout


def write_secrets(folder: Path) -> None:
    """The secret files, as secrets/README.md has a user create them."""
    script = (REPO_ROOT / "secrets" / "README.md").read_text().split("```sh\n", 1)[1].split("```", 1)[0]
    folder.mkdir()
    subprocess.run(["sh", "-euc", script], cwd=folder.parent, check=True, timeout=60)
    # The off-host backup repository's files (the README's second block asks the backup host for its key: this stack
    # has no backup host, and nothing here may reach one): a key pair of the test's, and no known host.
    key = folder / "backup-ssh-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=60)
    key.with_suffix(".pub").unlink()
    key.chmod(0o644)  # read by the container's uid 10001, which the test cannot chown to on every host
    (folder / "backup-known-hosts").write_text("")


def override(images: dict[str, str], socket: Path) -> dict[str, Any]:
    services: dict[str, Any] = {name: {"image": image} for name, image in images.items()}
    # The image is built once (the other services use it by its name, trading-ops:local), offline.
    services["db-migrate"] = {"build": {"context": ".", "network": "none", "args": {"WHEELHOUSE": "wheelhouse"}}}
    services["reconciler"] = {"volumes": [f"{socket}:/var/run/docker.sock"]}
    return {"version": "3.8", "services": services, "networks": {"default": {"internal": True}}}


@pytest.fixture(scope="module")
def stack(docker_engine: DockerEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_binary("docker-compose")
    project_dir = tmp_path_factory.mktemp("compose")
    env = {**docker_engine.env, "DOCKER_GID": str(docker_engine.socket.stat().st_gid)}
    env["ALERTMANAGER_FILE"] = ALERTMANAGER_FILE  # as .env sets it to try the routes on one host
    # docker-compose builds through the engine's API (the classic builder), not through a `docker buildx` plugin.
    env |= {"COMPOSE_DOCKER_CLI_BUILD": "0", "DOCKER_BUILDKIT": "0"}
    stack = Stack(docker_engine, project_dir, env, {}, time.monotonic())
    for name in COPIED:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, project_dir / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(source, project_dir / name)
    for wheel in wheelhouse().glob("*.whl"):
        shutil.copy(wheel, project_dir / "wheelhouse" / wheel.name)
    stack.mark("wheelhouse")
    write_secrets(project_dir / "secrets")
    ensure_base_image(docker_engine)
    images = ensure_service_images(docker_engine, project_dir)
    stack.mark("images")
    (project_dir / "docker-compose.test.yml").write_text(yaml.safe_dump(override(images, docker_engine.socket)))
    try:
        stack.compose("build", "db-migrate")
        stack.mark("build")
        # Returns once db-migrate completed and every service started (healthy where one waits on it).
        stack.compose("up", "-d", *SERVICES, timeout=300)
        stack.mark("up")
        yield stack
    finally:
        try:
            stack.compose("down", "-v", "-t", "5", timeout=300)
        except AssertionError:
            pass
        print(f"compose deployment timings (s since the fixture started): {json.dumps(stack.timings)}")


def bot_id(stack: Stack) -> str:
    return str(stack.inspect(BOT_CONTAINER)["Id"])


def wait_until(what: str, check: Any, timeout: float, stack: Stack, interval: float = 2) -> Any:
    """`polling.until` (no error waited out), failing with the stack's logs."""
    try:
        return until(what, check, timeout, interval, tolerate=())
    except AssertionError as exc:
        raise AssertionError(f"{exc}; logs:\n{stack.logs()}") from None


def test_every_service_becomes_healthy(stack: Stack) -> None:
    def all_healthy() -> dict[str, str] | None:
        states = stack.health()
        return states if set(states.values()) == {"healthy"} else None

    states = wait_until("every service healthy", all_healthy, 300, stack)
    stack.mark("healthy")
    assert states == dict.fromkeys(LONG_RUNNING, "healthy")
    migrate = stack.inspect(stack.container("db-migrate"))["State"]
    assert (migrate["Status"], migrate["ExitCode"]) == ("exited", 0)
    # Nothing in the stack reaches beyond the machine: the compose network has no way out.
    network = json.loads(stack.engine.docker("network", "inspect", f"{PROJECT}_default").stdout)[0]
    assert network["Internal"] is True and set(network["Containers"]) >= {bot_id(stack)}
    # As docker-compose.yml asks: read-only, unprivileged, bounded, and the image's own user.
    bot = stack.inspect(BOT_CONTAINER)
    assert bot["HostConfig"]["ReadonlyRootfs"] is True and bot["HostConfig"]["CapDrop"] == ["ALL"]
    assert bot["HostConfig"]["Memory"] == 512 * 1024 * 1024 and bot["Config"]["User"] == "trading"
    # The image is Debian's Python and PostgreSQL client, pg_dump of the server's major version.
    version = stack.engine.docker("exec", BOT_CONTAINER, "pg_dump", "--version").stdout
    server = stack.engine.docker("exec", stack.container("postgres"), "postgres", "--version").stdout
    assert version.split()[2].split(".")[0] == server.split()[2].split(".")[0] == "15", (version, server)


def major_minor(version: str) -> str:
    return ".".join(version.lstrip("v").split(".")[:2])


def test_the_monitoring_servers_run_the_versions_docker_compose_yml_pins(stack: Stack) -> None:
    """What answers is what the file pins, by major and minor version, read from the running servers: a new pin
    without new packages in tests/monitoring_lts.py (or the reverse) fails here, not in a user's deployment."""
    pinned = {
        name: major_minor(service["image"].rpartition(":")[2])
        for name, service in yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"].items()
    }
    prometheus = json.loads(stack.fetch("prometheus", "http://127.0.0.1:9090/api/v1/status/buildinfo"))
    alertmanager = json.loads(stack.fetch("alertmanager", "http://127.0.0.1:9093/api/v2/status"))
    running = {
        "prometheus": major_minor(prometheus["data"]["version"]),
        "alertmanager": major_minor(alertmanager["versionInfo"]["version"]),
    }
    assert running == {name: pinned[name] for name in running} == {"prometheus": "3.5", "alertmanager": "0.33"}
    # The node exporter is bookworm's (compose_images: no newer package is pinned): the same major version, and
    # exactly the one the docs name, so that a change of either is seen.
    metrics = stack.fetch("node-exporter", "http://127.0.0.1:9100/metrics")
    build = next(line for line in metrics.splitlines() if line.startswith("node_exporter_build_info{"))
    found = re.search(r'[{,]version="([^"]+)"', build)  # not goversion="go1.19.8"
    assert found, build
    version = found.group(1)
    assert version == NODE_EXPORTER_RUNS and version.split(".")[0] == pinned["node-exporter"].split(".")[0], build


def test_prometheus_scrapes_the_bot_and_the_reconciler_over_the_compose_network(stack: Stack) -> None:
    def both_up() -> dict[str, float] | None:
        up = {r["metric"]["job"]: float(r["value"][1]) for r in stack.prometheus("up")}
        return up if up.get("tradingbot") == 1 and up.get("trading-ops-reconciler") == 1 else None

    up = wait_until("up == 1 for the bot and the reconciler", both_up, 120, stack)
    assert up["tradingbot"] == up["trading-ops-reconciler"] == 1
    targets = {r["metric"]["instance"] for r in stack.prometheus('up{job=~"tradingbot|trading-ops-reconciler"}')}
    assert targets == {"paper-bot:9101", "reconciler:9102"}


def test_a_hung_bot_container_is_restarted_by_the_reconcilers_docker_action(stack: Stack) -> None:
    """SIGSTOP the bot's process (it hangs: Docker's restart policy does not act on it, its healthcheck fails):
    TradingBotDown fires, Alertmanager posts it to the reconciler, whose docker playbook restarts the container
    through the engine's API on the mounted socket, and verifies the bot is scraped again."""
    test_prometheus_scrapes_the_bot_and_the_reconciler_over_the_compose_network(stack)
    before = stack.inspect(BOT_CONTAINER)["State"]
    os.kill(before["Pid"], signal.SIGSTOP)
    hung = time.monotonic()

    def restarted() -> dict[str, Any] | None:
        state = stack.inspect(BOT_CONTAINER)["State"]
        return state if state["StartedAt"] != before["StartedAt"] else None

    try:
        wait_until("the bot's container restarted", restarted, 240, stack)
    except AssertionError as exc:
        # What the reconciler did: a restart before the hang (a bot slower to answer its first scrapes than the
        # rule's `for:`) leaves this one to bot-restart's 10-minute cooldown.
        ledger = [
            (e["alertname"], e["state"], e["received_at"], e.get("detail"), [a.get("outcome") for a in e["attempts"]])
            for e in stack.episodes()
        ]
        raise AssertionError(f"{exc}\nthe reconciler's episodes: {ledger}") from None
    finally:
        # Not restarted (a failure): let it go on, so that compose down stops it.
        if stack.inspect(BOT_CONTAINER)["State"]["Pid"] == before["Pid"]:
            os.kill(before["Pid"], signal.SIGCONT)

    def verified() -> dict[str, Any] | None:
        for episode in stack.episodes():
            if episode["alertname"] == "TradingBotDown" and episode["state"] == "recovered":
                return episode
        return None

    episode = wait_until("the episode verified", verified, 180, stack, interval=3)
    stack.timings["hang_to_verified"] = round(time.monotonic() - hung, 1)
    steps = [step for attempt in episode["attempts"] for step in attempt["steps"]]
    assert [(s["action"], s["outcome"]) for s in steps] == [("docker", "success")], episode
    assert "HTTP 204" in steps[0]["output"], steps
    assert episode["rule"] == "bot-restart" and episode["labels"]["instance"] == "paper-bot:9101"
    wait_until("the bot healthy again", lambda: stack.health()["paper-bot"] == "healthy", 180, stack)


def test_a_page_arrives_at_the_local_mailbox(stack: Stack) -> None:
    """A critical alert posted to Alertmanager (as docs/deploy-compose.md's route test does) is mailed by the pager
    receiver of alertmanager-local.yml to the mailbox service, which logs it and keeps it in its Maildir."""
    alert = json.dumps([{"labels": {"alertname": "TradingOpsRouteTest", "severity": "critical", "instance": "rt"}}])
    script = (
        "import sys, urllib.request; urllib.request.urlopen(urllib.request.Request("
        "'http://alertmanager:9093/api/v2/alerts', data=sys.argv[1].encode(), "
        "headers={'Content-Type': 'application/json'}), timeout=5)"
    )
    posted = time.monotonic()
    stack.engine.docker("exec", stack.container("reconciler"), "python", "-c", script, alert)
    mailbox = stack.container("mailbox")

    def paged() -> str | None:
        read = stack.engine.docker("logs", mailbox)
        logs = read.stdout + read.stderr
        found = [line for line in logs.splitlines() if "[pager] [FIRING:1] TradingOpsRouteTest on rt" in line]
        return found[0] if found else None

    line = wait_until("the page in the mailbox", paged, 120, stack)
    stack.timings["alert_to_mailbox"] = round(time.monotonic() - posted, 1)
    assert "for oncall@localhost" in line, line
    kept = stack.engine.docker("exec", mailbox, "ls", "/var/lib/trading-ops/mailbox/new").stdout.split()
    assert kept, "the Maildir holds no message"
