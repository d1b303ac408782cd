"""The runtime's risk-limit families for the limits a freqtrade has: `max_open_trades` as the open_positions limit.

The runtime (trading_ops.bot.risk) exports `tradingbot_risk_limit{venue,strategy,limit}` (0: no limit) and what the
limits measure. freqtrade has one of its limits: `max_open_trades`, one trade per pair, so the pairs it holds are the
symbols the open_positions limit counts. Its drawdown is not the runtime's: the MaxDrawdown protection lives in the
strategy (freqtrade refuses it in the configuration) and its REST API reports neither its settings nor its window's
drawdown; its `max_allowed_drawdown` is a ratio, where the runtime's drawdown limit is an amount of the quote asset.
So no drawdown family is exported (docs/freqtrade.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from trading_ops.bot.metrics import PREFIX
from trading_ops.bot.risk import OPEN_POSITIONS, OPEN_POSITIONS_HELP, RISK_LIMIT_HELP
from trading_ops.integrations.freqtrade.poller import Snapshot

# What the runtime's risk_limit family says for "no limit" (freqtrade's max_open_trades -1).
NO_LIMIT = 0.0


def open_positions_limit(config: dict[str, Any]) -> float | None:
    """freqtrade's `max_open_trades` (as /show_config gives it) as the runtime's open_positions limit, or None where
    the runtime's family cannot say it: -1 (and infinity) is unlimited, the family's 0; 0 means freqtrade opens no
    trade at all, which the family's 0 ("no limit") would say backwards, so that one is left out."""
    value = config.get("max_open_trades")
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    if value in (-1, math.inf):
        return NO_LIMIT
    return float(value) if math.isfinite(value) and value >= 1 else None


def held_pairs(trades: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> int:
    """Pairs with a non-zero position: the open trades whose entry has filled at least in part (a trade whose entry
    order still rests has amount 0 in freqtrade)."""
    return len({t.get("pair") for t in trades if _amount(t.get("amount"))})


def limit_families(snap: Snapshot) -> Iterator[Metric]:
    """`tradingbot_open_positions{venue,strategy}` and, where max_open_trades says it,
    `tradingbot_risk_limit{venue,strategy,limit="open_positions"}`: the runtime's names, help, labels and types."""
    venue, strategy = snap.venue, snap.strategy
    held = GaugeMetricFamily(f"{PREFIX}_open_positions", OPEN_POSITIONS_HELP, labels=["venue", "strategy"])
    held.add_metric([venue, strategy], held_pairs(snap.trades))
    yield held
    cap = open_positions_limit(snap.config)
    if cap is not None:
        limit = GaugeMetricFamily(f"{PREFIX}_risk_limit", RISK_LIMIT_HELP, labels=["venue", "strategy", "limit"])
        limit.add_metric([venue, strategy, OPEN_POSITIONS], cap)
        yield limit


def _amount(value: Any) -> float:
    try:
        return float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        return 0.0
