"""docker-compose.yml: the deployment path. Validated by Debian's `docker-compose config` (no Docker engine needed)."""

from __future__ import annotations

import re
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from system_binaries import REPO_ROOT, run_binary

from trading_ops.config import ReconcilerConfig

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
# Long-running services must prove they are healthy; one-shot jobs only need to be retried.
ONE_SHOT_SERVICES = {"db-migrate"}
PINNED_IMAGES = {
    "prometheus": "prom/prometheus:v2.53.",
    "alertmanager": "prom/alertmanager:v0.27.",
    "grafana": "grafana/grafana:11.",
    "node-exporter": "prom/node-exporter:v1.8.",
    "postgres": "postgres:16.",
}
BUILT_SERVICES = {"paper-bot": "paper-bot", "reconciler": "reconciler"}
# Fully pinned: a Python patch release and a Debian release.
BASE_IMAGE = re.compile(r"^FROM python:3\.11\.\d+-slim-[a-z]+$", re.MULTILINE)
# What each service waits for before it starts: no crash loop while the schema is being created.
START_ORDER = {
    "db-migrate": {"postgres": "service_healthy"},
    "paper-bot": {"postgres": "service_healthy", "db-migrate": "service_completed_successfully"},
    "reconciler": {
        "postgres": "service_healthy",
        "db-migrate": "service_completed_successfully",
        "prometheus": "service_started",
        "alertmanager": "service_started",
    },
    "grafana": {"prometheus": "service_healthy"},
}
# What each long-running service's healthcheck asks for: its own readiness endpoint.
HEALTH_ENDPOINTS = {
    "paper-bot": "http://127.0.0.1:9101/healthz",
    "reconciler": "http://127.0.0.1:9102/readyz",
    "prometheus": "http://127.0.0.1:9090/-/ready",
    "alertmanager": "http://127.0.0.1:9093/-/ready",
    "grafana": "http://127.0.0.1:3000/api/health",
    "node-exporter": "http://127.0.0.1:9100/metrics",
    "postgres": "pg_isready",
}
# Where each service writes (every root filesystem is read-only): each must be a named volume or a tmpfs.
WRITABLE_PATHS = {
    "db-migrate": ["/tmp"],
    "paper-bot": ["/var/lib/trading-ops", "/tmp"],
    "reconciler": ["/var/lib/trading-ops", "/tmp"],
    "prometheus": ["/prometheus"],
    "alertmanager": ["/alertmanager"],
    "grafana": ["/var/lib/grafana", "/tmp"],
    "node-exporter": [],
    # Profile freqtrade: freqtrade writes its bind-mounted user_data (its config, database, logs) and /tmp.
    "freqtrade": ["/tmp"],
    "freqtrade-sidecar": ["/tmp"],
    "postgres": ["/var/lib/postgresql/data", "/var/run/postgresql", "/tmp"],
}
# The postgres image's entrypoint switches to its user (setuid calls, chown): it keeps the default capabilities.
KEEPS_CAPABILITIES = {"postgres"}


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE_FILE.read_text()))


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    # A copy of everything the file references, with the (gitignored) secret files created as a user would.
    for name in ("docker-compose.yml", "Dockerfile", "trading-ops.docker.yaml"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    for folder in ("prometheus", "alertmanager", "grafana"):
        shutil.copytree(REPO_ROOT / folder, tmp_path / folder)
    (tmp_path / "secrets").mkdir()
    for secret in compose()["secrets"].values():
        (tmp_path / secret["file"]).write_text("not-a-real-secret\n")
    result = run_binary("docker-compose", "-f", "docker-compose.yml", "config", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rendered = run_binary("docker-compose", "-f", "docker-compose.yml", "config", cwd=tmp_path)
    services = yaml.safe_load(rendered.stdout)["services"]
    assert set(services) == set(compose()["services"])
    # docker-compose 1.29 keeps what the deployment relies on (an older one would reject or drop it).
    for name, dependencies in START_ORDER.items():
        assert {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()} == dependencies
    assert services["paper-bot"]["container_name"] == "trading-ops-paper-bot"
    # ... and the hardening, the memory limits and the healthchecks (a merge key docker-compose dropped would not be).
    for name, service in services.items():
        assert service["read_only"] is True, name
        assert service["security_opt"] == ["no-new-privileges:true"], name
        assert service["mem_limit"], name
        if name in HEALTH_ENDPOINTS:
            assert HEALTH_ENDPOINTS[name] in " ".join(service["healthcheck"]["test"]), name
    # DOCKER_GID from .env or the environment, else 999: a numeric group either way.
    assert [str(group).isdigit() for group in services["reconciler"]["group_add"]] == [True]


def test_every_image_is_pinned_to_a_tag() -> None:
    services = compose()["services"]
    for name, prefix in PINNED_IMAGES.items():
        image = services[name]["image"]
        assert image.startswith(prefix), f"{name}: {image}"
    for name, service in services.items():
        if "build" not in service:
            repository, _, tag = service["image"].rpartition(":")
            assert repository and tag and tag != "latest", f"{name}: {service['image']}"


def test_bot_and_reconciler_are_built_from_the_repository_dockerfile() -> None:
    services = compose()["services"]
    for name, subcommand in BUILT_SERVICES.items():
        assert services[name]["build"] == "."
        assert services[name]["command"][-1] == subcommand
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and BASE_IMAGE.search(dockerfile), "base image not pinned to a patch release"
    assert 'ENTRYPOINT ["trading-ops"]' in dockerfile


def test_services_have_healthchecks_restart_policies_and_named_volumes() -> None:
    config = compose()
    for name, service in config["services"].items():
        assert service.get("restart") in ("unless-stopped", "always", "on-failure"), name
        if name not in ONE_SHOT_SERVICES:
            assert service["healthcheck"]["test"], name
    named = set(config["volumes"])
    for service in config["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source.startswith(("./", "/")) or source in named, volume
    assert {"prometheus-data", "alertmanager-data", "grafana-data", "postgres-data"} <= named


def test_configs_and_secrets_are_mounted_where_the_configs_expect_them() -> None:
    services = compose()["services"]
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert (
        "./alertmanager/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro" in services["alertmanager"]["volumes"]
    )
    alertmanager_config = (REPO_ROOT / "alertmanager" / "alertmanager.yml").read_text()
    for secret in services["alertmanager"]["secrets"]:
        assert secret["target"] in alertmanager_config
    grafana = services["grafana"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == "/var/lib/grafana/dashboards/trading-overview.json"
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    assert (REPO_ROOT / "grafana" / "dashboards" / Path(home).name).is_file()
    # Prometheus scrapes the services by their compose names.
    prometheus_config = (REPO_ROOT / "prometheus" / "prometheus.yml").read_text()
    prometheus_config += (REPO_ROOT / "prometheus" / "targets" / "tradingbot.yml").read_text()
    for target in ("paper-bot:9101", "reconciler:9102", "alertmanager:9093", "node-exporter:9100"):
        assert target.split(":")[0] in services and target in prometheus_config


def test_secret_files_are_gitignored() -> None:
    ignored = (REPO_ROOT / ".gitignore").read_text().splitlines()
    assert "secrets/*" in ignored
    assert all(secret["file"].startswith("./secrets/") for secret in compose()["secrets"].values())


def test_services_wait_for_what_they_need() -> None:
    services = compose()["services"]
    for name, dependencies in START_ORDER.items():
        depends_on = services[name]["depends_on"]
        assert isinstance(depends_on, dict), f"{name}: depends_on needs the long form with a condition"
        assert {dep: spec["condition"] for dep, spec in depends_on.items()} == dependencies, name
        for dependency, condition in dependencies.items():
            if condition == "service_healthy":
                assert services[dependency]["healthcheck"]["test"], dependency
            if condition == "service_completed_successfully":
                assert dependency in ONE_SHOT_SERVICES


def docker_playbook_containers() -> set[str]:
    """The containers the reconciler's packaged `docker` playbook restarts."""
    text = resources.files("trading_ops.reconciler").joinpath("playbooks", "docker.yml").read_text()
    playbook = yaml.safe_load(text)
    return {step["container"] for rule in playbook["rules"] for step in rule["steps"] if step["action"] == "docker"}


def test_the_reconciler_can_restart_the_bot_container() -> None:
    """TradingBotDown/HeartbeatStale in this stack: the docker playbook restarts the bot's container by name."""
    config = yaml.safe_load((REPO_ROOT / "trading-ops.docker.yaml").read_text())
    assert config["reconciler"]["playbook"] == "docker"
    services = compose()["services"]
    assert docker_playbook_containers() == {
        services["paper-bot"]["container_name"],
        services["freqtrade"]["container_name"],
    }
    socket = config["reconciler"].get("docker_socket", ReconcilerConfig().docker_socket)
    assert f"/var/run/docker.sock:{socket}" in services["reconciler"]["volumes"]
    assert services["reconciler"]["group_add"], "the unprivileged reconciler needs the socket's group"


def writable_targets(service: dict[str, Any], named: set[str]) -> set[str]:
    """Paths a read-only container can still write: named volumes (not :ro) and tmpfs mounts."""
    targets = set()
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        if source in named and mode != ["ro"]:
            targets.add(target)
    targets |= {entry.split(":", 1)[0] for entry in service.get("tmpfs", [])}
    return targets


def test_every_service_is_read_only_unprivileged_and_memory_bounded() -> None:
    config = compose()
    named = set(config["volumes"])
    assert set(config["services"]) == set(WRITABLE_PATHS)
    for name, service in config["services"].items():
        assert service.get("read_only") is True, f"{name}: root filesystem not read-only"
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        if name not in KEEPS_CAPABILITIES:
            assert service.get("cap_drop") == ["ALL"], name
        limit = str(service.get("mem_limit", ""))
        assert re.fullmatch(r"\d+[mg]", limit), f"{name}: mem_limit {limit!r}"
        missing = set(WRITABLE_PATHS[name]) - writable_targets(service, named)
        assert not missing, f"{name} writes {sorted(missing)}: mount a named volume or a tmpfs there"


def test_each_healthcheck_asks_the_service_itself() -> None:
    services = compose()["services"]
    for name, endpoint in HEALTH_ENDPOINTS.items():
        check = services[name]["healthcheck"]
        assert check["test"][0] == "CMD" and endpoint in " ".join(check["test"]), name
        assert check["retries"] >= 3 and check["interval"] and check["timeout"], name


def test_the_bots_are_declared_once_for_prometheus_and_the_reconciler() -> None:
    """trading-ops.docker.yaml lists the bots; the committed file_sd file is what `config targets` makes of that
    list, and the reconciler's targets are derived from the same list."""
    from trading_ops.commands.config_cmd import bot_instances, file_sd
    from trading_ops.config import load_config

    config = load_config(REPO_ROOT / "trading-ops.docker.yaml")
    committed = (REPO_ROOT / "prometheus" / "targets" / "tradingbot.yml").read_text()
    assert committed == file_sd(bot_instances(config), "trading-ops.docker.yaml")
    assert sorted(config.reconciler.targets) == bot_instances(config) == ["paper-bot:9101"]
    assert config.reconciler.targets["paper-bot:9101"].url == "http://paper-bot:9101"
