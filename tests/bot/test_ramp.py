"""The staged ramp against the real paper venue: the current stage's limits in the order gate, promotion to the next
stage only after its minimum time and with a person's name, a fall back by itself on a loss-limit breach with the
narrower limits enforced at once, the stage kept over a restart; and the configuration's bad stages, one line each."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from decision_helpers import clear_halt, forged, signed, signed_as_is
from paper_helpers import TOKEN, IdleStrategy, control, fast_config, placed, submit_fresh, wait_for
from prometheus_client import CollectorRegistry

from trading_ops.bot.broker import Channel, OrderType, Side
from trading_ops.bot.decision_gate import trusted_keys
from trading_ops.bot.live_gate import live_start_decision, live_start_problem
from trading_ops.bot.main import run
from trading_ops.bot.ramp import STATE_FILE, PromotionRefused
from trading_ops.config import READINESS_CRITERIA, ConfigError, parse_config
from trading_ops.db import readiness_records as records
from trading_ops.db.base import make_engine
from trading_ops.decisions import LIVE_START, RAMP_PROMOTE, DecisionSigner
from trading_ops.paper.bot import PaperBot, make_venue
from trading_ops.readiness.criteria import CRITERIA

SYMBOL, OTHER = "BTC-USD", "ETH-USD"
# The seeds' ramp, scaled to the paper venue's prices: a small position on one pair, a bigger one after a while, a
# second pair after that.
STAGES: list[dict[str, Any]] = [
    {"name": "small", "max_position_notional": 1000, "symbols": [SYMBOL], "daily_loss_limit": 40, "min_time": "2d"},
    {"name": "bigger", "max_position_notional": 2500, "symbols": [SYMBOL], "daily_loss_limit": 40, "min_time": "2d"},
    {"name": "two-pairs", "max_position_notional": 2500, "symbols": [SYMBOL, OTHER], "daily_loss_limit": 40},
]


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def value(bot: PaperBot, name: str, **labels: str) -> float:
    return bot.inst.registry.get_sample_value(name, {"venue": "paper", "strategy": "demo", **labels}) or 0.0


def size_for(bot: PaperBot, notional: float, symbol: str = SYMBOL) -> Any:
    from decimal import ROUND_DOWN, Decimal

    mid = bot.broker.quote(symbol).mid  # type: ignore[attr-defined]
    return (Decimal(str(notional)) / mid).quantize(Decimal("0.0001"), rounding=ROUND_DOWN)


async def ramp_bot(tmp_path: Path, clock: Clock, ramp: Any = None) -> PaperBot:
    config = fast_config(tmp_path, partial_fill_probability=0.0)
    config.bot.risk.daily_loss_limit = 0.0
    config.bot.ramp = ramp or parse_config({"bot": {"ramp": {"stages": STAGES}}}).bot.ramp
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry(), chaos=True)
    bot.ramp.wall = clock
    bot.ramp.since = clock.now
    bot.strategy = IdleStrategy()  # type: ignore[assignment]
    bot.port = await bot.start("127.0.0.1", 0)  # type: ignore[attr-defined]
    await wait_for(lambda: bot.trading_allowed and not bot.market_data_stale(SYMBOL))
    return bot


def refused(bot: PaperBot, reason: str, symbol: str = SYMBOL) -> float:
    return value(bot, "tradingbot_orders_refused_total", symbol=symbol, reason=reason)


async def test_a_paper_bot_ramps_through_two_stages_each_enforced_in_the_order_gate(tmp_path: Path) -> None:
    clock = Clock()
    bot = await ramp_bot(tmp_path, clock)
    try:
        assert value(bot, "tradingbot_ramp_stage") == 1
        assert value(bot, "tradingbot_risk_limit", limit="position_notional") == 1000
        assert value(bot, "tradingbot_risk_limit", limit="symbols") == 1
        # Stage 1: the other pair is refused, and so is a position past 1000.
        assert await submit_fresh(bot, OTHER, Side.BUY, OrderType.MARKET, size_for(bot, 100, OTHER)) is None
        assert refused(bot, "risk_symbols", OTHER) == 1
        assert (await control(bot.port, "resume"))[0] == 200  # type: ignore[attr-defined]
        assert await submit_fresh(bot, SYMBOL, Side.BUY, OrderType.MARKET, size_for(bot, 1500)) is None
        assert refused(bot, "risk_position_notional") == 1
        assert (await control(bot.port, "resume"))[0] == 200  # type: ignore[attr-defined]
        # Over the control API, on a decision the reconciler signed: not before the stage's minimum time; not to a
        # stage other than the next (400, the decision unspent).
        bigger = {"stage": "bigger", "decision": signed(RAMP_PROMOTE, stage="bigger", approvers=("bob",))}
        status, body = await control(bot.port, "ramp_promote", bigger)  # type: ignore[attr-defined]
        assert (status, body["error"]) == (400, "ramp_promote: stage 'small' lasts at least 2d; 0.0 h spent"), body
        clock.now += 2 * 86400
        two_pairs = {"stage": "two-pairs", "decision": signed(RAMP_PROMOTE, stage="two-pairs")}
        status, body = await control(bot.port, "ramp_promote", two_pairs)  # type: ignore[attr-defined]
        assert (status, body["error"]) == (400, "ramp_promote: the next stage is 'bigger', not 'two-pairs'"), body
        assert (await control(bot.port, "ramp_promote", bigger))[0] == 200  # type: ignore[attr-defined]
        assert value(bot, "tradingbot_ramp_stage") == 2
        await placed(bot, SYMBOL, Side.BUY, OrderType.MARKET, size_for(bot, 1500))
        # Stage 3 after two more days: the second pair (bob asked, carol approved).
        clock.now += 2 * 86400
        two_pairs["decision"] = signed(RAMP_PROMOTE, stage="two-pairs", requested_by="bob", approvers=("carol",))
        assert (await control(bot.port, "ramp_promote", two_pairs))[0] == 200  # type: ignore[attr-defined]
        await placed(bot, OTHER, Side.BUY, OrderType.MARKET, size_for(bot, 100, OTHER))
        assert value(bot, "tradingbot_ramp_stage") == 3
        with pytest.raises(PromotionRefused, match="last stage"):
            bot.ramp.promote("two-pairs", by="bob", why="again")
        state = json.loads((Path(bot.config.bot.data_dir) / STATE_FILE).read_text())
        assert state["stage"] == "two-pairs"
        assert [(h["to"], h["requested_by"], h["approvers"]) for h in state["history"]] == [
            ("bigger", "alice", ["bob"]),
            ("two-pairs", "bob", ["carol"]),
        ]
    finally:
        await bot.stop()


async def test_a_loss_limit_breach_demotes_a_stage_at_once_and_the_stage_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    bot = await ramp_bot(tmp_path, clock)
    config = bot.config
    try:
        clock.now += 2 * 86400
        bot.ramp.promote("bigger", by="alice", why="approval 1")
        await placed(bot, SYMBOL, Side.BUY, OrderType.MARKET, size_for(bot, 2000))  # allowed at stage 2 only
        await wait_for(lambda: bot.book.position(SYMBOL) > 0)
        await bot.paper_venue.gap_price(SYMBOL, -0.05)  # type: ignore[attr-defined]  # about 100 lost: past 40
        await wait_for(lambda: bot.inst.state.state.value == "halted")
        # Fallen back by itself, counted, recorded with its reason; the narrower limits are the gate's at once.
        assert bot.ramp.number == 1 and value(bot, "tradingbot_ramp_stage") == 1
        assert demotions(bot, "loss_limit") == 1
        assert bot.risk.limits.max_position_notional == 1000
        assert value(bot, "tradingbot_risk_limit", limit="position_notional") == 1000
        last = bot.ramp.history[-1]
        assert (last["from"], last["to"], last["by"]) == ("bigger", "small", "risk")
        assert last["why"].startswith("risk limit daily_loss")
        _, body = await control(bot.port, "status")  # type: ignore[attr-defined]
        assert body["ramp"]["name"] == "small" and body["ramp"]["history"][-1]["by"] == "risk", body["ramp"]
        assert body["risk_limits"]["position_notional"] == 1000 and body["risk_limits"]["symbols"] == 1
        # The price comes back; once an operator clears the halt, adding to the 2000 position is refused by stage 1's
        # position limit (stage 2 allowed it).
        await bot.paper_venue.gap_price(SYMBOL, 0.0526)  # type: ignore[attr-defined]
        await wait_for(lambda: bot.risk.loss_breach() is None)
        assert (await control(bot.port, "clear_halt", clear_halt()))[0] == 200  # type: ignore[attr-defined]
        assert (await control(bot.port, "resume"))[0] == 200  # type: ignore[attr-defined]
        assert await submit_fresh(bot, SYMBOL, Side.BUY, OrderType.MARKET, size_for(bot, 100)) is None
        assert refused(bot, "risk_position_notional") == 1
        # At the first stage a breach has nothing to fall back to.
        assert bot.ramp.demote("another breach") is False
    finally:
        await bot.stop()
    again = PaperBot(config, token=TOKEN, registry=CollectorRegistry())
    try:
        assert again.ramp.number == 1 and again.risk.limits.max_position_notional == 1000
        assert again.ramp.history[-1]["why"].startswith("risk limit daily_loss")
    finally:
        again.instance_lock.release()
        again.engine.dispose()


def demotions(bot: PaperBot, cause: str) -> float:
    return value(bot, "tradingbot_ramp_demotions_total", cause=cause)


async def test_a_crash_loop_falls_back_a_stage_once_before_the_bot_trades(tmp_path: Path) -> None:
    """Four runs of the bot at stage 3; the first three end without a clean shutdown (their heartbeat stops, as a
    killed process's does). The start that finds the second crash within the window falls back to stage 2 before it
    trades; the next start counts crashes from that demotion on, so the same loop demotes once."""
    config = fast_config(tmp_path, partial_fill_probability=0.0)
    config.recovery.crash_timeout_seconds = 0.1
    config.bot.ramp = parse_config(
        {"bot": {"ramp": {"stages": STAGES, "crash_loop_crashes": 2, "crash_loop_window": "1h"}}}
    ).bot.ramp
    data_dir = Path(config.bot.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / STATE_FILE).write_text(json.dumps({"stage": "two-pairs", "since": time.time() - 86400, "history": []}))
    seen = []
    for run_number in range(4):
        bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry())
        bot.strategy = IdleStrategy()  # type: ignore[assignment]
        await bot.start("127.0.0.1", 0)  # type: ignore[attr-defined]
        seen.append(
            (bot.crash is not None, bot.ramp.number, demotions(bot, "crash_loop"), len(bot.risk.limits.symbols or ()))
        )
        if run_number < 3:
            await bot._abandon()  # no clean-shutdown marker: the next start finds a crash
        else:
            history = bot.ramp.history
            await bot.stop()
    assert seen == [
        (False, 3, 0, 2),  # stage 3: two pairs
        (True, 3, 0, 2),  # one crash within the hour: not a loop yet
        (True, 2, 1, 1),  # two: stage 2 (one pair) before anything traded, counted, paged by its cause
        (True, 2, 0, 1),  # the third crash is the first since the demotion: no second fall (a new process: 0)
    ], seen
    last = history[-1]
    assert (last["from"], last["to"], last["by"], last["cause"]) == ("two-pairs", "bigger", "risk", "crash_loop")
    assert last["why"].startswith("crash loop: 2 crashes within 60 min"), last


async def test_three_crashes_after_a_promotion_demote_counting_the_run_live_at_the_promotion(tmp_path: Path) -> None:
    """The issue's case: a bot promoted while it runs, then three crashes (the run live at the promotion, and the two
    after it) with bot.ramp.crash_loop_crashes 3. The start after the third crash falls back a stage before it
    trades, and says 3 crashes (it used to miss the run live at the promotion, demote at the fourth and say 3)."""
    config = fast_config(tmp_path, partial_fill_probability=0.0)
    config.recovery.crash_timeout_seconds = 0.1
    config.bot.ramp = parse_config(
        {"bot": {"ramp": {"stages": STAGES, "crash_loop_crashes": 3, "crash_loop_window": "1h"}}}
    ).bot.ramp
    data_dir = Path(config.bot.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    state = data_dir / STATE_FILE
    state.write_text(json.dumps({"stage": "small", "since": time.time() - 3 * 86400, "history": []}))
    seen = []
    history: list[dict[str, Any]] = []
    for run_number in range(4):
        bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry())
        bot.strategy = IdleStrategy()  # type: ignore[assignment]
        await bot.start("127.0.0.1", 0)  # type: ignore[attr-defined]
        if run_number == 0:
            # Promoted while this run is live (what a person's approved promotion writes), after it started.
            await wait_for(lambda: bot.heartbeat.run_id is not None, 10)
            bot.ramp.promote("bigger", by="alice", why="approval 1")
            assert json.loads(state.read_text())["stage"] == "bigger"
        seen.append((bot.crash is not None, bot.ramp.number, demotions(bot, "crash_loop")))
        if run_number < 3:
            await bot._abandon()  # no clean-shutdown marker: the next start finds a crash
        else:
            history = bot.ramp.history
            await bot.stop()
    assert seen == [
        (False, 2, 0),  # stage 2 once promoted (the number read after the promotion)
        (True, 2, 0),  # the run live at the promotion crashed: 1
        (True, 2, 0),  # 2
        (True, 1, 1),  # 3: stage 1 before anything traded
    ], seen
    last = history[-1]
    assert (last["from"], last["to"], last["by"], last["cause"]) == ("bigger", "small", "risk", "crash_loop")
    assert last["why"].startswith("crash loop: 3 crashes within 60 min at stage bigger"), last


async def test_a_channel_down_too_long_falls_back_a_stage_once_per_outage(tmp_path: Path) -> None:
    clock = Clock()
    config_ramp = parse_config({"bot": {"ramp": {"stages": STAGES, "stream_down_for": "1s"}}}).bot.ramp
    bot = await ramp_bot(tmp_path, clock, ramp=config_ramp)
    try:
        clock.now += 2 * 86400
        bot.ramp.promote("bigger", by="alice", why="approval 1")
        clock.now += 2 * 86400
        bot.ramp.promote("two-pairs", by="bob", why="approval 2")
        assert bot.risk.limits.symbols == frozenset({SYMBOL, OTHER})
        # A short outage (under a second) costs nothing.
        await bot.paper_venue.drop_connection()  # type: ignore[attr-defined]
        await bot.broker.reconnect()  # type: ignore[attr-defined]
        await wait_for(lambda: bot.broker.is_connected(Channel.ORDERS))
        assert bot.ramp.number == 3
        # Both channels down: past a second, one fall back (stage 2), at once in the gate, whatever the outage's length.
        dropped = time.monotonic()
        await bot.paper_venue.drop_connection()  # type: ignore[attr-defined]
        await wait_for(lambda: bot.ramp.number == 2, timeout=15)
        assert time.monotonic() - dropped >= 1.0  # not before the outage reached bot.ramp.stream_down_for
        assert bot.risk.limits.symbols == frozenset({SYMBOL})
        assert value(bot, "tradingbot_risk_limit", limit="symbols") == 1
        assert demotions(bot, "stream_down") == 1 and demotions(bot, "loss_limit") == 0
        last = bot.ramp.history[-1]
        assert (last["from"], last["to"], last["cause"]) == ("two-pairs", "bigger", "stream_down")
        assert last["why"].startswith("stream down: the ")
        await asyncio.sleep(1.5)  # the same outage lasts on: no second fall
        assert bot.ramp.number == 2 and demotions(bot, "stream_down") == 1
        # Back, then down again past the limit: a new outage, one more fall.
        await bot.broker.reconnect()  # type: ignore[attr-defined]
        await wait_for(lambda: bot.broker.is_connected(Channel.ORDERS))
        await bot.paper_venue.drop_connection()  # type: ignore[attr-defined]
        await wait_for(lambda: bot.ramp.number == 1, timeout=15)
        assert demotions(bot, "stream_down") == 2 and bot.risk.limits.max_position_notional == 1000
        _, body = await control(bot.port, "status")  # type: ignore[attr-defined]
        assert [h["cause"] for h in body["ramp"]["history"]] == ["promotion", "promotion", "stream_down", "stream_down"]
    finally:
        await bot.stop()


def test_without_stages_there_is_no_ramp_and_the_limits_are_bot_risk(tmp_path: Path) -> None:
    config = fast_config(tmp_path)
    config.bot.risk.max_position_notional = 123.0
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry())
    try:
        assert bot.ramp.number == 0 and value(bot, "tradingbot_ramp_stage") == 0
        assert bot.risk.limits.max_position_notional == 123.0 and bot.risk.limits.symbols is None
        assert bot.ramp.demote("breach") is False
        assert not (Path(config.bot.data_dir) / STATE_FILE).exists()
    finally:
        bot.instance_lock.release()
        bot.engine.dispose()


def test_a_state_file_naming_a_stage_no_longer_configured_starts_at_the_first(tmp_path: Path) -> None:
    config = fast_config(tmp_path)
    config.bot.ramp = parse_config({"bot": {"ramp": {"stages": STAGES}}}).bot.ramp
    Path(config.bot.data_dir).mkdir(parents=True, exist_ok=True)
    (Path(config.bot.data_dir) / STATE_FILE).write_text(json.dumps({"stage": "gone", "since": 0, "history": []}))
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry())
    try:
        assert bot.ramp.number == 1 and bot.risk.limits.symbols == frozenset({SYMBOL})
    finally:
        bot.instance_lock.release()
        bot.engine.dispose()


def test_the_criteria_a_stage_may_name_are_the_verdicts() -> None:
    named = {c.name for c in CRITERIA}
    assert named <= set(READINESS_CRITERIA)
    docs = (Path(__file__).resolve().parents[2] / "docs" / "readiness.md").read_text()
    for name in READINESS_CRITERIA:
        assert f"`{name}`" in docs, name


BAD = [
    (
        [STAGES[0], {**STAGES[2], "name": "x"}],
        "bot.ramp.stages[1].widens: the stage widens max_position_notional, symbols at once",
    ),
    ([STAGES[1], STAGES[0]], "bot.ramp.stages[1]: narrows max_position_notional of stage 'bigger'"),
    ([STAGES[0], {**STAGES[0], "name": "again"}], "bot.ramp.stages[1]: widens nothing over stage 'small'"),
    ([STAGES[0], STAGES[0]], "bot.ramp.stages[1].name: 'small' is given twice"),
    ([{**STAGES[0], "criteria": ["uptime", "luck"]}], "bot.ramp.stages[0].criteria[1]: unknown criterion 'luck'"),
    ([{**STAGES[0], "widens": ["leverage"]}], "bot.ramp.stages[0].widens[0]: unknown limit 'leverage'"),
]


@pytest.mark.parametrize(
    ("stages", "message"), BAD, ids=["two-at-once", "out-of-order", "overlap", "twice", "criterion", "widens"]
)
def test_bad_stages_are_refused_naming_the_key(stages: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"bot": {"ramp": {"stages": stages}}})
    assert str(err.value).startswith(message), str(err.value)


def test_two_limits_widened_at_once_pass_when_the_stage_says_so() -> None:
    stages = [STAGES[0], {**STAGES[2], "name": "x", "widens": ["symbols", "max_position_notional"]}]
    assert len(parse_config({"bot": {"ramp": {"stages": stages}}}).bot.ramp.stages) == 2


def test_a_window_longer_than_the_retention_is_refused() -> None:
    stages = [{**STAGES[0], "criteria": ["uptime"], "window": "5d"}]
    with pytest.raises(ConfigError, match=r"bot.ramp.stages\[0\].window: 5d is longer than Prometheus's retention"):
        parse_config({"bot": {"ramp": {"stages": stages}}, "readiness": {"prometheus_retention": "2d"}})
    parse_config({"bot": {"ramp": {"stages": stages}}, "readiness": {"prometheus_retention": "15d"}})


def live_config(tmp_path: Path) -> Any:
    """The paper bot's configuration with the venue switched: a live venue, the same ramp."""
    config = fast_config(tmp_path)
    config.bot.ramp = parse_config({"bot": {"ramp": {"stages": STAGES}}}).bot.ramp
    config.bot.venue = "kraken"
    config.bot.control_token = TOKEN
    return config


def record(engine: Any, verdict: str, *, approved_by: str | None = None) -> records.Record:
    return records.write(
        engine,
        bot="paper-1",
        instance="127.0.0.1:9101",
        verdict=verdict,
        window="5d",
        failing=[],
        missing=["uptime"] if verdict == "unknown" else [],
        recorded_by="alice",
        approved_by=approved_by,
        reason="the venue's throttling" if approved_by else "",
    )


def test_a_live_start_without_a_passing_paper_verdict_refuses_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    config = live_config(tmp_path)
    assert run(IdleStrategy(), make_venue, config) == 2  # type: ignore[arg-type]
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert (
        "config: bot.venue: paper-1 would trade live on kraken with no paper readiness verdict recorded in the ledger"
        in err
    )
    # Nothing started: no ramp state.
    assert not (Path(config.bot.data_dir) / STATE_FILE).exists()
    # The record is the ledger's (the database the bot shares with the reconciler), the newest of the bot counting:
    # `unknown` refuses naming it, who recorded it and when; a person's approval, or `ready`, lets it start.
    engine = make_engine(config.database_url())
    try:
        record(engine, "unknown")
        with pytest.raises(ConfigError, match=r"its recorded verdict is unknown \(20\d\d-.* UTC by alice\)"):
            PaperBot(config, token=TOKEN, registry=CollectorRegistry())
        approved = record(engine, "unknown", approved_by="carol")
        assert (approved.approved_by, approved.recorded_by, approved.recorded_at.tzinfo is not None) == (
            "carol",
            "alice",
            True,
        )
        assert live_start_problem(config, engine) is None
        record(engine, "not ready")  # a newer verdict replaces the approval
        assert "its recorded verdict is not ready" in (live_start_problem(config, engine) or "")
        ready = record(engine, "ready", approved_by="carol")
        assert [r.verdict for r in records.history(engine, "paper-1")] == ["ready", "not ready", "unknown", "unknown"]
    finally:
        engine.dispose()
    # A record that allows it is not enough: the bot goes live only on a live_start decision the reconciler signed
    # for that record, which it verifies (signature, kind, bot, record, expiry).
    with pytest.raises(
        ConfigError,
        match=r"^bot.live_start_decision_file: paper-1 would trade live on kraken without a "
        r"signed live_start decision: fetch the one the reconciler signed for readiness record \d+",
    ):
        PaperBot(config, token=TOKEN, registry=CollectorRegistry())
    decision_file = tmp_path / "live-start.decision"
    config.bot.live_start_decision_file = str(decision_file)
    refusals = {
        "signature does not verify": forged(signed(LIVE_START, record=ready.id), approvers=["bob"]),
        "not one this bot trusts": signed(
            LIVE_START, record=ready.id, signer=DecisionSigner(Ed25519PrivateKey.generate())
        ),
        "expired": signed(LIVE_START, record=ready.id, now=time.time() - 600),
        "is for bot 'paper-2'": signed(LIVE_START, "paper-2", record=ready.id),
        "allows ramp_promote": signed(RAMP_PROMOTE, record=ready.id, stage="bigger"),
        f"answers readiness record {ready.id - 1}": signed(LIVE_START, record=ready.id - 1),
        "its requester (carol) approved it": signed_as_is(
            signed(LIVE_START, record=ready.id), requested_by="carol", approvers=["carol"]
        ),
    }
    for why, token in refusals.items():
        decision_file.write_text(token)
        with pytest.raises(ConfigError, match=r"^bot.live_start_decision_file: .*" + re.escape(why)):
            PaperBot(config, token=TOKEN, registry=CollectorRegistry())
    token = signed(LIVE_START, record=ready.id, requested_by="alice", approvers=("carol",), ttl=60)
    decision_file.write_text(token)
    with caplog.at_level(logging.WARNING, logger="trading_ops.bot.live_gate"):
        bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry())
    (line,) = [r.getMessage() for r in caplog.records if r.name == "trading_ops.bot.live_gate"]
    assert line.startswith(f"going live on kraken: readiness record {ready.id} (ready, recorded by alice at ") and (
        "live_start paper-1 (readiness record" in line and "requested by alice, approved by carol" in line
    ), line
    labels = {"venue": "kraken", "strategy": "demo", "kind": "live_start"}
    assert bot.inst.registry.get_sample_value("tradingbot_decisions_total", labels) == 1
    bot.instance_lock.release()
    bot.engine.dispose()
    # A restart on the decision it went live on holds after the decision's expiry: the go-live was decided once.
    later = time.time() + 3600
    again = live_start_decision(config, ready, trusted_keys(config), Path(config.bot.data_dir), wall=lambda: later)
    assert again.approvers == ("carol",)
    # Another bot's data dir never went live on it: there, the expired decision is refused.
    with pytest.raises(ConfigError, match="expired"):
        live_start_decision(config, ready, trusted_keys(config), tmp_path / "elsewhere", wall=lambda: later)


def test_a_live_start_whose_ledger_is_unreachable_refuses_with_one_line(tmp_path: Path) -> None:
    """The ledger on a PostgreSQL address where nothing listens: the live start says so in one line."""
    config = live_config(tmp_path)
    engine = make_engine("postgresql+psycopg://trading@127.0.0.1:1/ledger?connect_timeout=2")
    try:
        problem = live_start_problem(config, engine) or ""
    finally:
        engine.dispose()
    assert problem.startswith(
        "paper-1 would trade live on kraken and cannot read its readiness record: "
        "the ledger's database is unreachable ("
    ), problem
    assert "\n" not in problem and "127.0.0.1" in problem, problem


def test_a_paper_start_or_a_bot_without_a_ramp_needs_no_verdict(tmp_path: Path) -> None:
    config = live_config(tmp_path)
    engine = make_engine(config.database_url())
    config.bot.venue = "paper"
    assert live_start_problem(config, engine) is None
    config.bot.venue = "kraken"
    config.bot.ramp.stages = []
    assert live_start_problem(config, engine) is None
    config.bot.ramp = parse_config(
        {"bot": {"ramp": {"stages": STAGES, "require_readiness_to_go_live": False}}}
    ).bot.ramp
    assert live_start_problem(config, engine) is None
    engine.dispose()
