"""docs/deploy-compose.md run as written: its blocks of commands, in order, with the real Docker engine of this run
(tests/docker_engine.py), then the stack healthy and an alert through Alertmanager to the receivers that can be tried
here (the reconciler's webhook, and the chat receiver at a webhook of the test's: the page says how).

What this machine provides instead of the network, and only that: apt-get and `systemctl enable --now docker` are not
run (the engine is this run's own dockerd, the docker CLI talks to it through DOCKER_HOST, and the commands run in its
network namespace, where compose publishes its ports on 127.0.0.1); the repository the page clones is a copy of this
checkout, at a directory of the test's instead of /opt/trading-ops/src; the socket the page stats is the engine's. A
docker-compose.override.yml, which docker-compose reads beside the file by itself, changes only what must differ
offline: the images of the registry's services (tests/compose_images.py), the image built from the wheelhouse without
a network, the Docker socket the reconciler mounts, and Grafana (no Debian package, no registry) left out by a profile.
Everything else (the secrets and their modes, the configuration check in the image, `docker-compose build` and
`up -d`, the health checks) runs as the page has it: a doc change that breaks a step fails here."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_images import ensure_base_image, ensure_service_images
from debian_root import wheelhouse
from doc_commands import apt_packages, page_blocks, script, slowest
from docker_engine import DockerEngine
from polling import until
from system_binaries import REPO_ROOT, require_binary

# The first run on a machine makes the roots and the images (the services root alone took 15 minutes under load).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

PAGE = REPO_ROOT / "docs" / "deploy-compose.md"
PROVIDED = (
    "apt-get update",
    "apt-get install ",
    "systemctl enable --now docker",
    "git clone https://github.com/trading-ops/trading-ops /opt/trading-ops/src",
)
CHECKOUT = "/opt/trading-ops/src"
SOCKET = "/var/run/docker.sock"
SCRIPT_TIMEOUT_SECONDS = 1200.0
# The stack's project name: docker-compose's default, the checkout's directory name (the test's own directory).
SERVICES = ("postgres", "paper-bot", "reconciler", "prometheus", "alertmanager", "node-exporter")


@dataclass
class Deployed:
    engine: DockerEngine
    checkout: Path
    env: dict[str, str]
    output: str

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [require_binary("docker-compose"), *args],
            cwd=self.checkout,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"docker-compose {args[0]}: {(result.stderr or result.stdout)[-1500:]}")
        return result

    def exec_python(self, service: str, code: str) -> str:
        container = self.compose("ps", "-q", service).stdout.strip()
        return self.engine.docker("exec", container, "python", "-c", code).stdout


def checkout_copy(into: Path) -> Path:
    shutil.copytree(
        REPO_ROOT,
        into,
        ignore=shutil.ignore_patterns(".git", ".venv", "var", "build", "dist", "site", "*.egg-info", "__pycache__"),
    )
    for wheel in wheelhouse().glob("*.whl"):
        shutil.copy(wheel, into / "wheelhouse" / wheel.name)
    return into


def override(images: dict[str, str], socket: Path) -> dict[str, Any]:
    services: dict[str, Any] = {name: {"image": image} for name, image in images.items()}
    built = {"context": ".", "network": "none", "args": {"WHEELHOUSE": "wheelhouse"}}
    for name in ("db-migrate", "paper-bot", "reconciler"):
        services.setdefault(name, {})["build"] = built
    services["reconciler"]["volumes"] = [f"{socket}:{SOCKET}"]
    services["grafana"] = {"profiles": ["grafana"]}
    return {"version": "3.8", "services": services}


def test_the_compose_page_installs_what_it_uses() -> None:
    """Without an engine: the page's packages have what its commands run (ssh-keygen for the backup key), and no
    sudo (a fresh Debian host has none)."""
    blocks = page_blocks(PAGE.read_text())
    commands = script(blocks, PROVIDED)
    packages = set(apt_packages(blocks))
    assert {"docker.io", "docker-compose", "curl", "git", "python3"} <= packages
    if "ssh-keygen" in commands:
        assert "openssh-client" in packages
    assert "sudo" not in commands


@pytest.fixture(scope="module")
def deployed(docker_engine: DockerEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    require_binary("docker-compose")
    require_binary("nsenter")
    tmp = tmp_path_factory.mktemp("deploy-compose")
    checkout = checkout_copy(tmp / "src")
    started = time.monotonic()
    ensure_base_image(docker_engine)
    images = ensure_service_images(docker_engine, tmp / "images")
    (checkout / "docker-compose.override.yml").write_text(yaml.safe_dump(override(images, docker_engine.socket)))
    print(f"images ready: {time.monotonic() - started:.1f}s")
    env = {**docker_engine.env, "COMPOSE_DOCKER_CLI_BUILD": "0", "DOCKER_BUILDKIT": "0"}
    commands = script(
        page_blocks(PAGE.read_text()), PROVIDED, {CHECKOUT: str(checkout), SOCKET: str(docker_engine.socket)}
    )
    assert docker_engine.proc is not None
    deployed = Deployed(docker_engine, checkout, env, "")
    try:
        began = time.monotonic()
        ran = subprocess.run(
            ["nsenter", f"--net=/proc/{docker_engine.proc.pid}/ns/net", "--", "bash", "-c", commands],
            env=env,
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT_SECONDS,
            check=False,
        )
        print(f"the page's commands: {time.monotonic() - began:.1f}s; the slowest (s): {slowest(ran.stderr)}")
        if ran.returncode != 0:
            logs = deployed.compose("logs", "--no-color", "--tail", "15", check=False).stdout
            pytest.fail(f"the page's commands failed: {ran.stderr[-3000:]}\n--- the stack's logs ---\n{logs[-4000:]}")
        deployed.output = ran.stdout
        yield deployed
    finally:
        deployed.compose("--profile", "grafana", "down", "-v", "-t", "5", check=False)


def test_the_compose_page_deploys_a_healthy_stack_as_written(deployed: Deployed) -> None:
    # The secrets as the page makes them: the folder root's alone, the files readable by the containers' users.
    secrets = deployed.checkout / "secrets"
    assert oct(secrets.stat().st_mode & 0o777) == "0o700"
    assert oct((secrets / "control-token").stat().st_mode & 0o777) == "0o644"

    def healthy() -> dict[str, str] | None:
        states = {}
        for service in SERVICES:
            container = deployed.compose("ps", "-q", service).stdout.strip()
            state = json.loads(deployed.engine.docker("inspect", container).stdout)[0]["State"] if container else {}
            states[service] = state.get("Health", {}).get("Status", state.get("Status", "missing"))
        return states if set(states.values()) == {"healthy"} else None

    until("every service of the page's stack healthy", healthy, deadline=240, interval=3)


def test_the_pages_test_alert_reaches_the_reconciler_and_the_pager(deployed: Deployed) -> None:
    """The page's last block, as it ran: the reconciler's ledger lists the test alert (its webhook received it), and
    Alertmanager attempted the pager's PagerDuty notification (it fails here, without a network: counted)."""
    lines = deployed.output.splitlines()
    assert any("TradingOpsRouteTest" in line for line in lines), deployed.output[-2000:]
    assert any(
        line.startswith("alertmanager_notifications_total{") and 'integration="pagerduty"' in line for line in lines
    ), deployed.output[-2000:]
