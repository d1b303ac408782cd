"""docker-compose.yml: the deployment path. Validated by Debian's `docker-compose config` (no Docker engine needed)."""

from __future__ import annotations

import re
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import monitoring_lts
import yaml
from system_binaries import REPO_ROOT, run_binary

from trading_ops.config import ReconcilerConfig, load_config, parse_config
from trading_ops.durations import parse_duration

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
# Long-running services must prove they are healthy; one-shot jobs only need to be retried.
ONE_SHOT_SERVICES = {"db-migrate"}
PINNED_IMAGES = {
    # The long-term-support line the tests also run (tests/monitoring_lts.py: Debian's packages of the same versions).
    "prometheus": "prom/prometheus:v3.5.",
    "alertmanager": "prom/alertmanager:v0.33.",
    "grafana": "grafana/grafana:12.",
    "node-exporter": "prom/node-exporter:v1.11.",
    "postgres": "postgres:15.",
}
BUILT_SERVICES = {"paper-bot": "paper-bot", "reconciler": "reconciler"}
# Fully pinned: a Debian point release (Debian's own Python and PostgreSQL client come with it).
BASE_IMAGE = re.compile(r"^FROM debian:12\.\d+-slim$", re.MULTILINE)
# The PostgreSQL client the image installs, by major version.
PG_MAJOR = re.compile(r"^ARG PG_MAJOR=(\d+)$", re.MULTILINE)
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
    "mailbox": "smtplib.SMTP('127.0.0.1', 2525",
}
# Where each service writes (every root filesystem is read-only): each must be a named volume or a tmpfs.
WRITABLE_PATHS = {
    "db-migrate": ["/tmp"],
    "paper-bot": ["/var/lib/trading-ops", "/tmp"],
    "reconciler": ["/var/lib/trading-ops", "/var/lib/trading-ops-bot", "/tmp"],
    "prometheus": ["/prometheus"],
    "alertmanager": ["/alertmanager"],
    "grafana": ["/var/lib/grafana", "/tmp"],
    "node-exporter": [],
    # Profile freqtrade: freqtrade writes its bind-mounted user_data (its config, database, logs) and /tmp.
    "freqtrade": ["/tmp"],
    "freqtrade-sidecar": ["/tmp"],
    "postgres": ["/var/lib/postgresql/data", "/var/run/postgresql", "/tmp"],
    # Profile mailbox: its Maildir.
    "mailbox": ["/var/lib/trading-ops"],
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
    # Every profile the file names: docker-compose v2 (Debian 13's) renders only the services of the active profiles,
    # v1 (Debian 12's 1.29) every service; with all of them given, both render every service.
    named = sorted({name for service in compose()["services"].values() for name in service.get("profiles", [])})
    profiles = [arg for name in named for arg in ("--profile", name)]
    result = run_binary("docker-compose", "-f", "docker-compose.yml", *profiles, "config", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rendered = run_binary("docker-compose", "-f", "docker-compose.yml", *profiles, "config", cwd=tmp_path)
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


def test_the_pinned_prometheus_and_alertmanager_are_the_versions_the_tests_run() -> None:
    # The rule, configuration and stack tests run Debian's packages of exactly these (make monitoring-lts).
    services = compose()["services"]
    assert services["prometheus"]["image"] == f"prom/prometheus:v{monitoring_lts.PROMETHEUS_VERSION}"
    assert services["alertmanager"]["image"] == f"prom/alertmanager:v{monitoring_lts.ALERTMANAGER_VERSION}"
    assert services["node-exporter"]["image"] == f"prom/node-exporter:v{monitoring_lts.NODE_EXPORTER_VERSION}"


def test_bot_and_reconciler_are_built_from_the_repository_dockerfile() -> None:
    services = compose()["services"]
    for name, subcommand in BUILT_SERVICES.items():
        assert services[name]["build"] == "."
        assert services[name]["command"][-1] == subcommand
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and BASE_IMAGE.search(dockerfile), "base image not pinned to a point release"
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
    # alertmanager.yml, or the file ALERTMANAGER_FILE names (.env): alertmanager-local.yml, the mailbox's.
    mounted = "./alertmanager/${ALERTMANAGER_FILE:-alertmanager.yml}:/etc/alertmanager/alertmanager.yml:ro"
    assert mounted in services["alertmanager"]["volumes"]
    alertmanager_config = (REPO_ROOT / "alertmanager" / "alertmanager.yml").read_text()
    for secret in services["alertmanager"]["secrets"]:
        assert secret["target"] in alertmanager_config
    # The local file keeps the reconciler's webhook and token, and mails the people's receivers to the mailbox.
    local = yaml.safe_load((REPO_ROOT / "alertmanager" / "alertmanager-local.yml").read_text())
    assert local["global"]["smtp_smarthost"] == "mailbox:2525"
    assert "mailbox" in services and "2525" in services["mailbox"]["command"]
    assert "/etc/alertmanager/secrets/reconciler-token" in yaml.safe_dump(local)
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
    """The containers the reconciler's packaged `docker` playbook restarts in this stack: those its steps name, and
    for a step without one, the container trading-ops.docker.yaml configures for each bot (bots[].container)."""
    text = resources.files("trading_ops.reconciler").joinpath("playbooks", "docker.yml").read_text()
    playbook = yaml.safe_load(text)
    steps = [step for rule in playbook["rules"] for step in rule["steps"] if step["action"] == "docker"]
    named = {step["container"] for step in steps if "container" in step}
    if any("container" not in step for step in steps):
        config = load_config(str(REPO_ROOT / "trading-ops.docker.yaml"))
        named |= {target.container for target in config.reconciler.targets.values()}
    return named


def test_the_reconciler_can_restart_the_bot_container() -> None:
    """TradingBotDown/HeartbeatStale in this stack: the docker playbook restarts the bot's container by name."""
    config = yaml.safe_load((REPO_ROOT / "trading-ops.docker.yaml").read_text())
    assert config["reconciler"]["playbook"] == "docker"
    services = compose()["services"]
    assert docker_playbook_containers() == {
        services["paper-bot"]["container_name"],
        services["freqtrade"]["container_name"],
        services["freqtrade-sidecar"]["container_name"],
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
    assert bot_instances(config) == ["paper-bot:9101"]
    assert config.reconciler.targets["paper-bot:9101"].url == "http://paper-bot:9101"
    # The freqtrade sidecar runs with `--profile freqtrade` only, so it ships commented out (a listed sidecar that is
    # not running would page) and its file_sd file empty, as `config targets --job freqtrade` makes it.
    committed = (REPO_ROOT / "prometheus" / "targets" / "freqtrade.yml").read_text()
    assert committed == file_sd(bot_instances(config, "freqtrade"), "trading-ops.docker.yaml", "freqtrade")
    assert bot_instances(config, "freqtrade") == []
    # Uncommented as docs/freqtrade.md says, it is a bot too: the reconciler's control steps reach it, Prometheus
    # scrapes it in its own job (never in tradingbot's as well), from its own file_sd file.
    text = (REPO_ROOT / "trading-ops.docker.yaml").read_text()
    enabled = re.sub(r"^  # (- name: freqtrade-1|  \w+: .*)$", r"  \1", text, flags=re.MULTILINE)
    assert enabled != text, "the commented freqtrade entry is gone"
    with_freqtrade = parse_config(yaml.safe_load(enabled), base_dir=REPO_ROOT)
    assert bot_instances(with_freqtrade, "freqtrade") == ["freqtrade-sidecar:9103"]
    assert sorted(with_freqtrade.reconciler.targets) == ["freqtrade-sidecar:9103", "paper-bot:9101"]
    assert with_freqtrade.reconciler.targets["freqtrade-sidecar:9103"].url == "http://freqtrade-sidecar:9103"
    # ... and that port is the sidecar's listen port for the freqtrade it names, reconcilable through its venue.
    (target,) = with_freqtrade.freqtrade.targets.values()
    assert target.listen.port == 9103 and target.ccxt is not None
    jobs = {
        job["job_name"]: job
        for job in yaml.safe_load((REPO_ROOT / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    }
    assert jobs["freqtrade"]["file_sd_configs"] == [{"files": ["targets/freqtrade.yml"]}]


def test_the_image_ships_the_postgresql_client_of_the_compose_database() -> None:
    """Scheduled backups of the compose stack run pg_dump -Fc / pg_restore in the reconciler's container: the image
    must ship them, of the postgres service's major version (pg_dump refuses a newer server)."""
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    found = PG_MAJOR.search(dockerfile)
    assert found, "the Dockerfile pins no PostgreSQL client (ARG PG_MAJOR=N)"
    image = compose()["services"]["postgres"]["image"]
    assert image.split(":")[1].split(".")[0] == found.group(1), f"client {found.group(1)} for server {image}"
    install = dockerfile[found.end() : dockerfile.index("WORKDIR /src")]
    # Debian's own client (bookworm ships PostgreSQL 15, the server's major version): no third-party repository.
    assert '"postgresql-client-${PG_MAJOR}"' in install and "http" not in install
    # The build fails unless both programs of that version are on PATH, where backup.pg_dump/pg_restore look.
    for program in ("pg_dump", "pg_restore"):
        assert f'{program} --version | grep -q "(PostgreSQL) ${{PG_MAJOR}}\\."' in install, program
    config = yaml.safe_load((REPO_ROOT / "trading-ops.docker.yaml").read_text())
    assert {"pg_dump", "pg_restore"}.isdisjoint(config.get("backup", {})), "backup.pg_dump would override PATH"
    # The client runs as the image's unprivileged user, installed before the package (one cached layer).
    assert dockerfile.index("postgresql-client") < dockerfile.index("USER trading")


def test_the_reconciler_cleans_the_bots_data_directory() -> None:
    """The docker playbook's disk-cleanup rule runs `trading-ops upkeep cleanup` in the reconciler's container: the
    bot's volume is mounted there, writable, and every upkeep.cleanup directory lies in it, so a disk alert on the
    bot heals as in the local stack."""
    from trading_ops.config import load_config
    from trading_ops.ops.cleanup import cleanup_targets

    services = compose()["services"]
    config = load_config(REPO_ROOT / "trading-ops.docker.yaml")
    bot_mounts = dict(v.split(":")[:2] for v in services["paper-bot"]["volumes"])
    assert bot_mounts["bot-data"] == config.bot.data_dir
    (mount,) = [v.split(":") for v in services["reconciler"]["volumes"] if v.startswith("bot-data:")]
    assert len(mount) == 2, f"bot-data must be writable in the reconciler: {mount}"
    where = Path(mount[1])
    targets = cleanup_targets(config)
    assert {t.name for t in targets} == {"scratch", "logs", "tmp"}
    for target in targets:
        assert target.path.is_relative_to(where), f"{target.name}: {target.path} is not in the bot's volume"
    # The same files as the bot's own default cleanup: its scratch directory (fill_disk), logs and temp files.
    assert {t.path.relative_to(where).as_posix() for t in targets} == {"scratch", "log", "tmp"}
    assert not Path(config.backup.directory).is_relative_to(where), "the reconciler's backups are not the bot's"
    playbook = resources.files("trading_ops.reconciler").joinpath("playbooks", "docker.yml").read_text()
    (rule,) = [r for r in yaml.safe_load(playbook)["rules"] if r["name"] == "disk-cleanup"]
    assert rule["steps"] == [{"action": "exec", "argv": ["trading-ops", "upkeep", "cleanup"], "timeout": "2m"}]


def test_prometheus_keeps_more_than_the_longest_slo_window() -> None:
    """The SLO recording rules average over up to 30 days: Prometheus must hold that much and more, or the error budget
    of the month is computed over what is left of it."""
    rules = (REPO_ROOT / "prometheus" / "rules" / "tradingbot-slo.yml").read_text()
    windows = [parse_duration(w) for w in re.findall(r"\[(\d+[smhdwy])\]", rules)]
    command = compose()["services"]["prometheus"]["command"]
    (flag,) = [a for a in command if a.startswith("--storage.tsdb.retention.time=")]
    retention = parse_duration(flag.split("=", 1)[1])
    assert windows and retention > max(windows), (flag, max(windows))


def test_the_base_image_holds_what_the_dockerfile_installs() -> None:
    """The compose test builds the image offline from a Debian root that already holds what the Dockerfile's
    `apt-get install` asks for (tests/compose_images.py): a package added to the Dockerfile alone would fail that
    build with apt's "Unable to locate package" instead of naming the list to change."""
    from compose_images import BASE_PACKAGES

    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    pg_major = re.search(r"^ARG PG_MAJOR=(\d+)$", dockerfile, re.MULTILINE)
    assert pg_major is not None
    installs = re.findall(r"apt-get install -y --no-install-recommends ([^\\\n&]+)", dockerfile)
    wanted = {word.strip('"').replace("${PG_MAJOR}", pg_major.group(1)) for line in installs for word in line.split()}
    assert wanted and wanted <= set(BASE_PACKAGES), wanted - set(BASE_PACKAGES)
