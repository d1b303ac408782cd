"""End to end for a freqtrade bot: a real freqtrade trading live on the paper gateway, the `trading-ops freqtrade`
sidecar process, real Prometheus and Alertmanager, and the reconciler running the packaged playbook's freqtrade rules.

Prometheus loads the repository's freqtrade and availability rules with `for:` shortened as `trading-ops up --profile
fast` does (the same code); Alertmanager runs the repository's configuration as the fast profile adapts it (routing
tree and inhibitions unchanged, people's receivers quiet, group_wait 0 s to the reconciler). The playbook is the
packaged default one's broker-reconnect, freqtrade-restart and freqtrade-loop-restart rules as they are (their wait_for
included: it is what keeps the few seconds a restarted freqtrade does not answer from starting a second restart), their
systemd steps swapped for an exec step that restarts the test's freqtrade with a fixed argv (this machine has no
freqtrade.service), with no cooldown (faults follow each other in a module), a 1 s verification interval and retries
after 1 s.

Faults, each ending in an episode `recovered` (verified in Prometheus):
- the gateway drops every connection until a client starts a new session: freqtrade's API and loop run on while its
  exchange calls fail; the sidecar reads the failures from its log (tradingbot_broker_connected 0),
  TradingBotBrokerDisconnected fires and broker-reconnect asks for `reconnect`: the sidecar starts a session with the
  venue (which ends the drop), then asks freqtrade to reload_config;
- the trading loop stalls with the API alive (the committed strategy blocks): TradingBotHeartbeatStale,
  freqtrade-loop-restart;
- freqtrade hung (SIGSTOP: its API stops too) and killed: TradingBotFreqtradeDown, freqtrade-restart; after the kill,
  a reconciliation finds what the gateway holds.

Needs prometheus and prometheus-alertmanager (Debian packages) and the `freqtrade` extra.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from datetime import datetime

import pytest
from freqtrade_helpers import until
from freqtrade_stack import DEADLINE_SECONDS, Stack, drop_connection, freqtrade_stack, heal, settle

pytestmark = [pytest.mark.slow, pytest.mark.prometheus, pytest.mark.alertmanager]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with freqtrade_stack(tmp_path_factory.mktemp("freqtrade-e2e")) as built:
        yield built


def connected(stack: Stack, by: str = "") -> set[str]:
    """The values of tradingbot_broker_connected for the sidecar's instance (or their `by` labels)."""
    result = stack.query(f'tradingbot_broker_connected{{instance="{stack.instance}"}}')
    return {r["metric"][by] if by else r["value"][1] for r in result}


def test_a_freqtrade_that_lost_its_venue_is_reconnected_and_verified(stack: Stack) -> None:
    settle(stack)
    started = stack.freqtrade.api("GET", "/health")["bot_startup_ts"]
    try:
        healed = heal(stack, "TradingBotBrokerDisconnected", drop_connection(stack))
    finally:
        stack.gateway.chaos("clear")  # the faults after this one start from a venue that answers
    episode = healed.episode
    assert episode["labels"]["instance"] == stack.instance and episode["labels"]["channel"] == "market_data"
    # The reconnect rebuilt freqtrade's exchange connection (reload_config: a new start of the same process) and it
    # trades on with its trades, connected on every channel as Prometheus sees it.
    assert stack.freqtrade.api("GET", "/health")["bot_startup_ts"] != started and stack.pid() == healed.pid
    assert len(stack.freqtrade.open_trades()) == 2
    until("Prometheus sees every channel connected", lambda: connected(stack) == {"1"}, DEADLINE_SECONDS)
    assert len(connected(stack, "channel")) == 3
    assert (stack.scalar(f'sum(tradingbot_venue_errors_total{{instance="{stack.instance}"}})') or 0) > 0


def test_a_stalled_trading_loop_with_its_api_alive_is_restarted_and_verified(stack: Stack) -> None:
    healed = heal(stack, "TradingBotHeartbeatStale", lambda: stack.freqtrade.stall(stack.pid()))
    episode, old, stalled = healed.episode, healed.pid, healed.injected_at
    # freqtrade-loop-restart (not the paper bot's bot-restart) ran; freqtrade had answered all along until that
    # restart (TradingBotFreqtradeDown, if it fired at all, fired for the seconds the new process took to start).
    assert episode["labels"]["job"] == "freqtrade"
    assert stack.pid() != old
    restarted_at = _time(episode["attempts"][0]["started_at"])
    assert [
        e for e in stack.episodes("TradingBotFreqtradeDown") if restarted_at > _time(e["starts_at"]) > stalled
    ] == []
    until(
        "a fresh heartbeat in Prometheus",
        lambda: (
            (stack.scalar(f'time() - tradingbot_heartbeat_timestamp_seconds{{instance="{stack.instance}"}}') or 99) < 15
        ),
        DEADLINE_SECONDS,
    )


def _time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_a_hung_freqtrade_is_restarted_and_verified(stack: Stack) -> None:
    healed = heal(stack, "TradingBotFreqtradeDown", lambda: os.kill(stack.pid(), signal.SIGSTOP))
    episode = healed.episode
    # Verified means Prometheus saw it answer again; it trades on with its trades from its database.
    assert stack.pid() != healed.pid
    assert stack.scalar(f'tradingbot_freqtrade_up{{instance="{stack.instance}"}}') == 1
    assert len(stack.freqtrade.open_trades()) == 2
    assert episode["labels"]["instance"] == stack.instance


def test_a_killed_freqtrade_is_restarted_and_reconciled_with_the_gateway(stack: Stack) -> None:
    healed = heal(stack, "TradingBotFreqtradeDown", lambda: os.kill(stack.pid(), signal.SIGKILL))
    assert stack.pid() != healed.pid
    # The sidecar reconciles on its own when freqtrade is back, and finds what the gateway holds.
    until(
        "a clean reconciliation after the restart",
        lambda: (
            (
                stack.sidecar_value(
                    "tradingbot_reconciliation_runs_total", venue="kraken", trigger="reconnect", result="clean"
                )
                or 0
            )
            >= 1
        ),
        DEADLINE_SECONDS,
    )
    held = stack.gateway.call("fetch_balance")["total"]
    trades = {t["pair"]: t["amount"] for t in stack.freqtrade.open_trades()}
    assert float(held["BTC"]) == pytest.approx(trades["BTC/USD"])
    assert float(held["ETH"]) == pytest.approx(trades["ETH/USD"])
    assert stack.sidecar_value("tradingbot_position_mismatch_quantity", venue="kraken", symbol="BTC-USD") == 0
