"""The risk-limit families as the runtime (trading_ops.bot.risk) exports them, for the integrations' tests to compare
against: what a RiskEngine on a registry of its own puts on /metrics, read back through the exposition parser."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from trading_ops.bot.metrics import BotMetrics
from trading_ops.bot.risk import RiskEngine, RiskLimits
from trading_ops.bot.state import StateMachine

# The families of the runtime's risk limits and of what they measure.
LIMIT_FAMILIES = (
    "tradingbot_risk_limit",
    "tradingbot_risk_limit_breaches",
    "tradingbot_open_positions",
    "tradingbot_equity_peak",
    "tradingbot_drawdown",
)

# A family as an exposition says it: its type, its help, the label names of its samples.
Shape = tuple[str, str, frozenset[str]]


def shapes(text: str) -> dict[str, Shape]:
    """Each family of an exposition by name: type, help, label names (union over its samples)."""
    found = {}
    for family in text_string_to_metric_families(text):
        labels = frozenset(name for sample in family.samples for name in sample.labels)
        found[family.name] = (family.type, family.documentation, labels)
    return found


def runtime_limit_shapes() -> dict[str, Shape]:
    """The runtime's risk-limit families (LIMIT_FAMILIES), every limit set, as a runtime bot exports them."""
    registry = CollectorRegistry()
    metrics = BotMetrics(venue="v", strategy="s", registry=registry)
    RiskEngine(RiskLimits(max_open_positions=2, max_drawdown=10.0), StateMachine(registry), metrics)
    every = shapes(generate_latest(registry).decode())
    return {name: every[name] for name in LIMIT_FAMILIES}
