"""The NautilusTrader controller in a real `TradingNode`: Nautilus's sandbox execution client (its simulated exchange),
quotes from the paper gateway's Kraken API (its own process), a small strategy. The exported families match what the
node's cache and portfolio say, and each control command changes the node's state as promised.

Needs the `nautilus` extra (NautilusTrader); the paper gateway is this repository's.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from decision_helpers import TRUSTED, clear_halt, forged, signed
from gateway_helpers import Gateway, start_gateway
from nautilus_helpers import INSTRUMENT_ID, SYMBOL, VENUE, Node, start_node
from nautilus_trader.model.enums import OrderStatus, TradingState
from nautilus_trader.model.identifiers import InstrumentId, Venue
from polling import until
from ports import free_port
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from runtime_families import runtime_limit_shapes, shapes
from secret_file import write_secret

from trading_ops.decisions import CLEAR_HALT

TOKEN = "nautilus-control-token"
# The `strategy` label of the node's families: its trader id (the controller's default).
STRATEGY_LABEL = "NAUTILUS-001"
# The name the reconciler's bots[] entry gives the node: what a signed decision names (the controller's `bot`).
BOT = "nautilus-1"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("nautilus-gateway"))
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def node(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("nautilus-node")
    write_secret(tmp / "token", TOKEN)
    # The tests' reconciler key is trusted: a loss-limit halt clears on a decision it signed for bot BOT.
    started = start_node(
        gateway.url,
        tmp / "token",
        port=free_port(),
        decision_keys=[TRUSTED],
        data_dir=str(tmp / "controller"),
        bot=BOT,
    )
    try:
        # The strategy's two orders are placed (a market buy that fills, a limit buy that rests) and the controller
        # serves.
        until(
            "the node trades and the controller serves",
            lambda: (
                started.node.kernel._controller is not None
                and started.controller.port is not None
                and len(started.on_loop(started.node.cache.orders_open)) == 1
                and not started.on_loop(lambda: started.node.portfolio.is_flat(InstrumentId.from_str(INSTRUMENT_ID)))
            ),
            30,
        )
        yield started
    finally:
        started.stop()


def scrape(node: Node) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"{node.url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of `name` over every series whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


def control(node: Node, command: str, token: str | None = TOKEN, **args: Any) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        f"{node.url}/control/{command}", data=json.dumps(args).encode(), method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=40) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def trading_state(node: Node) -> TradingState:
    return node.on_loop(lambda: node.node.kernel.risk_engine.trading_state)


def running(node: Node) -> bool:
    return bool(node.on_loop(lambda: node.strategy.is_running))


def exported_state(node: Node) -> str:
    samples = scrape(node)
    (state,) = [dict(ls)["state"] for (n, ls), v in samples.items() if n == "tradingbot_state" and v == 1]
    return state


def test_the_exported_families_match_the_nodes_cache_and_portfolio(node: Node) -> None:
    iid = InstrumentId.from_str(INSTRUMENT_ID)

    def facts() -> dict[str, Any]:
        """On the node's thread, in one go: a controller snapshot, then what Nautilus itself says."""
        node.controller._tick()
        kernel = node.node.kernel
        cache, portfolio = kernel.cache, kernel.portfolio
        (account,) = cache.accounts()
        fills = [e for o in cache.orders() for e in o.events if type(e).__name__ == "OrderFilled"]
        return {
            "position": float(portfolio.net_position(iid)),
            "balances": {c.code: float(b.total.as_double()) for c, b in account.balances().items()},
            "realized": sum(
                float(m.as_double()) for c, m in portfolio.realized_pnls(Venue(VENUE)).items() if c.code == "USD"
            ),
            "unrealized": sum(
                float(m.as_double()) for c, m in portfolio.unrealized_pnls(Venue(VENUE)).items() if c.code == "USD"
            ),
            "orders": len(cache.orders()),
            "open_orders": len(cache.orders_open()),
            "fills": len(fills),
            "filled_quantity": sum(float(e.last_qty) for e in fills),
            "fees": sum(float(e.commission.as_double()) for e in fills),
            "quotes": node.data_client.quotes_published,
            "registry": {
                name: node.controller.registry.get_sample_value(name, labels)
                for name, labels in (
                    ("tradingbot_realized_pnl", {"venue": VENUE, "strategy": "NAUTILUS-001"}),
                    ("tradingbot_unrealized_pnl", {"venue": VENUE, "strategy": "NAUTILUS-001"}),
                    ("tradingbot_market_data_updates_total", {"venue": VENUE, "symbol": SYMBOL}),
                )
            },
        }

    seen = node.on_loop(facts)
    samples = scrape(node)
    # P&L and quotes move with the market: compared as one snapshot, on the node's thread.
    assert seen["registry"]["tradingbot_realized_pnl"] == pytest.approx(seen["realized"])
    assert seen["registry"]["tradingbot_unrealized_pnl"] == pytest.approx(seen["unrealized"])
    assert seen["registry"]["tradingbot_market_data_updates_total"] == seen["quotes"] > 0
    assert seen["realized"] == pytest.approx(-seen["fees"])  # one buy, nothing closed: only its fee is realized
    # What stands still between the snapshot and the scrape, through /metrics.
    assert value(samples, "tradingbot_position_quantity", venue=VENUE, symbol=SYMBOL) == seen["position"] == 0.5
    for asset, balance in seen["balances"].items():
        assert value(samples, "tradingbot_balance", venue=VENUE, asset=asset) == pytest.approx(balance)
    assert set(seen["balances"]) == {"USD", "BTC"}
    assert total(samples, "tradingbot_orders_submitted_total") == seen["orders"] == 2
    assert total(samples, "tradingbot_open_orders") == seen["open_orders"] == 1
    assert total(samples, "tradingbot_fills_total") == seen["fills"] == 1
    assert total(samples, "tradingbot_filled_quantity_total") == pytest.approx(seen["filled_quantity"])
    assert total(samples, "tradingbot_fees_total") == pytest.approx(seen["fees"])
    assert value(samples, "tradingbot_broker_connected", venue=VENUE, channel="market_data") == 1
    assert value(samples, "tradingbot_broker_connected", venue=VENUE, channel="orders") == 1
    assert value(samples, "tradingbot_state", state="active") == 1
    assert value(samples, "tradingbot_kill_switch_engaged") == 0
    # The node reconciled before its trader (and the controller) started.
    assert value(samples, "tradingbot_reconciliation_runs_total", venue=VENUE, trigger="startup", result="clean") == 1


def test_every_family_is_one_the_runtime_exports_with_its_labels(node: Node) -> None:
    """The controller's families are the library's (tests/golden/paper_bot_metrics.txt, a paper bot's whole /metrics):
    same names, same label names, so every rule, board and playbook reads a node as it reads a runtime bot. Its own
    are the node's info and its process's."""
    golden = (Path(__file__).resolve().parents[1] / "golden" / "paper_bot_metrics.txt").read_text()

    def labels(text: str) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                found.setdefault(sample.name, set()).update(sample.labels)
        return found

    library = labels(golden)
    with urllib.request.urlopen(f"{node.url}/metrics", timeout=5) as resp:
        exported = labels(resp.read().decode())
    # The `_created` samples: the paper bot owns its process and turns them off process-wide; the controller lives in
    # the node's process and leaves that switch to its owner.
    own = {n for n in exported if n.startswith(("process_", "tradingbot_nautilus_info")) or n.endswith("_created")}
    assert {n for n in exported if n not in own and n not in library} == set()
    assert {n: ls for n, ls in exported.items() if n not in own and ls != library[n]} == {}
    assert len(exported) - len(own) > 35  # orders, fills, positions, balances, P&L, connections, heartbeat, state, ...


def test_open_positions_is_the_runtimes_family_and_the_node_has_no_limit_families(node: Node) -> None:
    """What the runtime's open_positions limit counts, from the node's portfolio, as the runtime exports it (name,
    type, help, labels). Nautilus's RiskEngine has no open-positions or drawdown limit, nor the portfolio a drawdown:
    none of those families is made up."""
    iid = InstrumentId.from_str(INSTRUMENT_ID)
    with urllib.request.urlopen(f"{node.url}/metrics", timeout=5) as resp:
        exported = shapes(resp.read().decode())
    assert exported["tradingbot_open_positions"] == runtime_limit_shapes()["tradingbot_open_positions"]
    absent = {
        "tradingbot_risk_limit",
        "tradingbot_risk_limit_breaches",
        "tradingbot_drawdown",
        "tradingbot_equity_peak",
    }
    assert absent & set(exported) == set()
    # The node holds its one instrument (the strategy's filled buy): what its portfolio says, counted once.
    held = node.on_loop(
        lambda: sum(1 for p in node.node.cache.positions_open() if node.node.portfolio.net_position(p.instrument_id))
    )
    assert held == 1 and node.on_loop(lambda: not node.node.portfolio.is_flat(iid))
    assert value(scrape(node), "tradingbot_open_positions", venue=VENUE, strategy=STRATEGY_LABEL) == held


def test_the_heartbeat_follows_the_nodes_clock_and_stops_with_its_loop(node: Node) -> None:
    samples = scrape(node)
    node_now = node.on_loop(node.node.kernel.clock.timestamp)
    heartbeat = value(samples, "tradingbot_heartbeat_timestamp_seconds")
    assert heartbeat is not None and node_now - 5 < heartbeat <= node_now
    iterations = value(samples, "tradingbot_loop_iterations_total") or 0
    until(
        "the heartbeat ticks", lambda: (value(scrape(node), "tradingbot_loop_iterations_total") or 0) > iterations, 10
    )
    until("/healthz passing", lambda: urllib.request.urlopen(f"{node.url}/healthz", timeout=5).status == 200, 30)
    with urllib.request.urlopen(f"{node.url}/readyz", timeout=5) as resp:
        ready = json.loads(resp.read())
    assert ready["ready"] and ready["checks"]["clients"]["connected"] == {"data:PAPER": True, "exec:PAPER": True}

    # The node's loop held up: the server (its own thread) still answers, and says the loop is stuck.
    release, holding = threading.Event(), threading.Event()
    blocked = threading.Thread(
        target=lambda: node.on_loop(lambda: holding.set() or release.wait(20), timeout=30), daemon=True
    )
    blocked.start()
    try:
        # The loop runs the blocking call (a fixed wait was a guess that a busy machine could miss: a tick after it).
        assert holding.wait(30), "the node's loop did not run the blocking call within 30s"
        before = value(scrape(node), "tradingbot_heartbeat_timestamp_seconds")
        time.sleep(1.5)
        assert value(scrape(node), "tradingbot_heartbeat_timestamp_seconds") == before
        with urllib.request.urlopen(f"{node.url}/healthz", timeout=5) as resp:
            assert json.loads(resp.read())["heartbeat_age_seconds"] >= 1.5
    finally:
        release.set()
        blocked.join(10)
    until(
        "the heartbeat ticks again", lambda: value(scrape(node), "tradingbot_heartbeat_timestamp_seconds") != before, 10
    )


def test_the_control_api_needs_the_token_and_knows_its_commands(node: Node) -> None:
    assert control(node, "pause", token=None)[0] == 401
    assert control(node, "pause", token="wrong")[0] == 401
    status, body = control(node, "nonsense")
    assert status == 404 and "pause" in body["commands"]
    assert running(node) and trading_state(node) == TradingState.ACTIVE  # nothing was carried out
    status, body = control(node, "status")
    assert status == 200
    assert body["state"] == "active" and body["nautilus_trading_state"] == "ACTIVE"
    assert body["strategies"] == {"Hold-000": "RUNNING"}
    assert body["open_positions"] == {INSTRUMENT_ID: 0.5}


def test_pause_stops_the_strategies_and_resume_starts_them(node: Node) -> None:
    status, body = control(node, "pause")
    assert status == 200 and body["state"] == "paused" and body["strategies_stopped"] == ["Hold-000"]
    assert not running(node) and trading_state(node) == TradingState.ACTIVE
    assert exported_state(node) == "paused"
    status, body = control(node, "resume")
    assert status == 200 and body["state"] == "active"
    assert running(node) and exported_state(node) == "active"


def test_reduce_only_is_the_risk_engines_reducing(node: Node) -> None:
    status, body = control(node, "reduce_only")
    assert status == 200 and body["state"] == "reduce_only"
    assert trading_state(node) == TradingState.REDUCING and exported_state(node) == "reduce_only"
    refused = total(scrape(node), "tradingbot_orders_refused_total", reason="reduce_only")
    node.on_loop(lambda: node.strategy.buy("0.1"))  # adds to the long position: denied
    until(
        "the buy is denied and counted",
        lambda: total(scrape(node), "tradingbot_orders_refused_total", reason="reduce_only") == refused + 1,
        10,
    )
    assert node.on_loop(lambda: float(node.node.portfolio.net_position(InstrumentId.from_str(INSTRUMENT_ID)))) == 0.5
    status, body = control(node, "resume")
    assert status == 200 and trading_state(node) == TradingState.ACTIVE and body["state"] == "active"


def test_halt_then_cancel_all_and_flatten_while_halted(node: Node) -> None:
    iid = InstrumentId.from_str(INSTRUMENT_ID)
    status, body = control(node, "halt")
    assert status == 200 and body["state"] == "halted"
    assert trading_state(node) == TradingState.HALTED
    samples = scrape(node)
    assert (
        value(samples, "tradingbot_kill_switch_engaged") == 1
        and value(samples, "tradingbot_state", state="halted") == 1
    )
    assert control(node, "resume")[0] == 409 and trading_state(node) == TradingState.HALTED

    # Halted means no new risk, never "cannot reduce risk": cancel_all and flatten are carried out, the halt stays.
    status, body = control(node, "cancel_all")
    assert status == 200 and len(body["orders_canceled"]) == 1
    until("the resting order is canceled", lambda: node.on_loop(node.node.cache.orders_open) == [], 10)
    status, body = control(node, "flatten")
    assert status == 200 and len(body["closing_orders"]) == 1 and body["state"] == "halted"
    until("the position is closed", lambda: node.on_loop(lambda: node.node.portfolio.is_flat(iid)), 10)
    (closing,) = body["closing_orders"]
    order = node.on_loop(lambda: node.node.cache.order(_coid(closing)))
    assert order.status == OrderStatus.FILLED and order.is_reduce_only
    assert trading_state(node) == TradingState.HALTED
    until(
        "the metrics say flat, nothing open, halted",
        lambda: (
            (s := scrape(node))
            and value(s, "tradingbot_position_quantity", venue=VENUE, symbol=SYMBOL) == 0
            and value(s, "tradingbot_open_positions", venue=VENUE, strategy=STRATEGY_LABEL) == 0
            and total(s, "tradingbot_open_orders") == 0
            and value(s, "tradingbot_state", state="halted") == 1
        ),
        10,
    )

    # Leaving the kill switch lands in paused: the RiskEngine ACTIVE, the strategies stopped.
    status, body = control(node, "clear_halt")
    assert status == 200 and body["state"] == "paused"
    assert trading_state(node) == TradingState.ACTIVE and not running(node)
    assert control(node, "resume")[0] == 200 and running(node)


def test_a_loss_limit_halt_clears_only_on_a_signed_decision_for_this_bot(node: Node) -> None:
    """A halt whose reason names a loss limit (what the controller's own daily loss limit sets) is a person's to lift,
    approved by another: clear_halt verifies the reconciler's signed decision as a bot on the runtime does. Without
    one, forged, for another bot or replayed: 403 in one line, the node stays halted. Any other halt clears in one
    step."""
    reason = "risk limit daily_loss: loss 1200.00 >= 1000.00"
    assert control(node, "halt", reason=reason)[0] == 200
    for case, body, words in (
        ("none", {}, 'clear_halt needs a signed decision ("decision"), issued by the reconciler'),
        ("forged", {"decision": forged(signed(CLEAR_HALT, BOT), approvers=["mallory"])}, "does not verify"),
        ("another bot", clear_halt("paper-1"), f"the decision is for bot 'paper-1', not '{BOT}'"),
    ):
        status, answer = control(node, "clear_halt", **body)
        assert status == 403 and "\n" not in answer["error"] and words in answer["error"], (case, answer)
        assert answer["error"].startswith(f"clear_halt of a loss-limit halt ({reason}): "), answer
        assert trading_state(node) == TradingState.HALTED, case
    decision = clear_halt(BOT)
    status, answer = control(node, "clear_halt", **decision)
    assert status == 200 and answer["state"] == "paused" and answer["decision"], answer
    assert trading_state(node) == TradingState.ACTIVE
    assert control(node, "halt", reason="risk limit drawdown: 30.00 >= 20.00")[0] == 200
    status, answer = control(node, "clear_halt", **decision)
    assert status == 403 and "was acted on already (replayed)" in answer["error"], answer
    assert control(node, "clear_halt", **clear_halt(BOT))[0] == 200
    # Any other halt clears in one step.
    assert control(node, "halt", reason="desk review")[0] == 200
    assert control(node, "clear_halt")[0] == 200
    assert control(node, "resume")[0] == 200 and running(node)
    acted = value(scrape(node), "tradingbot_decisions_total", venue=VENUE, strategy=STRATEGY_LABEL, kind=CLEAR_HALT)
    assert acted == 2


def test_flatten_while_trading_stops_the_strategies_and_closes_every_position(node: Node) -> None:
    """The buy adds to whatever the node held, and the flatten closes it all. What it held depends on the tests before
    it on its node: `-n 2` without `--dist loadgroup` (xdist's `load`) spreads the module over both workers, each with
    a node of its own, and one whose halt test ran on the other still holds the first buy's 0.5 (0.7 after this buy,
    never the 0.2 once waited for)."""
    iid = InstrumentId.from_str(INSTRUMENT_ID)

    def net() -> Decimal:
        return Decimal(node.on_loop(lambda: node.node.portfolio.net_position(iid)))

    held = net()
    buy = node.on_loop(lambda: node.strategy.buy("0.2"))
    # The buy itself is waited on (the sandbox fills a market order against the last quote as it is sent), then the
    # position it adds to: a wait on "holds 0.2" took the module's earlier tests for granted.
    try:
        until(
            "the strategy's buy of 0.2 filled", lambda: node.on_loop(lambda: node.node.cache.order(buy).is_closed), 30
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the node: {node.describe()}") from None
    status = node.on_loop(lambda: node.node.cache.order(buy).status)
    assert status == OrderStatus.FILLED, f"the buy {buy} is {status.name}; the node: {node.describe()}"
    assert net() == held + Decimal("0.2"), f"held {held} before the buy; the node: {node.describe()}"
    until(
        "the position counted",
        lambda: value(scrape(node), "tradingbot_open_positions", venue=VENUE, strategy=STRATEGY_LABEL) == 1,
        10,
    )
    status, body = control(node, "flatten")
    assert status == 200 and body["previous_state"] == "active" and body["state"] == "paused"
    until("the position is closed", lambda: node.on_loop(lambda: node.node.portfolio.is_flat(iid)), 10)
    until(
        "no position counted",
        lambda: value(scrape(node), "tradingbot_open_positions", venue=VENUE, strategy=STRATEGY_LABEL) == 0,
        10,
    )
    assert not running(node) and trading_state(node) == TradingState.ACTIVE
    assert control(node, "resume")[0] == 200 and running(node)


def test_reconcile_runs_nautilus_execution_reconciliation(node: Node) -> None:
    before = value(scrape(node), "tradingbot_reconciliation_runs_total", venue=VENUE, trigger="command", result="clean")
    status, body = control(node, "reconcile")
    assert status == 200 and body["result"] == "clean"
    samples = scrape(node)
    assert (
        value(samples, "tradingbot_reconciliation_runs_total", venue=VENUE, trigger="command", result="clean")
        == (before or 0) + 1
    )
    last = value(samples, "tradingbot_reconciliation_last_success_timestamp_seconds", venue=VENUE)
    assert last is not None and time.time() - last < 10


def test_resubscribe_renews_a_feed_that_stopped(node: Node, gateway: Gateway) -> None:
    def quotes() -> float:
        return value(scrape(node), "tradingbot_market_data_updates_total", venue=VENUE, symbol=SYMBOL) or 0.0

    gateway.chaos("stale_market_data", symbol="BTC-USD")
    time.sleep(0.5)
    stopped = quotes()
    time.sleep(1.0)
    assert quotes() == stopped, "the gateway's feed should have stopped"
    status, body = control(node, "resubscribe")
    assert status == 200 and body["resubscribed"] == [f"quote_ticks:{INSTRUMENT_ID}"]
    until("quotes flow again", lambda: quotes() > stopped, 10)


def test_reconnect_reconnects_the_clients(node: Node) -> None:
    session = node.data_client._session
    status, body = control(node, "reconnect")
    assert status == 200 and body["clients"] == [f"data:{VENUE}", f"exec:{VENUE}"]
    until("the data client has a new session", lambda: node.data_client._session not in (None, session), 10)
    quotes = node.data_client.quotes_published
    until("quotes flow on it", lambda: node.data_client.quotes_published > quotes, 10)
    assert value(scrape(node), "tradingbot_broker_connected", venue=VENUE, channel="market_data") == 1


def _coid(value: str) -> Any:
    from nautilus_trader.model.identifiers import ClientOrderId

    return ClientOrderId(value)


def test_the_token_comes_from_a_file_or_the_environment_never_the_config(tmp_path: Path) -> None:
    from trading_ops.integrations.nautilus.controller import TradingOpsControllerConfig, read_token

    write_secret(tmp_path / "token", "from-a-file\n")
    assert read_token(TradingOpsControllerConfig(token_file=str(tmp_path / "token"))) == "from-a-file"
    with pytest.raises(ValueError, match="TRADING_OPS_TEST_UNSET is empty or unset"):
        read_token(TradingOpsControllerConfig(token_env="TRADING_OPS_TEST_UNSET"))


def test_the_docs_snippet_builds_a_node_config_with_the_controller(tmp_path: Path) -> None:
    """docs/nautilus.md's configuration block, run as written: a TradingNodeConfig whose controller is ours."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "nautilus.md").read_text()
    block = page.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict[str, Any] = {}
    exec(compile(block, "docs/nautilus.md", "exec"), scope)
    config = scope["config"]
    assert config.controller.controller_path == "trading_ops.integrations.nautilus.controller:TradingOpsController"
    assert config.controller.config["port"] == 9310 and config.controller.config["daily_loss_limit"] == 500.0


def test_a_web_config_file_guards_metrics_with_basic_auth_and_control_keeps_its_bearer(
    node: Node, tmp_path: Path
) -> None:
    """web_config_file as every trading-ops server takes it: basic_auth_users on /metrics, the bearer on /control.
    A second server of the module's controller, as the controller builds its own from its configuration."""
    import base64

    import bcrypt

    from trading_ops.integrations.nautilus.controller import _Instrumentation, _ThreadedControl
    from trading_ops.integrations.nautilus.server import ServerThread

    (tmp_path / "web.yml").write_text(
        json.dumps({"basic_auth_users": {"prom": bcrypt.hashpw(b"scrape-pw", bcrypt.gensalt(4)).decode()}})
    )
    controller = node.controller
    assert controller.control is not None
    inst = _Instrumentation(controller, _ThreadedControl(controller.control, node.loop, controller.journal))
    server = ServerThread(inst, "127.0.0.1", free_port(), str(tmp_path / "web.yml"))
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/metrics", timeout=5)
        assert refused.value.code == 401
        basic = base64.b64encode(b"prom:scrape-pw").decode()
        req = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Basic {basic}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert b"tradingbot_state" in resp.read()
        req = urllib.request.Request(
            f"{url}/control/status", data=b"{}", method="POST", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.loads(resp.read())["nautilus_trading_state"] == "ACTIVE"
    finally:
        server.stop()


def test_the_node_exports_its_phase_starting_then_trading_then_stopping(gateway: Gateway, tmp_path: Path) -> None:
    """A node of its own from its start: tradingbot_phase as the runtime exports it, so the rules and playbooks that
    leave a starting bot alone treat a Nautilus node alike. Starting until the node's strategies run, trading after,
    stopping once the node stops (its server gone then: read from the controller's registry)."""
    write_secret(tmp_path / "token", TOKEN)
    started = start_node(gateway.url, tmp_path / "token", port=free_port(), trader_id="NAUTILUS-PHASE")
    seen: list[str] = []
    try:

        def trading() -> bool:
            controller = started.node.kernel._controller
            if controller is None or controller.port is None:
                return False
            samples = scrape(started)
            phase = [dict(ls)["phase"] for (n, ls), v in samples.items() if n == "tradingbot_phase" and v == 1]
            if phase and phase[0] not in seen[-1:]:
                seen.append(phase[0])
            return phase == ["trading"]

        until("the node trading", trading, 60, interval=0.05)
        assert set(seen) <= {"starting", "trading"} and seen[-1] == "trading", seen
        status, body = control(started, "status")
        assert status == 200 and body["phase"] == "trading", body
        controller = started.controller
    finally:
        started.stop()
    text = generate_latest(controller.registry).decode()
    assert 'tradingbot_phase{phase="stopping"} 1.0' in text and 'tradingbot_phase{phase="trading"} 0.0' in text
    print(f"phases seen over HTTP from the node's start: {seen}")
