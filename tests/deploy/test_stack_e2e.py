"""End to end through the local stack, for each bot kind `up` has built in: the paper bot (its own fault commands),
and the example ccxt bot (examples/ccxt_bot.py) trading through ccxt's real kraken client on the paper gateway (the
venue's faults, injected with `gateway-chaos`). A fault injected with the command `up`'s banner prints fires its alert
in Prometheus, Alertmanager routes it to the reconciler's webhook, the reconciler runs the same rules of the packaged
default playbook against either bot, verifies the recovery in Prometheus and records the episode `recovered`.

Needs the real servers prometheus and prometheus-alertmanager (Debian packages `prometheus`,
`prometheus-alertmanager`); `trading-ops up` starts them with the bot and the reconciler (and the gateway), once per
bot kind for this module, on free loopback ports, fast profile.
"""

from __future__ import annotations

import re
import signal
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dashboard_queries import BUILTIN_VALUES, DATA_DASHBOARDS, NOT_THIS_KIND, panel_queries, substitute
from polling import until
from system_binaries import require_binary
from up_process import UpProcess, alive
from up_stack import Stack, fired, get_json, heal_by_the_bots_own_stream, new_episodes

pytestmark = [pytest.mark.slow, pytest.mark.prometheus, pytest.mark.alertmanager]

# How long a new stack's rates, recording rules and once-a-minute SLO records may take to show on every panel.
PANELS_DEADLINE_SECONDS = 150.0
# What a panel may lack on a stack of this kind, with the reason: nothing of the kind's bot has it at all (neither
# kind is a freqtrade: freqtrade's row is test_dashboards' to check).
PANELS_NOT_THIS_KIND: dict[str, dict[str, str]] = {
    "paper": NOT_THIS_KIND["paper bot"],
    "ccxt-gateway": NOT_THIS_KIND["paper bot"],
}
# The children of each bot kind's stack, as their logs are named.
CHILDREN = {
    "paper": {"paper-bot", "reconciler", "prometheus", "alertmanager"},
    "ccxt-gateway": {"ccxt-bot", "paper-gateway", "reconciler", "prometheus", "alertmanager"},
}


@pytest.fixture(scope="module", params=sorted(CHILDREN, reverse=True))
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack of one bot kind (pytest runs every test on one before starting the next)."""
    require_binary("prometheus")
    kind = request.param
    # No random rejects: the paper venue's `venue_busy` reaches the ccxt bot as Kraken's EService:Busy, which ccxt
    # raises as ExchangeNotAvailable and the broker takes, rightly, for the venue gone a moment (its orders channel
    # down, up again at the next answer, a reconnect counted); this module counts reconnects.
    up = UpProcess(tmp_path_factory.mktemp(f"stack-e2e-{kind}"), "--bot", kind, paper={"reject_probability": 0})
    try:
        up.wait_up()
        stack = Stack(up, kind)
        # The pipeline works end to end once the always-firing Watchdog has reached Alertmanager: before that,
        # Prometheus may not have found Alertmanager yet and would hold an alert back for its resend delay.
        until("Watchdog in Alertmanager", lambda: stack.alertmanager_alerts("Watchdog"))
        yield stack
        pids = up.pids()
        assert up.stop(signal.SIGINT) == 0, up.output
        assert not any(alive(pid) for pid in pids.values())
    finally:
        up.close()


def episode_summary(episodes: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What an assertion about episodes shows when it fails: each one's id, state, detail, labels and attempts."""
    return [
        (
            e["id"],
            e["state"],
            e["detail"][:200],
            e["starts_at"],
            e["closed_at"],
            {k: v for k, v in e["labels"].items() if k in ("alertname", "channel", "venue")},
            [
                (a["outcome"], a["started_at"], [(s["description"], s["outcome"]) for s in a["steps"]])
                for a in e["attempts"]
            ],
        )
        for e in episodes
    ]


def heal_steps(episodes: list[dict[str, Any]], command: str) -> list[dict[str, Any]]:
    return [
        step
        for episode in episodes
        for attempt in episode["attempts"]
        for step in attempt["steps"]
        if step["action"] == "bot" and re.search(rf"\b{command}\b", step["description"])
    ]


def assert_resolved(stack: Stack, alertname: str) -> None:
    until(f"{alertname} resolved in Prometheus", lambda: not stack.prometheus_alerts(alertname))
    until(f"{alertname} resolved in Alertmanager", lambda: not stack.alertmanager_alerts(alertname))


def test_every_panel_of_the_bot_boards_shows_data_on_a_healthy_stack(stack: Stack) -> None:
    """The boards as a user opens them on the stack `up` runs (first, before any fault), this kind's bot picked: no
    panel is empty; a rare event's counter shows 0."""
    values = {"job": "tradingbot", "instance": stack.instance, "venue": ".+", "symbol": ".+", **BUILTIN_VALUES}
    queries = {
        where: substitute(expr, values)
        for where, expr in panel_queries()
        if where.split("/", 1)[0] in DATA_DASHBOARDS and "/annotation " not in where
    }
    excused = PANELS_NOT_THIS_KIND[stack.kind]
    assert set(excused) <= set(queries), "an exception names a panel that no longer exists"

    def empty() -> dict[str, str]:
        now = time.time()
        found = {}
        for where, expr in queries.items():
            params = urllib.parse.urlencode({"query": expr, "start": now - 120, "end": now, "step": 1})
            body = get_json(stack.up.url("prometheus", f"/api/v1/query_range?{params}"))
            assert body["status"] == "success", f"{where}: {body}"
            if where not in excused and not any(series["values"] for series in body["data"]["result"]):
                found[where] = expr
        return found

    deadline = time.monotonic() + PANELS_DEADLINE_SECONDS
    while (missing := empty()) and time.monotonic() < deadline:
        time.sleep(2)
    assert missing == {}, f"panels without data on a healthy {stack.kind} stack"


def test_rate_limit_headroom_at_rest_is_well_clear_of_the_alert_and_nothing_is_refused(stack: Stack) -> None:
    """The headroom panel's value is the venue limit's: the paper venue's order bucket, or (ccxt bot) its estimate of
    Kraken's call counter, which the gateway enforces (Pro tier in the stack). Over a minute of trading (four of its
    reconciliations included: the fast profile reconciles every 15 s) it stays above 0.5 most of the time, the
    TradingBotRateLimitHeadroomLow alert never fires, and the venue refuses none of the bot's calls."""
    until("a minute of headroom", lambda: stack.query("tradingbot_rate_limit_headroom_ratio offset 1m"), 200)
    (median,) = stack.query("quantile_over_time(0.5, tradingbot_rate_limit_headroom_ratio[1m])")
    assert float(median["value"][1]) > 0.5
    assert not fired(stack, "TradingBotRateLimitHeadroomLow")
    refused = stack.bot_metric("tradingbot_venue_errors_total")
    assert not any('error_class="rate_limit"' in labels and value > 0 for labels, value in refused.items()), refused


def test_drop_connection_is_healed_by_one_verified_reconnect(stack: Stack) -> None:
    known = {e["id"] for e in stack.episodes()}
    reconnects_before = stack.bot_metric("tradingbot_broker_reconnects_total")
    injected = time.monotonic()
    assert stack.inject("drop_connection")["fault"] == "drop_connection"
    # The paper bot's stream drops at once; the ccxt bot finds out at its next poll of each channel.
    until("both channels down", lambda: set(stack.bot_metric("tradingbot_broker_connected").values()) == {0.0})

    recovered = until(
        "an episode of TradingBotBrokerDisconnected recovered",
        # The one that acted (another channel's, healed by its reconnect before acting, is recovered with no attempt).
        lambda: [
            e
            for e in new_episodes(stack, known, "TradingBotBrokerDisconnected")
            if e["state"] == "recovered" and e["attempts"]
        ],
    )[0]
    assert fired(stack, "TradingBotBrokerDisconnected", instance=stack.instance)
    # The webhook carried Prometheus's labels; the reconciler found the bot through its instance label.
    assert recovered["labels"]["instance"] == stack.instance and recovered["target"] == stack.instance
    assert recovered["rule"] == "broker-reconnect"
    assert "tradingbot_broker_connected == 0" in recovered["detail"]  # verified with the alert's own expression
    (step,) = heal_steps([recovered], "reconnect")
    assert step["outcome"] == "success"
    assert_resolved(stack, "TradingBotBrokerDisconnected")
    # One alert per channel, one episode each, but the bot was told to reconnect exactly once. A channel's alert may
    # never fire: the ccxt bot finds a channel down at its next poll of it, and a scrape (the exposition is rendered
    # off the event loop) may catch the paper bot between its two channels' drops; the reconnect the first channel's
    # alert brings then heals the other before its alert has lasted its `for:`. The paper bot's channels stay down
    # until that reconnect, so Prometheus saw both down.
    if stack.kind == "paper":
        since = f"{int(time.monotonic() - injected) + 1}s"
        down = stack.query(f'min_over_time(tradingbot_broker_connected{{instance="{stack.instance}"}}[{since}]) == 0')
        assert {series["metric"]["channel"] for series in down} == {"orders", "market_data"}, down
    episodes = new_episodes(stack, known, "TradingBotBrokerDisconnected")
    channels = {e["labels"]["channel"] for e in episodes}
    assert channels and channels <= {"orders", "market_data"}, channels
    try:
        until(
            "every episode closed",
            lambda: all(e["closed_at"] for e in new_episodes(stack, known, "TradingBotBrokerDisconnected")),
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {episode_summary(new_episodes(stack, known, 'TradingBotBrokerDisconnected'))}")
    assert len(heal_steps(new_episodes(stack, known, "TradingBotBrokerDisconnected"), "reconnect")) == 1
    connected = stack.bot_metric("tradingbot_broker_connected")
    assert connected and set(connected.values()) == {1.0}
    reconnects = stack.bot_metric("tradingbot_broker_reconnects_total")
    assert {k: v - reconnects_before.get(k, 0.0) for k, v in reconnects.items()} == dict.fromkeys(reconnects, 1.0)


def test_stale_market_data_for_one_symbol_is_healed_by_the_bots_own_stream(stack: Stack) -> None:
    """Both bots stream their market data by default (the paper bot its tickers, the ccxt bot its books): the bot's
    own resubscribe heals a silent pair before any alert. (The reconciler's market-data-resubscribe is for a bot
    that does not heal itself: tests/deploy/test_nautilus_e2e.py runs it on a real stack.)"""
    known = {e["id"] for e in stack.episodes()}
    heal_by_the_bots_own_stream(stack, known, ("book", "ticker") if stack.kind == "ccxt-gateway" else ("ticker",))


def test_the_state_dir_holds_what_up_generated(stack: Stack) -> None:
    state = Path(stack.up.state_dir)
    for path in ("trading-ops.yaml", "prometheus/prometheus.yml", "alertmanager/alertmanager.yml"):
        assert (state / path).read_text().startswith("# Generated by `trading-ops up`")
    assert {p.name for p in (state / "logs").iterdir()} == {f"{c}.log" for c in CHILDREN[stack.kind]}
    if stack.kind == "ccxt-gateway":  # the gateway's credentials are files under var/secrets, never in the YAML
        generated = (state / "trading-ops.yaml").read_text()
        for name in ("gateway-api-key", "gateway-api-secret", "gateway-control-token"):
            secret = stack.up.root / "var" / "secrets" / name
            assert str(secret) in generated and secret.read_text().strip() not in generated
