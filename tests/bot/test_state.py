"""The trading state machine: allowed transitions, refused ones, the one-hot gauge and the kill switch."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from trading_ops.bot.state import StateMachine, TradingState, TransitionRefused


def one_hot(registry: CollectorRegistry) -> dict[str, float]:
    return {s.value: registry.get_sample_value("tradingbot_state", {"state": s.value}) or 0.0 for s in TradingState}


def test_starts_active_and_exports_one_hot(registry: CollectorRegistry) -> None:
    sm = StateMachine(registry)
    assert sm.state is TradingState.ACTIVE
    assert one_hot(registry) == {"active": 1, "reduce_only": 0, "paused": 0, "flattening": 0, "halted": 0}


@pytest.mark.parametrize(
    ("commands", "final"),
    [
        (["pause"], "paused"),
        (["pause", "resume"], "active"),
        (["reduce_only"], "reduce_only"),
        (["reduce_only", "resume"], "active"),
        (["flatten"], "flattening"),
        (["flatten", "flatten_done"], "paused"),
        (["halt"], "halted"),
        (["halt", "clear_halt"], "paused"),
        (["halt", "clear_halt", "resume"], "active"),
        (["pause", "pause"], "paused"),
    ],
)
def test_allowed_paths(registry: CollectorRegistry, commands: list[str], final: str) -> None:
    sm = StateMachine(registry)
    for command in commands:
        sm.apply(command)
    assert sm.state.value == final
    assert one_hot(registry)[final] == 1 and sum(one_hot(registry).values()) == 1


@pytest.mark.parametrize("command", ["resume", "pause", "reduce_only"])
def test_nothing_leaves_halted_but_clear_halt(registry: CollectorRegistry, command: str) -> None:
    sm = StateMachine(registry)
    sm.apply("halt")
    with pytest.raises(TransitionRefused, match="clear_halt"):
        sm.apply(command)
    assert sm.state is TradingState.HALTED
    assert registry.get_sample_value("tradingbot_kill_switch_engaged") == 1


def test_a_flatten_while_halted_lets_only_reduce_only_orders_go_and_the_halt_stays(registry: CollectorRegistry) -> None:
    """Halted means no new risk, never "cannot reduce risk": a flatten is accepted, the state stays halted (the kill
    switch engaged), and only reduce-only orders may go until the book is flat; clear_halt ends it too."""
    sm = StateMachine(registry)
    sm.apply("halt", reason="risk limit daily_loss")
    assert sm.apply("flatten") == (TradingState.HALTED, TradingState.HALTED)
    assert sm.state is TradingState.HALTED and sm.reason == "risk limit daily_loss"
    assert sm.flatten_while_halted
    assert registry.get_sample_value("tradingbot_kill_switch_engaged") == 1
    assert (sm.may_submit(reduce_only=False), sm.may_submit(reduce_only=True)) == (False, True)
    with pytest.raises(TransitionRefused, match="clear_halt"):
        sm.apply("resume")
    sm.flatten_done_while_halted()
    assert sm.state is TradingState.HALTED and not sm.flatten_while_halted
    assert sm.order_refusal(reduce_only=True) == "no orders while halted"
    sm.apply("flatten")
    sm.apply("clear_halt")
    assert sm.state is TradingState.PAUSED and not sm.flatten_while_halted


def test_resume_from_flattening_is_refused(registry: CollectorRegistry) -> None:
    sm = StateMachine(registry)
    sm.apply("flatten")
    with pytest.raises(TransitionRefused):
        sm.apply("resume")


def test_transitions_are_counted_only_when_the_state_changes(registry: CollectorRegistry) -> None:
    sm = StateMachine(registry)
    sm.apply("pause")
    sm.apply("pause")
    assert registry.get_sample_value("tradingbot_state_transitions_total", {"state": "paused"}) == 1


@pytest.mark.parametrize(
    ("commands", "plain", "reduce_only"),
    [
        ([], True, True),
        (["reduce_only"], False, True),
        (["flatten"], False, True),
        (["pause"], False, False),
        (["halt"], False, False),
        (["halt", "clear_halt"], False, False),  # lands in paused: still nothing
    ],
)
def test_the_order_gate_of_each_state(
    registry: CollectorRegistry, commands: list[str], plain: bool, reduce_only: bool
) -> None:
    """What a bot may send in each state: the predicate its last gate before the venue checks."""
    sm = StateMachine(registry)
    for command in commands:
        sm.apply(command)
    assert (sm.may_submit(reduce_only=False), sm.may_submit(reduce_only=True)) == (plain, reduce_only)
    assert (sm.order_refusal(reduce_only=False) is None) == plain
    assert (sm.order_refusal(reduce_only=True) is None) == reduce_only


def test_the_refusal_says_what_the_state_still_allows(registry: CollectorRegistry) -> None:
    sm = StateMachine(registry)
    sm.apply("reduce_only")
    assert sm.order_refusal(reduce_only=False) == "only reduce-only orders while reduce_only"
    sm.apply("halt")
    assert sm.order_refusal(reduce_only=True) == "no orders while halted"
