"""A real paper bot's control API over HTTP, with real Ed25519 keys: its limits widen (ramp_promote) and a loss-limit
halt clears only on a decision the reconciler signed and the bot verifies. Forged, expired, replayed, other-bot,
other-stage, other-kind and self-approved decisions are refused in one line with the limits unchanged; the bot's own
control token alone widens nothing; a valid decision promotes, and the status, the metrics and the log name it."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from decision_helpers import SIGNER, clear_halt, forged, signed, signed_as_is
from paper_helpers import TOKEN, IdleStrategy, control, fast_config, wait_for
from prometheus_client import CollectorRegistry

from trading_ops.bot.ramp import STATE_FILE
from trading_ops.config import parse_config
from trading_ops.decisions import (
    CLEAR_HALT,
    LIVE_START,
    RAMP_PROMOTE,
    SELF_APPROVED,
    DecisionSigner,
    DecisionVerifier,
    UsedDecisions,
)
from trading_ops.paper.bot import PaperBot

STAGES: list[dict[str, Any]] = [
    {"name": "small", "max_position_notional": 1000, "symbols": ["BTC-USD"], "min_time": "1s"},
    {"name": "bigger", "max_position_notional": 2500, "symbols": ["BTC-USD"], "min_time": "1s"},
    {"name": "two-pairs", "max_position_notional": 2500, "symbols": ["BTC-USD", "ETH-USD"]},
]


def value(bot: PaperBot, name: str, **labels: str) -> float:
    return bot.inst.registry.get_sample_value(name, {"venue": "paper", "strategy": "demo", **labels}) or 0.0


async def ramp_bot(tmp_path: Path) -> PaperBot:
    config = fast_config(tmp_path, partial_fill_probability=0.0)
    config.bot.ramp = parse_config({"bot": {"ramp": {"stages": STAGES}}}).bot.ramp
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry())
    bot.ramp.since -= 10  # the first stage's minimum time has passed
    bot.strategy = IdleStrategy()  # type: ignore[assignment]
    bot.port = await bot.start("127.0.0.1", 0)  # type: ignore[attr-defined]
    return bot


async def test_only_a_verified_decision_widens_the_limits(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bot = await ramp_bot(tmp_path)
    port: int = bot.port  # type: ignore[attr-defined]
    state_file = Path(bot.config.bot.data_dir) / STATE_FILE
    try:
        valid = signed(RAMP_PROMOTE, stage="bigger", requested_by="alice", approvers=("bob",))
        other_key = DecisionSigner(Ed25519PrivateKey.generate())
        refusals: list[tuple[dict[str, Any], int, str]] = [
            # The bot's own destructive token and a typed name: what used to widen the limits.
            ({"stage": "bigger", "approval": "nobody"}, 403, 'ramp_promote needs a signed decision ("decision")'),
            ({"stage": "bigger", "decision": "nobody"}, 403, "is not a signed decision"),
            ({"stage": "bigger", "decision": forged(valid, approvers=["mallory"])}, 403, "does not verify (forged"),
            ({"stage": "bigger", "decision": forged(valid, stage="two-pairs")}, 403, "does not verify (forged"),
            (
                {"stage": "bigger", "decision": signed(RAMP_PROMOTE, stage="bigger", signer=other_key)},
                403,
                "not one this bot trusts (bot.decision_keys)",
            ),
            (
                {"stage": "bigger", "decision": signed(RAMP_PROMOTE, stage="bigger", now=time.time() - 301)},
                403,
                "expired",
            ),
            (
                {"stage": "bigger", "decision": signed(RAMP_PROMOTE, "paper-2", stage="bigger")},
                403,
                "the decision is for bot 'paper-2', not 'paper-1'",
            ),
            (
                {"stage": "bigger", "decision": signed(RAMP_PROMOTE, stage="two-pairs")},
                403,
                "the decision is for stage 'two-pairs', not 'bigger'",
            ),
            (
                {"stage": "bigger", "decision": signed(CLEAR_HALT)},
                403,
                "the decision allows clear_halt, not ramp_promote",
            ),
            (
                {"stage": "bigger", "decision": signed_as_is(valid, requested_by="bob")},
                403,
                "its requester (bob) approved it, and 1 other approval(s) are required",
            ),
            ({"decision": valid}, 400, 'ramp_promote takes {"stage"'),
        ]
        for body, status, message in refusals:
            got, answer = await control(port, "ramp_promote", body)
            assert got == status and message in answer["error"], (body, answer)
            assert len(answer["error"].splitlines()) == 1
            # Nothing changed: the stage, its limits, its file.
            assert bot.ramp.number == 1 and value(bot, "tradingbot_ramp_stage") == 1
            assert value(bot, "tradingbot_risk_limit", limit="position_notional") == 1000
            assert not state_file.exists()
        assert value(bot, "tradingbot_decisions_refused_total", kind=RAMP_PROMOTE) == 10
        assert value(bot, "tradingbot_decisions_total", kind=RAMP_PROMOTE) == 0

        # The valid decision promotes: the history names who asked and who approved, the status, the metrics and
        # the log name the decision.
        with caplog.at_level(logging.WARNING):
            got, answer = await control(port, "ramp_promote", {"stage": "bigger", "decision": valid})
        assert got == 200, answer
        decision_id = answer["decision"]
        assert bot.ramp.number == 2 and value(bot, "tradingbot_risk_limit", limit="position_notional") == 2500
        last = bot.ramp.history[-1]
        assert (last["by"], last["requested_by"], last["approvers"], last["decision"]) == (
            "bob",
            "alice",
            ["bob"],
            decision_id,
        )
        assert last["rule"] == "approved by 1 other than its requester"
        logged = [r.getMessage() for r in caplog.records]
        assert any(f"acting on decision {decision_id}: ramp_promote paper-1 to bigger" in m for m in logged), logged
        assert any("ramp: promoted to stage 2 (bigger), approved by bob" in m and decision_id in m for m in logged)
        _, status = await control(port, "status")
        seen = status["decisions"]["ramp_promote"]
        assert (seen["id"], seen["stage"], seen["requested_by"], seen["approvers"]) == (
            decision_id,
            "bigger",
            "alice",
            ["bob"],
        )
        assert status["ramp"]["history"][-1]["approvers"] == ["bob"]
        assert value(bot, "tradingbot_decisions_total", kind=RAMP_PROMOTE) == 1
        assert value(bot, "tradingbot_decision_last_timestamp_seconds", kind=RAMP_PROMOTE) >= seen["acted_at"] - 1

        # Replayed: refused, even after a demotion made "bigger" the next stage again, and after a restart.
        assert bot.ramp.demote("a loss-limit breach")
        got, answer = await control(port, "ramp_promote", {"stage": "bigger", "decision": valid})
        assert (got, answer["error"]) == (403, f"ramp_promote: decision {decision_id} was acted on already (replayed)")
        assert bot.ramp.number == 1
    finally:
        await bot.stop()
    again = PaperBot(bot.config, token=TOKEN, registry=CollectorRegistry())
    again.strategy = IdleStrategy()  # type: ignore[assignment]
    again.ramp.since -= 10  # the first stage's minimum time has passed since the demotion
    port = await again.start("127.0.0.1", 0)
    try:
        got, answer = await control(port, "ramp_promote", {"stage": "bigger", "decision": valid})
        assert (got, answer["error"]) == (403, f"ramp_promote: decision {decision_id} was acted on already (replayed)")
        assert again.ramp.number == 1
        # A one-person team's decision, allowed by configuration, says so in the history.
        alone = signed(RAMP_PROMOTE, stage="bigger", requested_by="dave", approvers=("dave",), required=0)
        got, answer = await control(port, "ramp_promote", {"stage": "bigger", "decision": alone})
        assert got == 200, answer
        assert (again.ramp.history[-1]["rule"], again.ramp.history[-1]["approvers"]) == (SELF_APPROVED, ["dave"])
    finally:
        await again.stop()


async def test_a_loss_limit_halt_clears_only_on_a_decision_any_other_halt_in_one_step(tmp_path: Path) -> None:
    config = fast_config(tmp_path, partial_fill_probability=0.0)
    bot = PaperBot(config, token=TOKEN, registry=CollectorRegistry())
    bot.strategy = IdleStrategy()  # type: ignore[assignment]
    port = await bot.start("127.0.0.1", 0)
    try:
        # A person's halt (not a limit's): clear_halt is one step, as narrowing and stopping are.
        assert (await control(port, "halt", {"reason": "checking the venue"}))[0] == 200
        assert (await control(port, "clear_halt"))[0] == 200
        assert bot.inst.state.state.value == "paused"
        # A loss limit's halt: the token alone is refused, and so is a decision for another bot; a verified
        # clear_halt decision clears it, once.
        bot.inst.state.apply("halt", reason="risk limit daily_loss: the day's loss 41 reached the limit 40")
        for body, message in (
            ({}, 'clear_halt needs a signed decision ("decision")'),
            (clear_halt("paper-2"), "the decision is for bot 'paper-2', not 'paper-1'"),
            ({"decision": signed(RAMP_PROMOTE, stage="bigger")}, "allows ramp_promote, not clear_halt"),
        ):
            got, answer = await control(port, "clear_halt", body)
            assert got == 403 and message in answer["error"], answer
            assert bot.inst.state.state.value == "halted"
        body = clear_halt()
        got, answer = await control(port, "clear_halt", body)
        assert (got, answer["state"]) == (200, "paused"), answer
        assert value(bot, "tradingbot_decisions_total", kind=CLEAR_HALT) == 1
        _, status = await control(port, "status")
        assert status["decisions"]["clear_halt"]["approvers"] == ["bob"]
        # Halted by the limit again: the same decision is spent.
        bot.inst.state.apply("halt", reason="risk limit drawdown: 81 from the peak reached the limit 80")
        got, answer = await control(port, "clear_halt", body)
        assert got == 403 and "was acted on already (replayed)" in answer["error"]
        await wait_for(lambda: bot.inst.state.state.value == "halted")
    finally:
        await bot.stop()


def test_the_used_ids_are_durable_and_the_verifier_checks_every_field(tmp_path: Path) -> None:
    """The store of spent ids outlives the process; a decision's fields are each checked."""
    verifier = DecisionVerifier([SIGNER.key.public_key()], UsedDecisions(tmp_path))
    token = signed(LIVE_START, record=7)
    decision = verifier.verify(token, LIVE_START, "paper-1")
    assert (decision.record, decision.approvers, decision.requested_by) == (7, ("bob",), "alice")
    verifier.spend(decision)
    fresh = DecisionVerifier([SIGNER.key.public_key()], UsedDecisions(tmp_path))
    with pytest.raises(Exception, match="acted on already"):
        fresh.verify(token, LIVE_START, "paper-1")
    with pytest.raises(Exception, match="trusts no decision key"):
        DecisionVerifier([], None).verify(token, LIVE_START, "paper-1")
    # The reconciler never signs what a bot must refuse.
    with pytest.raises(ValueError, match="its requester"):
        SIGNER.issue(RAMP_PROMOTE, "paper-1", requested_by="a", approvers=["a"], required=1, ttl_seconds=60)
    with pytest.raises(ValueError, match="1 approver"):
        SIGNER.issue(LIVE_START, "paper-1", requested_by="a", approvers=["b"], required=2, ttl_seconds=60)
