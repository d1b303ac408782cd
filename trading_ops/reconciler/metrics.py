"""The reconciler's `tradingops_` metrics (names from the agreed catalogue)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from trading_ops import __version__
from trading_ops.db.states import CLOSED_STATES, OPEN_STATES
from trading_ops.reconciler.actions.escalate import CIRCUIT_OPEN, FAILED
from trading_ops.reconciler.ledger import PRUNED_TABLES
from trading_ops.reconciler.ledger.rollback import KINDS as LOST_KINDS

PREFIX = "tradingops"
ESCALATION_ALERTS = (FAILED, CIRCUIT_OPEN)
REJECT_REASONS = ("unauthorized", "too_large", "invalid_json", "invalid_payload", "unsupported_version")
# Actions take from milliseconds (an HTTP call) to minutes (a restart and its health wait).
ACTION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Alert start to first action / verified recovery: wait_for and Prometheus `for:` make these seconds to minutes.
RECOVERY_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
# Every way an approval stops waiting (tradingops_approval_decisions_total{outcome}).
APPROVAL_OUTCOMES = ("approved", "rejected", "expired")
# Asked to decided: a person answering a page takes minutes; approval_timeout defaults to 15 minutes.
DECISION_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)


class LedgerSnapshot:
    """Counts read from the ledger by the engine loop, exported without touching the database on a scrape."""

    def __init__(self) -> None:
        self.states: dict[str, int] = {}
        self.queue_depth = 0
        self.open_circuits: list[str] = []
        self.known_targets: set[str] = set()
        self.open_by_target: dict[tuple[str, str], int] = {}
        # Every (target, alertname) ever open since the start: exported at 0 once closed, so that a query sees the
        # episode end rather than a series vanishing.
        self.known_open: set[tuple[str, str]] = set()


class SnapshotCollector(Collector):
    def __init__(self, snapshot: LedgerSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        # Open states only (closed episodes are counted by tradingops_episodes_total{outcome}); its own family name,
        # so the gauge and that counter never share one.
        episodes = GaugeMetricFamily(f"{PREFIX}_open_episodes", "Open episodes by state.", labels=["state"])
        for state in OPEN_STATES:
            episodes.add_metric([state], self.snapshot.states.get(state, 0))
        yield episodes
        yield GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "Episodes due for a run and not yet claimed.", value=self.snapshot.queue_depth
        )
        circuit = GaugeMetricFamily(
            f"{PREFIX}_circuit_open", "1 while a target's circuit breaker is open.", labels=["target"]
        )
        for target in sorted(self.snapshot.known_targets | set(self.snapshot.open_circuits)):
            circuit.add_metric([target], 1 if target in self.snapshot.open_circuits else 0)
        yield circuit
        # Per target and alert: what TradingBotUnhandledExposure reads as "an episode is handling this bot".
        by_target = GaugeMetricFamily(
            f"{PREFIX}_target_open_episodes",
            "Open episodes by target and alert name (0 once they closed).",
            labels=["target", "alertname"],
        )
        for target, alertname in sorted(self.snapshot.known_open):
            by_target.add_metric([target, alertname], self.snapshot.open_by_target.get((target, alertname), 0))
        yield by_target


class ReconcilerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        # `_created` samples double the series count for no use in alerting; the bots don't export them either.
        disable_created_metrics()
        self.registry = registry
        self.snapshot = LedgerSnapshot()
        registry.register(SnapshotCollector(self.snapshot))
        info = Gauge(f"{PREFIX}_build_info", "trading-ops version.", ["version"], registry=registry)
        info.labels(__version__).set(1)
        self.notifications_received = Counter(
            f"{PREFIX}_notifications_received", "Webhook notifications received.", registry=registry
        )
        self.notifications_rejected = Counter(
            f"{PREFIX}_notifications_rejected", "Webhook notifications rejected.", ["reason"], registry=registry
        )
        for reason in REJECT_REASONS:
            self.notifications_rejected.labels(reason)
        self.alerts_received = Counter(
            f"{PREFIX}_alerts_received", "Alerts in stored notifications.", ["status"], registry=registry
        )
        for status in ("firing", "resolved"):
            self.alerts_received.labels(status)
        self.alerts_invalid = Counter(
            f"{PREFIX}_alerts_invalid",
            "Alerts refused on their own (an absurd startsAt, say); the rest of their notification was stored.",
            registry=registry,
        )
        self.alerts_truncated = Counter(
            f"{PREFIX}_alerts_truncated",
            "Alerts Alertmanager left out of its notifications (truncatedAlerts: its receiver's max_alerts).",
            registry=registry,
        )
        self.alerts_deduplicated = Counter(
            f"{PREFIX}_alerts_deduplicated", "Alerts that belonged to a known episode.", registry=registry
        )
        self.episodes_total = Counter(
            f"{PREFIX}_episodes", "Episodes closed, by outcome.", ["outcome"], registry=registry
        )
        for outcome in CLOSED_STATES:
            self.episodes_total.labels(outcome)
        self.actions = Counter(
            f"{PREFIX}_actions", "Playbook steps by action and outcome.", ["action", "outcome"], registry=registry
        )
        self.action_duration = Histogram(
            f"{PREFIX}_action_duration_seconds",
            "Duration of playbook steps.",
            ["action"],
            buckets=ACTION_BUCKETS,
            registry=registry,
        )
        self.time_to_first_action = Histogram(
            f"{PREFIX}_time_to_first_action_seconds",
            "Alert start to the first action of its episode.",
            buckets=RECOVERY_BUCKETS,
            registry=registry,
        )
        self.time_to_recovery = Histogram(
            f"{PREFIX}_time_to_recovery_seconds",
            "Alert start to verified recovery.",
            buckets=RECOVERY_BUCKETS,
            registry=registry,
        )
        self.escalations = Counter(
            f"{PREFIX}_escalations",
            "Alerts posted to Alertmanager by the reconciler.",
            ["alertname"],
            registry=registry,
        )
        self.actions_in_flight = Gauge(f"{PREFIX}_actions_in_flight", "Runs in progress.", registry=registry)
        self.paused = Gauge(f"{PREFIX}_paused", "1 while the reconciler's own pause is on.", registry=registry)
        self.escalation_fallbacks = Counter(
            f"{PREFIX}_escalation_fallbacks",
            "Escalations sent through the apprise notifications because Alertmanager could not be reached.",
            ["alertname"],
            registry=registry,
        )
        self.escalation_failures = Counter(
            f"{PREFIX}_escalation_failures",
            "Escalations that reached neither Alertmanager nor the apprise notifications.",
            ["alertname"],
            registry=registry,
        )
        for alertname in ESCALATION_ALERTS:
            self.escalations.labels(alertname)
            self.escalation_fallbacks.labels(alertname)
            self.escalation_failures.labels(alertname)
        self.leftover_processes_killed = Counter(
            f"{PREFIX}_leftover_processes_killed",
            "Processes of a step still running after the reconciler restarted, killed before the retry.",
            registry=registry,
        )
        self.ledger_rollbacks = Counter(
            f"{PREFIX}_ledger_rollbacks",
            "Times this replica found writes of its own gone from the ledger (a failover that lost commits).",
            registry=registry,
        )
        self.ledger_lost_writes = Counter(
            f"{PREFIX}_ledger_lost_writes",
            "Writes of this replica found gone from the ledger, by kind (claim, attempt, step, outcome, page).",
            ["kind"],
            registry=registry,
        )
        for kind in LOST_KINDS:
            self.ledger_lost_writes.labels(kind)
        self.maintenance_active = Gauge(
            f"{PREFIX}_maintenance_active",
            "1 while an active Alertmanager silence (not the reconciler's own) targets trading-bot alerts.",
            registry=registry,
        )
        self.maintenance_window_end = Gauge(
            f"{PREFIX}_maintenance_window_end_timestamp_seconds",
            "When the latest-ending maintenance silence of the trading bots ends (0 when there is none).",
            registry=registry,
        )
        self.watchdog_last = Gauge(
            f"{PREFIX}_watchdog_last_received_timestamp_seconds",
            "When the Watchdog alert last arrived.",
            registry=registry,
        )
        self.deadman_triggered = Gauge(
            f"{PREFIX}_deadman_triggered", "1 while no Watchdog arrived within the window.", registry=registry
        )
        self.ledger_pruned_rows = Counter(
            f"{PREFIX}_ledger_pruned_rows",
            "Ledger rows deleted by retention (reconciler.retention_days), by table.",
            ["table"],
            registry=registry,
        )
        for table in PRUNED_TABLES:
            self.ledger_pruned_rows.labels(table)
        self.approval_decisions = Counter(
            f"{PREFIX}_approval_decisions",
            "Approvals that stopped waiting, by outcome (approved, rejected, expired).",
            ["outcome"],
            registry=registry,
        )
        for outcome in APPROVAL_OUTCOMES:
            self.approval_decisions.labels(outcome)
        self.approval_decision_seconds = Histogram(
            f"{PREFIX}_approval_decision_seconds",
            "Time from an approval's request to a person's decision (approved or rejected).",
            buckets=DECISION_BUCKETS,
            registry=registry,
        )
        self.ledger_prune_failures = Counter(
            f"{PREFIX}_ledger_prune_failures",
            "Retention runs that failed (the ledger grows until one succeeds).",
            registry=registry,
        )
