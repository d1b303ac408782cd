"""Grafana dashboards and provisioning: schema conventions, and every query accepted by a real Prometheus.

Needs the `prometheus` binary (Debian package `prometheus`): a session fixture starts one on a free loopback
port with temporary storage, loading the repository's rule files so recording-rule names resolve.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import free_port
from system_binaries import REPO_ROOT, require_binary

GRAFANA_DIR = REPO_ROOT / "grafana"
DASHBOARD_FILES = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
DATASOURCE_UID = "prometheus"
SHARED_TAG = "trading-ops"
PANEL_TYPES = {"timeseries", "stat", "state-timeline", "table", "text", "bargauge", "gauge"}
EXPECTED_DASHBOARDS = {"Trading overview", "Bot health", "Self-healing", "Alerting pipeline"}
# Values a user would pick, and what Grafana puts in for its built-in variables.
VARIABLE_VALUES = {
    "instance": "paper-bot:9101",
    "venue": "paper",
    "symbol": "BTC-USD",
    "__rate_interval": "20s",
    "__interval": "5s",
    "__interval_ms": "5000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
LABEL_VALUES = re.compile(r"^label_values\((?:(.+),\s*)?(\w+)\)$")


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def substitute(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in VARIABLE_VALUES, f"unknown variable ${name} in {expr!r}"
        return VARIABLE_VALUES[name]

    return VARIABLE.sub(value, expr)


def panel_queries() -> list[tuple[str, str]]:
    """(where, expression) for every panel target and annotation query of every dashboard."""
    queries = []
    for path in DASHBOARD_FILES:
        board = load(path)
        for panel in board["panels"]:
            for target in panel["targets"]:
                queries.append((f"{path.stem}/{panel['title']}/{target['refId']}", target["expr"]))
        for annotation in board["annotations"]["list"]:
            if "expr" in annotation:
                queries.append((f"{path.stem}/annotation {annotation['name']}", annotation["expr"]))
    return queries


def variable_queries() -> list[tuple[str, str]]:
    return [
        (f"{path.stem}/${variable['name']}", variable["query"])
        for path in DASHBOARD_FILES
        for variable in load(path)["templating"]["list"]
        if variable["type"] == "query"
    ]


# -- a real Prometheus, once per session ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus on 127.0.0.1:<free port> with the repository's rules, scraping itself; stopped at the end."""
    binary = require_binary("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config = {
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
        "rule_files": [str(REPO_ROOT / "prometheus" / "rules" / "*.yml")],
        "scrape_configs": [{"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"Prometheus did not start: {process.communicate()[1].decode()[-2000:]}")
            time.sleep(0.1)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def api_get(url: str, path: str, **params: str) -> dict[str, Any]:
    """GET a Prometheus API path; returns the JSON body, error responses included."""
    query = urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(f"{url}{path}?{query}", timeout=10) as response:
            return dict(json.load(response))
    except urllib.error.HTTPError as error:
        return dict(json.load(error))


# -- queries -------------------------------------------------------------------------------------------------


@pytest.mark.prometheus
def test_every_panel_and_annotation_query_is_accepted_by_prometheus(prometheus_url: str) -> None:
    queries = panel_queries()
    assert len(queries) >= 40
    rejected = {}
    for where, expr in queries:
        body = api_get(prometheus_url, "/api/v1/query", query=substitute(expr))
        if body["status"] != "success":
            rejected[where] = f"{body.get('errorType')}: {body.get('error')}"
    assert rejected == {}


@pytest.mark.prometheus
def test_every_variable_query_is_accepted_by_prometheus(prometheus_url: str) -> None:
    queries = variable_queries()
    assert {where.rsplit("$", 1)[1] for where, _ in queries} == {"instance", "venue", "symbol"}
    rejected = {}
    for where, query in queries:
        found = LABEL_VALUES.match(query)
        assert found, f"{where}: only label_values(...) variables are supported, got {query!r}"
        selector, label = found.groups()
        params = {"match[]": substitute(selector)} if selector else {}
        body = api_get(prometheus_url, f"/api/v1/label/{label}/values", **params)
        if body["status"] != "success":
            rejected[where] = f"{body.get('errorType')}: {body.get('error')}"
    assert rejected == {}


@pytest.mark.prometheus
def test_the_query_check_catches_a_broken_query(prometheus_url: str) -> None:
    # The two tests above would pass vacuously if errors came back as success.
    body = api_get(prometheus_url, "/api/v1/query", query=substitute('sum by (instance (up{instance=~"$instance"})'))
    assert body["status"] == "error"


# -- schema and conventions ----------------------------------------------------------------------------------


def test_the_four_dashboards_exist_with_unique_uids_and_shared_tags() -> None:
    boards = [load(path) for path in DASHBOARD_FILES]
    assert {board["title"] for board in boards} == EXPECTED_DASHBOARDS
    uids = [board["uid"] for board in boards]
    assert len(set(uids)) == len(uids)
    assert all(re.fullmatch(r"[a-z0-9-]{1,40}", uid) for uid in uids)
    assert all(path.stem == board["uid"] for path, board in zip(DASHBOARD_FILES, boards, strict=True))
    assert all(SHARED_TAG in board["tags"] for board in boards)


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_dashboard_uses_the_current_schema(path: Path) -> None:
    board = load(path)
    assert board["schemaVersion"] == 39
    assert "rows" not in board
    ids = [panel["id"] for panel in board["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in board["panels"]:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(target["datasource"]["uid"] == "${datasource}" for target in panel["targets"])


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_dashboard_variables_and_annotations(path: Path) -> None:
    board = load(path)
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert list(variables) == ["datasource", "instance", "venue", "symbol"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == DATASOURCE_UID
    for name in ("instance", "venue", "symbol"):
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    names = {annotation["name"] for annotation in board["annotations"]["list"]}
    assert {"Maintenance", "Remediation"} <= names


def test_provisioning_points_grafana_at_prometheus_and_the_dashboards() -> None:
    datasources = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert (source["uid"], source["type"], source["url"]) == (DATASOURCE_UID, "prometheus", "http://prometheus:9090")
    providers = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "trading-ops.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
