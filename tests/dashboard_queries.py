"""The queries of the committed Grafana dashboards (every panel target, annotation and variable query), Grafana's
substitution of their variables, and the panels a bot kind has no data for: what the dashboard tests and the stack's
end-to-end test run against a real Prometheus."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from system_binaries import REPO_ROOT

GRAFANA_DIR = REPO_ROOT / "grafana"
DASHBOARD_FILES = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
# What Grafana puts in for its built-in variables with a scrape interval of a second, the test Prometheus's
# (`$__rate_interval` is at least four scrape intervals) over the last 5 minutes, besides the values a user picks for
# the dashboard variables.
BUILTIN_VALUES = {
    "__rate_interval": "4s",
    "__interval": "1s",
    "__interval_ms": "1000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}
# The dashboards whose bot panels must show data (or a deliberate 0) on a healthy stack: every query of theirs must
# return something with both bots picked, and with the paper bot alone except for freqtrade's own row (the paper bot
# has no freqtrade). On the SLO board that includes the burn rates over a day and three days and the budget left over
# 30 days, recorded once a minute from what history there is.
DATA_DASHBOARDS = ("trading-overview", "bot-health", "slo")
FREQTRADE_ONLY = "freqtrade's own numbers, from its sidecar: a bot on the runtime (paper, ccxt) has no freqtrade"
# The venue stream's row: only a streaming ccxt bot (the default on Kraken) exports tradingbot_stream_* (the stack's
# paper bots do not; the user stream's subscription and silence, and the book gaps, only one on Binance);
# tests/venues/test_ccxt_bot.py scrapes them from a streaming bot.
STREAM_ONLY = "a venue stream's health: only a streaming ccxt bot has one"
STREAM_PANELS = dict.fromkeys(
    [
        "bot-health/Stream connected, subscribed, silent and on REST fallback/A",
        "bot-health/Stream connected, subscribed, silent and on REST fallback/B",
        "bot-health/Stream connected, subscribed, silent and on REST fallback/C",
        "bot-health/Stream connected, subscribed, silent and on REST fallback/D",
        "bot-health/Stream connected, subscribed, silent and on REST fallback/E",
        "bot-health/Channel age against its silence timeout/A",
        "bot-health/Channel age against its silence timeout/B",
        "bot-health/Book in sync with its checksum/A",
        "bot-health/Stream reconnects per 5 minutes/A",
        "bot-health/Book checksums and gaps, resyncs, sequence gaps, failed and ended subscriptions per 5 minutes/A",
        "bot-health/Book checksums and gaps, resyncs, sequence gaps, failed and ended subscriptions per 5 minutes/B",
        "bot-health/Book checksums and gaps, resyncs, sequence gaps, failed and ended subscriptions per 5 minutes/C",
        "bot-health/Book checksums and gaps, resyncs, sequence gaps, failed and ended subscriptions per 5 minutes/D",
        "bot-health/Book checksums and gaps, resyncs, sequence gaps, failed and ended subscriptions per 5 minutes/E",
        "bot-health/Book checksums and gaps, resyncs, sequence gaps, failed and ended subscriptions per 5 minutes/F",
        "bot-health/Fills first seen, by source, per 5 minutes/A",
    ],
    STREAM_ONLY,
)
NOT_THIS_KIND: dict[str, dict[str, str]] = {
    "both bots": STREAM_PANELS,
    "paper bot": {
        **STREAM_PANELS,
        "bot-health/Daily profit (freqtrade's /daily)/A": FREQTRADE_ONLY,
        "bot-health/Open trades against max_open_trades/A": FREQTRADE_ONLY,
        "bot-health/Open trades against max_open_trades/B": FREQTRADE_ONLY,
        "bot-health/Pair locks/A": FREQTRADE_ONLY,
        "bot-health/freqtrade API answer time (p99)/A": FREQTRADE_ONLY,
        "bot-health/freqtrade answering its sidecar/A": FREQTRADE_ONLY,
    },
}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def substitute(expr: str, values: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name.isdigit():  # label_replace's "$1": Grafana has no such variable and leaves it alone
            return match.group(0)
        assert name in values, f"unknown variable ${name} in {expr!r}"
        return values[name]

    return VARIABLE.sub(value, expr)


def panel_queries() -> list[tuple[str, str]]:
    """(where, expression) for every panel target and annotation query of every dashboard."""
    queries = []
    for path in DASHBOARD_FILES:
        board = load(path)
        for panel in board["panels"]:
            for target in panel.get("targets", []):
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
