"""Grafana dashboards and provisioning: schema conventions, and every query run against a real Prometheus with data.

Integration tests need the `prometheus` binary (Debian package `prometheus`) and the `freqtrade` extra. A module
fixture starts, on free loopback ports with temporary storage, a real paper bot (`trading-ops paper-bot`, its SQLite
database migrated with `trading-ops db upgrade`), a real reconciler (`trading-ops reconciler`), a real freqtrade
trading on the paper gateway with its `trading-ops freqtrade` sidecar, and a Prometheus that scrapes them every second
(jobs tradingbot, trading-ops-reconciler, freqtrade) with the repository's rule files loaded, and stops them all at
the end.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from dashboard_queries import (
    BUILTIN_VALUES,
    DASHBOARD_FILES,
    DATA_DASHBOARDS,
    GRAFANA_DIR,
    NOT_THIS_KIND,
    load,
    panel_queries,
    substitute,
    variable_queries,
)
from freqtrade_helpers import PASSWORD, USERNAME, make_freqtrade
from gateway_helpers import start_gateway
from polling import until
from ports import free_port
from secret_file import write_secret
from system_binaries import REPO_ROOT, require_binary

from trading_ops.bot.control import SOURCE_HEADER

DATASOURCE_UID = "prometheus"
SHARED_TAG = "trading-ops"
PANEL_TYPES = {"timeseries", "stat", "state-timeline", "table", "text", "bargauge", "gauge"}
# A row groups the panels below it (the current schema's way, not the old `rows` list): no query of its own.
ROW = "row"
EXPECTED_DASHBOARDS = {"Trading overview", "Bot health", "Self-healing", "Alerting pipeline", "SLOs", "Readiness"}
LABEL_VALUES = re.compile(r"^label_values\((?:(.+),\s*)?(\w+)\)$")
# The test Prometheus scrapes and evaluates every second, so a few seconds hold enough samples for rate().
SCRAPE_INTERVAL_SECONDS = 1
# Units that name a currency: P&L, notional and fees are in the quote currency of whatever the bot trades.
CURRENCY_UNITS = re.compile(r"^currency|^(USD|EUR|GBP|JPY)$", re.IGNORECASE)
# A healthy paper bot: it trades several times a second and the venue rejects a fifth of its orders, so orders,
# fills, rejects, positions and latencies all show within seconds.
PAPER = {
    "seed": 7,
    "tick_interval_seconds": 0.05,
    "loop_interval_seconds": 0.1,
    "order_latency_seconds": 0.005,
    "reject_probability": 0.2,
    "order_max_age_seconds": 1,
}
STARTUP_SECONDS = 60
CONTROL_TOKEN = "dashboard-test-control-token"
DATA_DEADLINE_SECONDS = 90
STOP_SECONDS = 20


# -- a real paper bot, reconciler and Prometheus, once per session --------------------------------------------


@dataclass
class Stack:
    prometheus_url: str
    bot_instance: str
    sidecar_instance: str
    started_at: float

    def values(self) -> dict[str, str]:
        """The dashboard variables set to what a user would pick (both bots, as Grafana writes a multi-value choice
        into a regex), and Grafana's built-ins."""
        instances = f"({self.bot_instance}|{self.sidecar_instance})"
        jobs = "(tradingbot|freqtrade)"
        return {"job": jobs, "instance": instances, "venue": "paper|kraken", "symbol": "BTC-USD", **BUILTIN_VALUES}


def start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_SECONDS)


def tails(logs: list[Path]) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}" for log in logs if log.exists())


def api_get(url: str, path: str, **params: str) -> dict[str, Any]:
    """GET a Prometheus API path; returns the JSON body, error responses included."""
    query = urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(f"{url}{path}?{query}", timeout=10) as response:
            return dict(json.load(response))
    except urllib.error.HTTPError as error:
        return dict(json.load(error))


def scalar(url: str, query: str) -> float:
    """The value of a query returning one sample, 0 when it returns none."""
    result = api_get(url, "/api/v1/query", query=query)["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """Paper bot + reconciler + Prometheus on free loopback ports; stopped after this module."""
    prometheus_binary = require_binary("prometheus")
    tmp = tmp_path_factory.mktemp("dashboard-stack")
    bot_port, reconciler_port, prometheus_port, nothing_port, sidecar_port = (free_port() for _ in range(5))
    write_secret(tmp / "control-token", f"{CONTROL_TOKEN}\n")
    write_secret(tmp / "reconciler-token", "dashboard-test-reconciler-token\n")
    write_secret(tmp / "freqtrade-password", PASSWORD)
    bot_instance = f"127.0.0.1:{bot_port}"
    sidecar_instance = f"127.0.0.1:{sidecar_port}"
    # A freqtrade trading on the paper gateway (its trades held open), watched by the sidecar: the freqtrade panels.
    gateway = start_gateway(tmp / "gateway")
    request.addfinalizer(gateway.stop)  # also when what follows fails to start (a freqtrade that never ran)
    freqtrade = make_freqtrade(tmp / "freqtrade", gateway.url, gateway.api_key, gateway.api_secret, hold_seconds=3600)
    config = {
        "database": {"url": f"sqlite:///{tmp / 'trading-ops.db'}"},
        "bot": {
            "name": "dashboards",
            "listen": {"host": "127.0.0.1", "port": bot_port},
            "control_token_file": str(tmp / "control-token"),
            "data_dir": str(tmp / "bot-data"),
            # As `trading-ops up` sets them: the panels show the budgets beside the limits.
            "resources": {"memory_budget_bytes": 384 << 20, "data_dir_budget_bytes": 256 << 20},
        },
        # A scheduled reconciliation every 15 s, as `trading-ops up`'s fast profile runs them (60 s by default): the
        # reconciliations panel (an increase, so not the startup run's) shows the first within seconds, not a minute.
        "recovery": {"reconcile_interval_seconds": 15},
        "paper": PAPER,
        "reconciler": {
            "listen": {"host": "127.0.0.1", "port": reconciler_port},
            "token_file": str(tmp / "reconciler-token"),
            "prometheus_url": f"http://127.0.0.1:{prometheus_port}",
            # No Alertmanager in this test: nothing listens there, and the reconciler copes.
            "alertmanager_url": f"http://127.0.0.1:{nothing_port}",
            "check_silences": False,
            "watchdog": {"window_seconds": 0},
            "targets": {bot_instance: {"url": f"http://{bot_instance}", "token_file": str(tmp / "control-token")}},
        },
        "freqtrade": {
            "control_token_file": str(tmp / "control-token"),
            "poll_interval_seconds": 0.5,
            "targets": {
                "dashboards": {
                    "url": freqtrade.url,
                    "username": USERNAME,
                    "password_file": str(tmp / "freqtrade-password"),
                    "listen": {"host": "127.0.0.1", "port": sidecar_port},
                }
            },
        },
        "logging": {"level": "WARNING"},
    }
    config_file = tmp / "trading-ops.yaml"
    config_file.write_text(yaml.safe_dump(config))
    prometheus_config = tmp / "prometheus.yml"
    prometheus_config.write_text(
        yaml.safe_dump(
            {
                "global": {
                    "scrape_interval": f"{SCRAPE_INTERVAL_SECONDS}s",
                    "evaluation_interval": f"{SCRAPE_INTERVAL_SECONDS}s",
                },
                "rule_files": [str(REPO_ROOT / "prometheus" / "rules" / "*.yml")],
                "scrape_configs": [
                    {"job_name": "tradingbot", "static_configs": [{"targets": [bot_instance]}]},
                    {
                        "job_name": "trading-ops-reconciler",
                        "static_configs": [{"targets": [f"127.0.0.1:{reconciler_port}"]}],
                    },
                    {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{prometheus_port}"]}]},
                    {"job_name": "freqtrade", "static_configs": [{"targets": [sidecar_instance]}]},
                ],
            }
        )
    )
    trading_ops = [sys.executable, "-m", "trading_ops", "--config", str(config_file)]
    migrate = subprocess.run([*trading_ops, "db", "upgrade"], capture_output=True, text=True, timeout=120, check=False)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    logs = [tmp / "paper-bot.log", tmp / "reconciler.log", tmp / "prometheus.log", tmp / "sidecar.log"]
    freqtrade.start()
    processes = [
        start([*trading_ops, "paper-bot"], logs[0]),
        start([*trading_ops, "reconciler"], logs[1]),
        start(
            [
                prometheus_binary,
                f"--config.file={prometheus_config}",
                f"--storage.tsdb.path={tmp / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
            logs[2],
        ),
        start([*trading_ops, "freqtrade"], logs[3]),
    ]
    url = f"http://127.0.0.1:{prometheus_port}"
    try:
        # Ready when both targets have been scraped successfully a few times (and rules evaluated with them).
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            exited = [process.args[-1] for process in processes if process.poll() is not None]
            try:
                scraped = scalar(url, "min(sum_over_time(up{job=~'tradingbot|trading-ops-reconciler|freqtrade'}[1m]))")
                targets = scalar(url, "count(up{job=~'tradingbot|trading-ops-reconciler|freqtrade'} == 1)")
                trading = scalar(url, "sum(tradingbot_freqtrade_open_trades)")
            except (OSError, ValueError):  # not listening yet, or 503 "Service Unavailable" while starting
                scraped = targets = trading = 0.0
            if targets == 3 and scraped >= 3 and trading == 2:
                break
            if exited or time.monotonic() > deadline:
                pytest.fail(f"the stack did not come up (exited: {exited})\n{tails(logs)}", pytrace=False)
            time.sleep(0.2)
        yield Stack(url, bot_instance, sidecar_instance, time.time())
    finally:
        stop(processes)
        freqtrade.stop()


def query_range(stack: Stack, expr: str, values: dict[str, str] | None = None) -> dict[str, Any]:
    """The query as a time-series panel runs it: over the stack's lifetime (at most 5 minutes), a 1 s step, with the
    dashboard variables `values` (default: both bots)."""
    end = time.time()
    return api_get(
        stack.prometheus_url,
        "/api/v1/query_range",
        query=substitute(expr, values or stack.values()),
        start=str(max(stack.started_at - 30, end - 300)),
        end=str(end),
        step="1",
    )


# -- queries -------------------------------------------------------------------------------------------------


@pytest.mark.prometheus
@pytest.mark.slow
def test_every_panel_and_annotation_query_runs_without_error_on_real_data(stack: Stack) -> None:
    queries = panel_queries()
    assert len(queries) >= 40
    rejected = {}
    for where, expr in queries:
        for body in (
            api_get(stack.prometheus_url, "/api/v1/query", query=substitute(expr, stack.values())),
            query_range(stack, expr),
        ):
            if body["status"] != "success":
                rejected[where] = f"{body.get('errorType')}: {body.get('error')}"
    assert rejected == {}


@pytest.mark.prometheus
@pytest.mark.slow
def test_trading_bot_health_and_slo_panels_show_data_for_a_healthy_bot(stack: Stack) -> None:
    """Both bots picked, and the paper bot alone (as a user picks one bot): no panel of the bot boards is empty, so an
    empty panel always means something is wrong; a rare event's counter shows 0, not "no data"."""
    queries = {where: expr for where, expr in panel_queries() if where.split("/", 1)[0] in DATA_DASHBOARDS}
    queries = {where: expr for where, expr in queries.items() if "/annotation " not in where}
    both = stack.values()
    kinds = {"both bots": (both["instance"], both["job"]), "paper bot": (stack.bot_instance, "tradingbot")}
    assert set(NOT_THIS_KIND) == set(kinds)
    for kind, excused in NOT_THIS_KIND.items():
        assert set(excused) <= set(queries), f"{kind}: an exception names a panel that no longer exists"
    empty: dict[str, dict[str, str]] = {}
    # Rates and recording rules need a few scrapes and evaluations: poll until every panel has data, or the deadline.
    deadline = time.monotonic() + DATA_DEADLINE_SECONDS
    while True:
        for kind, (instance, job) in kinds.items():
            values = {**stack.values(), "instance": instance, "job": job}
            empty[kind] = {}
            for where, expr in queries.items():
                if where in NOT_THIS_KIND[kind]:
                    continue
                body = query_range(stack, expr, values)
                assert body["status"] == "success", f"{where}: {body.get('error')}"
                if not any(series["values"] for series in body["data"]["result"]):
                    empty[kind][where] = expr
        if not any(empty.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    missing = {kind: sorted(panels) for kind, panels in empty.items() if panels}
    assert missing == {}, f"panels without data for a healthy, trading bot: {missing}"


@pytest.mark.prometheus
@pytest.mark.slow
def test_every_variable_query_finds_the_bot(stack: Stack) -> None:
    queries = variable_queries()
    assert {where.rsplit("$", 1)[1] for where, _ in queries} == {"job", "instance", "venue", "symbol"}
    expected = {"job": "tradingbot", "instance": stack.bot_instance, "venue": "paper", "symbol": "BTC-USD"}
    # A freqtrade is a bot of the boards as well.
    also = {"job": "freqtrade", "instance": stack.sidecar_instance, "venue": "kraken"}
    for where, query in queries:
        found = LABEL_VALUES.match(query)
        assert found, f"{where}: only label_values(...) variables are supported, got {query!r}"
        selector, label = found.groups()
        params = {"match[]": substitute(selector, stack.values())} if selector else {}

        def values() -> list[str] | None:
            body = api_get(stack.prometheus_url, f"/api/v1/label/{label}/values", **params)
            assert body["status"] == "success", f"{where}: {body.get('errorType')}: {body.get('error')}"
            data: list[str] = body["data"]
            return data if {expected[label], also.get(label, expected[label])} <= set(data) else None

        # A variable over a recording rule (the readiness board's `instance:up:avg_over_time1d`) finds a job only once
        # its group, evaluated once a minute, has run after the first whole minute holding a scrape of it (the rule's
        # subquery reads the minute grid): up to two minutes after that job's first scrape, a freqtrade's being the
        # latest. Waited for, not assumed.
        until(f"{where} finds {expected[label]} and {also.get(label, expected[label])}", values, deadline=180)


@pytest.mark.prometheus
@pytest.mark.slow
def test_the_query_check_catches_a_broken_query(stack: Stack) -> None:
    # The tests above would pass vacuously if errors came back as success, or every query found data.
    broken = api_get(
        stack.prometheus_url,
        "/api/v1/query",
        query=substitute('sum by (instance (up{instance=~"$instance"})', stack.values()),
    )
    assert broken["status"] == "error"
    # Vector matching fails only with data: the two sides have several series per instance with the same labels.
    many_to_many = query_range(stack, "tradingbot_position_quantity + on (instance) tradingbot_open_orders")
    assert many_to_many["status"] == "error", many_to_many
    nothing = query_range(stack, 'tradingbot_position_quantity{symbol="NOT-TRADED"}')
    assert nothing["status"] == "success" and nothing["data"]["result"] == []


@pytest.mark.prometheus
@pytest.mark.slow
def test_the_control_annotation_says_who_paused_the_bot(stack: Stack) -> None:
    # The bot's first pause, as the reconciler's `bot` step sends it: the annotation shows it, and by whom.
    for command in ("pause", "resume"):
        request = urllib.request.Request(
            f"http://{stack.bot_instance}/control/{command}",
            method="POST",
            headers={"Authorization": f"Bearer {CONTROL_TOKEN}", SOURCE_HEADER: "reconciler"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
    for stem in DATA_DASHBOARDS:
        (annotation,) = [
            a
            for a in load(GRAFANA_DIR / "dashboards" / f"{stem}.json")["annotations"]["list"]
            if a["name"] == "Control commands"
        ]
        assert "{{source}}" in annotation["titleFormat"] and "source" in annotation["tagKeys"].split(","), stem
        deadline = time.monotonic() + DATA_DEADLINE_SECONDS
        while True:
            body = query_range(stack, annotation["expr"])
            assert body["status"] == "success", body
            who = {(r["metric"]["command"], r["metric"]["source"]) for r in body["data"]["result"]}
            if {("pause", "reconciler"), ("resume", "reconciler")} <= who or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert {("pause", "reconciler"), ("resume", "reconciler")} <= who, (stem, who)


# -- schema and conventions ----------------------------------------------------------------------------------


def test_the_dashboards_exist_with_unique_uids_and_shared_tags() -> None:
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
    # The version the pinned Grafana (docker-compose.yml, 12.x) writes: 40 made `refresh` a string, 41 dropped the
    # time picker's `time_options` (the boards have neither to migrate).
    assert board["schemaVersion"] == 41
    assert isinstance(board.get("refresh", ""), str) and "time_options" not in board.get("timepicker", {})
    assert "rows" not in board
    ids = [panel["id"] for panel in board["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in board["panels"]:
        assert panel["type"] in PANEL_TYPES | {ROW}, panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == ROW:
            assert panel["collapsed"] is False and panel["panels"] == [] and "targets" not in panel, panel["title"]
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(target["datasource"]["uid"] == "${datasource}" for target in panel["targets"])


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_dashboard_variables_and_annotations(path: Path) -> None:
    board = load(path)
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    # The datasource, job and instance variables' shape is test_dashboard_lint.py's (dashboard-linter's rules).
    # The self-healing board also has the operator console's address, which its data links open (reconciler.md).
    extra = ["console"] if path.stem == "self-healing" else []
    assert list(variables) == ["datasource", "job", "instance", "venue", "symbol", *extra]
    assert variables["datasource"]["current"]["value"] == DATASOURCE_UID
    for name in ("venue", "symbol"):
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


def _units(panel: dict[str, Any]) -> list[str]:
    field = panel.get("fieldConfig") or {}
    units = [str((field.get("defaults") or {}).get("unit", ""))]
    for override in field.get("overrides") or []:
        units += [str(p.get("value")) for p in override.get("properties") or [] if p.get("id") == "unit"]
    return units


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_every_panel_says_what_it_shows_and_what_normal_looks_like(path: Path) -> None:
    missing = [
        panel["title"]
        for panel in load(path)["panels"]
        if len(panel.get("description", "").split()) < 8 or "Normal" not in panel["description"]
    ]
    assert missing == []


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_no_panel_hard_codes_a_currency(path: Path) -> None:
    for panel in load(path)["panels"]:
        assert not any(CURRENCY_UNITS.search(unit) for unit in _units(panel)), panel["title"]
        assert not re.search(r"\bUSD\b|\$\d|€", panel["title"] + panel["description"]), panel["title"]
        for target in panel.get("targets", []):
            assert "USD" not in target.get("legendFormat", ""), panel["title"]


def test_the_boards_cover_reconciliation_money_stuck_orders_clock_and_control() -> None:
    """Each metric family the issue asked a panel for is on a board, and control commands and state changes are
    annotations too."""
    exprs = " ".join(expr for _where, expr in panel_queries())
    for family in (
        "tradingbot_reconciliation_runs_total",
        "tradingbot_reconciliation_discrepancies_total",
        "tradingbot_reconciliation_last_success_timestamp_seconds",
        "tradingbot_position_mismatch_quantity",
        "tradingbot_balance",
        "tradingbot_fees_total",
        "tradingbot_filled_notional_total",
        "tradingbot_oldest_order_in_flight_timestamp_seconds",
        "tradingbot_clock_skew_seconds",
        "tradingbot_control_commands_total",
        "tradingbot_state_transitions_total",
        "tradingbot_heartbeat_write_failures_total",
        # What only a freqtrade has (its sidecar's families).
        "tradingbot_freqtrade_up",
        "tradingbot_freqtrade_open_trades",
        "tradingbot_freqtrade_max_open_trades",
        "tradingbot_freqtrade_pair_locks",
        "tradingbot_freqtrade_daily_profit_ratio",
    ):
        assert family in exprs, family
    for stem in DATA_DASHBOARDS:
        names = {
            annotation["name"]
            for annotation in load(GRAFANA_DIR / "dashboards" / f"{stem}.json")["annotations"]["list"]
        }
        assert {"Control commands", "State changes"} <= names, stem


def test_the_slo_board_shows_each_sli_every_alert_window_and_the_budget_left() -> None:
    """For each SLO of prometheus/rules/tradingbot-slo.yml: its SLI, its burn rate over every window its alerts read,
    its objective and its 30-day error budget left."""
    rules = yaml.safe_load((REPO_ROOT / "prometheus" / "rules" / "tradingbot-slo.yml").read_text())
    alert_exprs = " ".join(rule["expr"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule)
    windows = set(re.findall(r"slo:sli_error:ratio_rate(\w+)\{", alert_exprs))
    assert windows == {"5m", "30m", "1h", "2h", "6h", "1d", "3d"}
    board = load(GRAFANA_DIR / "dashboards" / "slo.json")
    exprs = [target["expr"] for panel in board["panels"] for target in panel["targets"]]
    for slo in ("tradingbot-availability", "tradingbot-order-latency"):
        mine = [expr for expr in exprs if f'slo="{slo}"' in expr]
        for window in windows:
            assert any(
                f"slo:sli_error:ratio_rate{window}{{" in expr and "/ on (slo) group_left slo:error_budget:ratio" in expr
                for expr in mine
            ), (slo, window)
        assert any(expr.startswith("1 - slo:sli_error:ratio_rate") for expr in mine), slo
        assert any("slo:period_error_budget_remaining:ratio" in expr for expr in mine), slo
        assert any(expr == f'slo:objective:ratio{{slo="{slo}"}}' for expr in mine), slo
