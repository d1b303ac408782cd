"""End to end for a NautilusTrader node: a real `TradingNode` with the trading-ops controller (Nautilus's sandbox
execution client, quotes polled from the paper gateway), real Prometheus and Alertmanager, and the reconciler running
the packaged playbook's rules for these faults.

Prometheus loads the repository's recording, availability and trading rules with `for:` shortened as `trading-ops up
--profile fast` does; Alertmanager runs the repository's configuration as the fast profile adapts it. The playbook is
the packaged default one's broker-reconnect, market-data-resubscribe and loss-limit-flatten rules as they are, with no
cooldown (faults follow each other in a module) and a 1 s verification interval.

Faults, each ending in an episode `recovered` (verified in Prometheus):
- the gateway drops its clients' connections until one starts a new session (drop_connection): the node's data client
  loses its session, TradingBotBrokerDisconnected fires, broker-reconnect asks for `reconnect` (the node's clients
  disconnected and connected again: a new session, which ends the drop) and quotes flow;
- the gateway's feed of BTC-USD stops (stale_market_data: Ticker leaves the pair out until a client subscribes again):
  TradingBotMarketDataStale, `resubscribe` renews the node's quote subscriptions and quotes flow;
- the price gaps down 30 % under the node's long position: the controller's daily loss limit halts the node (the
  RiskEngine's HALTED), TradingBotDailyLossBreached fires, loss-limit-flatten cancels the working order and flattens
  (the node stays halted), and its on_recovery pages (TradingOpsBotFlattened posted to Alertmanager).

Needs prometheus and prometheus-alertmanager (Debian packages) and the `nautilus` extra.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e_stack import DEADLINE_SECONDS, Monitoring, ended_after, monitoring, packaged_playbook, recovered
from gateway_helpers import Gateway, start_gateway
from nautilus_helpers import INSTRUMENT_ID, Node, start_node
from nautilus_trader.model.enums import TradingState
from nautilus_trader.model.identifiers import InstrumentId
from polling import until
from ports import free_port
from secret_file import write_secret

pytestmark = [pytest.mark.slow, pytest.mark.prometheus, pytest.mark.alertmanager]

TOKEN = "nautilus-e2e-token"
RULE_FILES = ("recording.yml", "tradingbot-availability.yml", "tradingbot-trading.yml")
RULES = ("broker-reconnect", "market-data-resubscribe", "loss-limit-flatten")
# The loss limit (USD) and the position: a 30 % gap on 0.5 BTC (~5,000 USD) is far past it; the market's own drift
# over the test (a few USD) is far below.
DAILY_LOSS_LIMIT = 1000.0


@dataclass
class Stack(Monitoring):
    gateway: Gateway
    node: Node


@contextlib.contextmanager
def nautilus_stack(tmp: Path) -> Iterator[Stack]:
    gateway = start_gateway(tmp / "gateway")
    node: Node | None = None
    try:
        write_secret(tmp / "token", TOKEN)
        node = start_node(gateway.url, tmp / "token", port=free_port(), daily_loss_limit=DAILY_LOSS_LIMIT)
        running = node
        until(
            "the node holds its position and serves",
            lambda: (
                running.controller.port is not None
                and not running.on_loop(lambda: running.node.portfolio.is_flat(InstrumentId.from_str(INSTRUMENT_ID)))
            ),
            30,
        )
        with monitoring(
            tmp, packaged_playbook(RULES), RULE_FILES, "nautilus", node.instance, node.url, tmp / "token"
        ) as watching:
            stack = Stack(
                **vars(watching),
                gateway=gateway,
                node=node,
            )
            until("Prometheus scrapes the node", lambda: stack.scalar(f'up{{instance="{node.instance}"}}') == 1, 60)
            yield stack
    finally:
        if node is not None:
            node.stop()
        gateway.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with nautilus_stack(tmp_path_factory.mktemp("nautilus-e2e")) as built:
        yield built


def heal(stack: Stack, alertname: str, fault: Callable[[], None]) -> dict[str, Any]:
    """Inject `fault`; wait until every new episode of `alertname` has ended; return the one that recovered."""
    known = {e["id"] for e in stack.episodes(alertname)}
    fault()
    episodes = until(f"the {alertname} episodes end", lambda: ended_after(stack, alertname, known), DEADLINE_SECONDS)
    episode = recovered(episodes)
    assert episode["labels"]["instance"] == stack.node.instance
    return episode


def test_a_lost_session_is_reconnected_and_verified(stack: Stack) -> None:
    instance = stack.node.instance
    episode = heal(stack, "TradingBotBrokerDisconnected", lambda: stack.gateway.chaos("drop_connection"))
    assert episode["labels"]["channel"] == "market_data"
    until(
        "Prometheus sees every channel connected, the reconnect counted",
        lambda: (
            stack.scalar(f'min(tradingbot_broker_connected{{instance="{instance}"}})') == 1
            and (
                stack.scalar(f'tradingbot_broker_reconnects_total{{instance="{instance}",channel="market_data"}}') or 0
            )
            >= 1
        ),
        30,
    )
    quotes = stack.node.data_client.quotes_published
    until("quotes reach the node", lambda: stack.node.data_client.quotes_published > quotes, 10)


def test_a_feed_that_stopped_is_resubscribed_and_verified(stack: Stack) -> None:
    episode = heal(
        stack, "TradingBotMarketDataStale", lambda: stack.gateway.chaos("stale_market_data", symbol="BTC-USD")
    )
    assert [a["action"] for a in episode["attempts"]] == ["bot"]  # resubscribe
    # The node's subscription was renewed: quotes reach it again, and Prometheus sees them fresh.
    quotes = stack.node.data_client.quotes_published
    until("quotes reach the node", lambda: stack.node.data_client.quotes_published > quotes, 10)
    instance = stack.node.instance
    until(
        "Prometheus sees the quotes fresh",
        lambda: (
            (
                stack.scalar(
                    f'instance_venue_symbol:tradingbot_market_data_last_update:age_seconds{{instance="{instance}"}}'
                )
                or 99
            )
            < 10
        ),
        30,
    )


def test_a_loss_limit_halts_the_node_and_the_playbook_flattens_it_and_pages(stack: Stack) -> None:
    node = stack.node
    iid = InstrumentId.from_str(INSTRUMENT_ID)
    assert node.on_loop(lambda: len(node.node.cache.orders_open())) == 1  # the strategy's resting limit order

    def gap() -> None:
        stack.gateway.chaos("price_gap", symbol="BTC-USD", change=-0.3)

    episode = heal(stack, "TradingBotDailyLossBreached", gap)
    # The controller halted the node itself (its in-process limit): the RiskEngine is HALTED, and stays so.
    assert node.on_loop(lambda: node.node.kernel.risk_engine.trading_state) == TradingState.HALTED
    halts = stack.scalar(
        f'tradingbot_control_commands_total{{instance="{node.instance}",command="halt",source="risk"}}'
    )
    assert halts is not None and halts >= 1
    # The playbook's steps ran on the halted node: every order canceled, the position closed.
    # (the attempt's steps: cancel_all, flatten, then the on_recovery escalation)
    assert episode["attempts"][-1]["action"] == "bot, bot, escalate"
    assert node.on_loop(node.node.cache.orders_open) == []
    assert node.on_loop(lambda: node.node.portfolio.is_flat(iid))
    # And a person is paged: the rule's on_recovery escalation is in Alertmanager.
    until("TradingOpsBotFlattened reaches Alertmanager", lambda: stack.paged("TradingOpsBotFlattened"), 30)
