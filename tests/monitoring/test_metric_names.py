"""Every metric a rule, a dashboard or a runbook names is one something really exports.

The exported names come from the code itself: a paper bot (the instrumentation library, its collectors with the
resource budgets configured, and the reconciliation metrics), the reconciler's metrics with the scheduled operations'
(backups, upkeep, scheduler, maintenance windows, daily summary) and a freqtrade sidecar, each built on a fresh
CollectorRegistry, plus the recording rules' outputs. Families of the servers we deploy but do not build
(Prometheus, Alertmanager, the node exporter) are allowed by prefix; nothing else is allowed by name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import ccxt.async_support as ccxt_async
import pytest
import yaml
from paper_helpers import TOKEN, fast_config
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from system_binaries import REPO_ROOT

from trading_ops import logsetup
from trading_ops.bot.log_metrics import LogCollector
from trading_ops.bot.streams.metrics import StreamMetrics
from trading_ops.config import parse_config
from trading_ops.db import migrate
from trading_ops.db.base import make_engine
from trading_ops.integrations.freqtrade.app import FreqtradeSidecar
from trading_ops.integrations.freqtrade.poller import Snapshot
from trading_ops.ops.maintenance_metrics import register_maintenance_metrics
from trading_ops.ops.scheduler import SchedulerMetrics
from trading_ops.ops.state_metrics import register_ops_metrics
from trading_ops.paper.bot import PaperBot
from trading_ops.reconciler.approvals import ApprovalCollector, ApprovalStore
from trading_ops.reconciler.commit_probe import CommitProbe
from trading_ops.reconciler.jobs import configured_jobs
from trading_ops.reconciler.ledger import Ledger
from trading_ops.reconciler.ledger_reading import BackgroundReading
from trading_ops.reconciler.metrics import ReconcilerMetrics
from trading_ops.reconciler.outbox import OutboxCollector, OutboxStore
from trading_ops.venues.call_counter import WeightBudget
from trading_ops.venues.ccxt.rest import CcxtBroker

RULE_FILES = sorted((REPO_ROOT / "prometheus" / "rules").glob("*.yml"))
DASHBOARD_FILES = sorted((REPO_ROOT / "grafana" / "dashboards").glob("*.json"))
RUNBOOK_FILES = sorted((REPO_ROOT / "runbooks").glob("*.md"))
# Families of the servers the stack runs but this repository does not build; their names are theirs to keep.
FOREIGN_PREFIXES = (
    "prometheus_",  # Prometheus about itself (rule evaluation, notifications to Alertmanager)
    "alertmanager_",  # Alertmanager about itself (alerts, notifications and their failures)
    "node_",  # the node exporter (host CPU, memory, filesystems)
    "go_",  # the Go runtime of all three
)
# Series Prometheus writes itself rather than scrapes.
PROMETHEUS_SERIES = {
    "up",
    "ALERTS",
    "ALERTS_FOR_STATE",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
}
# A small PromQL lexer, enough to find metric names: strings, comments, label matchers, ranges, label lists and
# offsets are dropped; an identifier followed by `(` is a function or an aggregation; keywords are not names.
GRAFANA_VARIABLE = re.compile(r"\$\{\w+(?::\w+)?\}|\$\w+")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
COMMENT = re.compile(r"#[^\n]*")
LABEL_MATCHERS = re.compile(r"\{[^{}]*\}")
RANGE = re.compile(r"\[[^\[\]]*\]")
LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
OFFSET = re.compile(r"\boffset\s+-?\w+")
IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
KEYWORDS = {"and", "or", "unless", "bool", "group_left", "group_right", "inf", "nan", "offset", "start", "end"}
LABEL_VALUES = re.compile(r"^label_values\((?:(.+),\s*)?\w+\)$")
RUNBOOK_NAME = re.compile(r"(?<![\w:])[A-Za-z_:]*(?:tradingbot|tradingops)_[A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (Grafana variables allowed)."""
    text = GRAFANA_VARIABLE.sub("1", expr)
    text = STRING.sub('""', text)
    text = COMMENT.sub("", text)
    text = LABEL_MATCHERS.sub("", text)
    text = RANGE.sub("", text)
    text = LABEL_LIST.sub("", text)
    text = OFFSET.sub("", text)
    return {
        name
        for name, call in IDENTIFIER.findall(text)
        if not call and name not in KEYWORDS and name.lower() not in KEYWORDS
    }


def rule_expressions() -> Iterator[tuple[str, str]]:
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                yield f"{path.name}/{rule.get('alert') or rule['record']}", rule["expr"]


def recorded_names() -> set[str]:
    return {
        rule["record"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    for path in DASHBOARD_FILES:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                yield f"{path.stem}/{panel['title']}/{target['refId']}", target["expr"]
        for annotation in board["annotations"]["list"]:
            if "expr" in annotation:
                yield f"{path.stem}/annotation {annotation['name']}", annotation["expr"]
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                found = LABEL_VALUES.match(variable["query"])
                assert found, f"{path.stem}/${variable['name']}: unsupported variable query {variable['query']!r}"
                if found.group(1):
                    yield f"{path.stem}/${variable['name']}", found.group(1)


def family_sample_names(registry: CollectorRegistry) -> tuple[set[str], set[str]]:
    """Every sample name the registry's families can expose (whether or not a child exists yet), and every family
    name. Family names of counters and histograms are not queryable; only runbook prose may use them."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "summary": ("", "_sum", "_count"),
        "info": ("_info",),
        "stateset": ("",),
    }
    samples, families = set(), set()
    for family in registry.collect():
        families.add(family.name)
        samples.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        samples.update(sample.name for sample in family.samples)
    return samples, families


@pytest.fixture(scope="module")
def registries(tmp_path_factory: pytest.TempPathFactory) -> tuple[CollectorRegistry, ...]:
    """The registries of a paper bot, of the reconciler's metrics and of a freqtrade sidecar, built in-process, fresh
    (the sidecar with a snapshot of a freqtrade that answers: its data families are only there while one does)."""
    bot_registry = CollectorRegistry()
    config = fast_config(tmp_path_factory.mktemp("paper-bot"))
    # The budgets' families are exported only when set; the disk and memory alerts read them.
    config.bot.resources.memory_budget_bytes = config.bot.resources.data_dir_budget_bytes = 1 << 30
    bot = PaperBot(config, token=TOKEN, registry=bot_registry, chaos=True)
    bot.inst.data_dir_size.measure()  # what a started bot's first walk exports
    bot.engine.dispose()
    reconciler_registry = CollectorRegistry()
    ReconcilerMetrics(reconciler_registry)
    # The reconciler also exports the backup and upkeep records (trading_ops.ops.state_metrics).
    register_ops_metrics(fast_config(tmp_path_factory.mktemp("ops")), reconciler_registry)
    # The scheduled operations run in the reconciler and export through its registry.
    jobs = configured_jobs(parse_config({}))
    scheduler_metrics = SchedulerMetrics(reconciler_registry, jobs)
    for job in jobs:  # a task's own last-success gauge appears with its first success
        scheduler_metrics.succeeded(job.name, datetime.now(UTC))
    ops_db = tmp_path_factory.mktemp("ops-db") / "ops.db"
    migrate.upgrade(f"sqlite:///{ops_db}")
    register_maintenance_metrics(reconciler_registry, make_engine(f"sqlite:///{ops_db}")).read()
    # The escalation outbox's gauges, read from the ledger on each scrape.
    outbox = BackgroundReading("outbox", OutboxStore(Ledger(make_engine(f"sqlite:///{ops_db}"))).stats)
    outbox.read()
    reconciler_registry.register(OutboxCollector(outbox))
    # The approvals' gauges too.
    approvals = BackgroundReading("approvals", ApprovalStore(Ledger(make_engine(f"sqlite:///{ops_db}"))).stats)
    approvals.read()
    reconciler_registry.register(ApprovalCollector(approvals))
    # The ledger's commit probe (what /readyz and TradingOpsLedgerCommitsHeld read).
    CommitProbe(Ledger(make_engine(f"sqlite:///{ops_db}")), "metric-names", reconciler_registry)
    sidecar_registry = CollectorRegistry()
    sidecar = FreqtradeSidecar(
        name="ft", url="http://127.0.0.1:9", username="u", password="p", token=TOKEN, registry=sidecar_registry
    )
    # What the sidecar exports while its freqtrade answers: a poll's snapshot as a trading freqtrade answers it.
    sidecar.poller.snapshot = Snapshot(
        up=True,
        polled_at=1.0,
        version="2026.9",
        config={"exchange": "kraken", "strategy": "S", "state": "running", "max_open_trades": 2},
        heartbeat=1.0,
        bot_start=1.0,
        trades=({"pair": "BTC/USD", "amount": 0.1, "current_rate": 60000.0, "profit_abs": 1.0, "orders": []},),
        profit={"trade_count": 1, "closed_trade_count": 0, "winning_trades": 0, "losing_trades": 0},
        balance={"currencies": [{"currency": "USD", "balance": 100.0}]},
        locks={"locks": []},
        today={"abs_profit": 0.0, "rel_profit": 0.0},
    )
    # A streaming ccxt bot's stream (StreamingCcxtBroker registers it on the bot's registry): one sample of each.
    stream_registry = CollectorRegistry()
    stream = StreamMetrics(stream_registry)
    stream.connected.labels("private").set(1)
    stream.rest_fallback.labels("private").set(0)
    stream.last_message.labels("book", "BTC/USD").set(1.0)
    stream.silence_timeout.labels("book", "BTC/USD").set(3.0)
    stream.book_in_sync.labels("BTC/USD").set(1)
    stream.checksum_failures.labels("BTC/USD")
    stream.resyncs.labels("book", "checksum")
    stream.sequence_gaps.labels("executions")
    stream.fills_first_seen.labels("stream")
    stream.subscribe_failures.labels("ticker", "refused")
    stream.subscribed.labels("executions").set(1)  # Binance's user data stream (ProFills on a hooked client)
    stream.subscription_ends.labels("executions")
    stream.channel_silent.labels("executions").set(0)
    stream.book_gaps.labels("BTC/USD")  # Binance's books, synced by update ids (BinanceBooks)
    # A ccxt bot on Binance: its weight budget's families (CcxtBroker.register_metrics), on the same registry.
    binance_broker = CcxtBroker(ccxt_async.binance({}), ["BTC-USD"], weight_budget=WeightBudget())
    binance_broker.register_metrics(stream_registry)
    # The bot's log families exist only with the log `logsetup.setup` made (the CLI's, or bot.log_file): as a bot
    # logging to its own rotated file exports them, read once with that log in place.
    log_path = tmp_path_factory.mktemp("log") / "bot.log"
    log_path.write_text("a line\n")
    saved = dict(vars(logsetup.OUTPUT))
    vars(logsetup.OUTPUT).update(active=True, file=log_path, file_max_bytes=10_000_000, written_bytes=7)
    try:
        log_families = list(LogCollector(None).collect())
    finally:
        vars(logsetup.OUTPUT).update(saved)
    log_registry = CollectorRegistry()
    log_registry.register(Fixed(log_families))
    return bot_registry, reconciler_registry, sidecar_registry, stream_registry, log_registry


class Fixed(Collector):
    """Families read once, served as they were."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


@pytest.fixture(scope="module")
def exported(registries: tuple[CollectorRegistry, ...]) -> set[str]:
    """Every sample name the bot and the reconciler can expose."""
    return {name for registry in registries for name in family_sample_names(registry)[0]}


@pytest.fixture(scope="module")
def families(registries: tuple[CollectorRegistry, ...]) -> set[str]:
    return {name for registry in registries for name in family_sample_names(registry)[1]}


def is_defined(name: str, exported: set[str]) -> bool:
    return (
        name in exported or name in recorded_names() or name in PROMETHEUS_SERIES or name.startswith(FOREIGN_PREFIXES)
    )


# -- the extractor itself ----------------------------------------------------------------------------------------


def test_the_extractor_finds_metric_names_and_nothing_else() -> None:
    expr = """
        sum without (outcome) (rate(tradingops_episodes_total{outcome=~"recovered|failed", job="x"}[1h] offset 5m))
        / on (job, instance) group_left (version) max by (job) (tradingbot_build_info) > bool 0.5 * 4e3
        or absent(up{job="tradingbot"}) unless histogram_quantile(0.99, x_bucket[$__rate_interval])  # a comment
        and instance_venue:tradingbot_fills:rate5m{instance=~"$instance"} @ start()
    """
    assert metric_names(expr) == {
        "tradingops_episodes_total",
        "tradingbot_build_info",
        "up",
        "x_bucket",
        "instance_venue:tradingbot_fills:rate5m",
    }


def test_the_registries_export_the_catalogue(exported: set[str]) -> None:
    # Guards the "exported" side: counters show with _total, histograms with _bucket, both processes are there.
    assert {
        "tradingbot_orders_submitted_total",
        "tradingbot_order_ack_latency_seconds_bucket",
        "tradingbot_heartbeat_timestamp_seconds",
        "tradingbot_reconciliation_last_success_timestamp_seconds",
        "process_resident_memory_bytes",
        "tradingops_episodes_total",
        "tradingops_maintenance_active",
        "tradingops_daily_report_last_success_timestamp_seconds",
        "tradingops_maintenance_window_recorded_end_timestamp_seconds",
        "tradingops_scheduled_task_failures_total",
        "tradingops_backup_last_success_timestamp_seconds",
        "tradingops_backup_failures_total",
        "tradingbot_data_dir_bytes",
        "tradingbot_data_dir_budget_bytes",
        "tradingbot_memory_budget_bytes",
    } <= exported


# -- rules, dashboards, runbooks ---------------------------------------------------------------------------------


def test_every_metric_a_rule_uses_is_exported(exported: set[str]) -> None:
    used = {(where, name) for where, expr in rule_expressions() for name in metric_names(expr)}
    assert len({name for _, name in used}) >= 30
    unknown = sorted(f"{where}: {name}" for where, name in used if not is_defined(name, exported))
    assert unknown == [], "rules use metrics nothing exports"


def test_every_metric_a_dashboard_queries_is_exported(exported: set[str]) -> None:
    used = {(where, name) for where, expr in dashboard_expressions() for name in metric_names(expr)}
    assert len({name for _, name in used}) >= 30
    unknown = sorted(f"{where}: {name}" for where, name in used if not is_defined(name, exported))
    assert unknown == [], "dashboards query metrics nothing exports"


@pytest.mark.parametrize("path", RUNBOOK_FILES, ids=lambda p: p.stem)
def test_every_trading_ops_metric_a_runbook_names_is_exported(
    path: Path, exported: set[str], families: set[str]
) -> None:
    # Runbooks quote PromQL for on-call to paste: a renamed metric must not leave a query that returns nothing.
    # Prose may name a family (a histogram) or grep for a prefix (`grep tradingops_watchdog`).
    unknown = sorted(
        name
        for name in set(RUNBOOK_NAME.findall(path.read_text()))
        if not name.endswith("_")
        and not is_defined(name, exported)
        and name not in families
        and not any(known.startswith(f"{name}_") for known in exported)
    )
    assert unknown == []
