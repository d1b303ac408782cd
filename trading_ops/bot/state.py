"""The trading state machine (active, reduce_only, paused, flattening, halted) and its one-hot gauge."""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger(__name__)


class TradingState(enum.StrEnum):
    ACTIVE = "active"  # trading normally
    REDUCE_ONLY = "reduce_only"  # only orders that shrink a position
    PAUSED = "paused"  # no new orders; working orders stay
    FLATTENING = "flattening"  # closing every position, then paused
    HALTED = "halted"  # kill switch: nothing new trades until an operator clears the halt (a flatten may close)

    @property
    def may_open_positions(self) -> bool:
        return self is TradingState.ACTIVE

    @property
    def may_reduce_positions(self) -> bool:
        return self in (TradingState.ACTIVE, TradingState.REDUCE_ONLY, TradingState.FLATTENING)

    def may_submit(self, reduce_only: bool) -> bool:
        """Whether an order may be sent in this state: any while active; only a reduce-only one (the venue lets it
        only shrink a position) while reduce_only or flattening; none while paused or halted. Cancels are not
        orders: they may always go."""
        return self.may_open_positions or (reduce_only and self.may_reduce_positions)

    def refusal(self, reduce_only: bool) -> str | None:
        """Why this state refuses an order (`may_submit` false), or None."""
        if self.may_submit(reduce_only):
            return None
        if self.may_reduce_positions:
            return f"only reduce-only orders while {self.value}"
        return f"no orders while {self.value}"


S = TradingState
# command -> (states it may be given in, state it leads to)
TRANSITIONS: dict[str, tuple[frozenset[TradingState], TradingState]] = {
    "pause": (frozenset({S.ACTIVE, S.REDUCE_ONLY, S.PAUSED, S.FLATTENING}), S.PAUSED),
    "resume": (frozenset({S.PAUSED, S.REDUCE_ONLY, S.ACTIVE}), S.ACTIVE),
    "reduce_only": (frozenset({S.ACTIVE, S.PAUSED, S.REDUCE_ONLY}), S.REDUCE_ONLY),
    # Halted means no new risk, never "cannot reduce risk": a flatten given while halted closes the positions and
    # the halt stays (StateMachine.flatten_while_halted), so it leads to flattening from every other state only.
    "flatten": (frozenset({S.ACTIVE, S.REDUCE_ONLY, S.PAUSED, S.FLATTENING, S.HALTED}), S.FLATTENING),
    "flatten_done": (frozenset({S.FLATTENING}), S.PAUSED),
    "halt": (frozenset(S), S.HALTED),
    # Leaving the kill switch is its own explicit command, and lands in paused, never straight in active.
    "clear_halt": (frozenset({S.HALTED}), S.PAUSED),
}


class TransitionRefused(Exception):
    """A command the current state does not allow (the control API answers 409)."""

    def __init__(self, command: str, state: TradingState, hint: str = "") -> None:
        message = f"'{command}' is not allowed while {state.value}"
        super().__init__(message + (f"; {hint}" if hint else ""))
        self.command = command
        self.state = state


class StateMetrics:
    """`{prefix}_state{state}` (one-hot), `{prefix}_kill_switch_engaged` and `{prefix}_state_transitions_total`: the
    trading state as metrics, for the StateMachine and for a bot whose state is kept elsewhere (a Nautilus node)."""

    def __init__(self, registry: CollectorRegistry | None, prefix: str = "tradingbot") -> None:
        self._gauge = Gauge(
            f"{prefix}_state",
            "Trading state of the bot, one-hot: 1 for the current state.",
            ["state"],
            registry=registry,
        )
        self._kill_switch = Gauge(
            f"{prefix}_kill_switch_engaged", "1 while the kill switch holds the bot halted.", registry=registry
        )
        self._transitions = Counter(
            f"{prefix}_state_transitions", "Transitions into each trading state.", ["state"], registry=registry
        )
        for state in TradingState:
            self._transitions.labels(state.value)

    def transition(self, state: TradingState) -> None:
        """Count a transition into `state` and show it as the current one."""
        self._transitions.labels(state.value).inc()
        self.show(state)

    def show(self, state: TradingState) -> None:
        """Export `state` as the current one."""
        for each in TradingState:
            self._gauge.labels(each.value).set(1 if each is state else 0)
        self._kill_switch.set(1 if state is TradingState.HALTED else 0)


class StateMachine:
    """Holds the bot's trading state, validates every transition and exports it as metrics."""

    def __init__(
        self,
        registry: CollectorRegistry | None,
        initial: TradingState = TradingState.ACTIVE,
        prefix: str = "tradingbot",
    ) -> None:
        self._lock = threading.Lock()
        self._state = initial
        self.reason = "start"
        # Who asked for the current state over the control API (`token 'NAME' from ADDRESS`); "" for the bot itself.
        self.by = ""
        # A flatten given while halted, not done yet: the runtime closes the positions with reduce-only orders (the
        # only orders a halted bot sends) and the halt stays. Cleared when the book is flat or the halt is left.
        self.flatten_while_halted = False
        # Called as listener(before, after, reason, by) after each change of state (the runtime journals them).
        self._listeners: list[Callable[[TradingState, TradingState, str, str], None]] = []
        self._metrics = StateMetrics(registry, prefix)
        self._metrics.show(self._state)

    @property
    def state(self) -> TradingState:
        return self._state

    def may_submit(self, reduce_only: bool) -> bool:
        """The gate a bot checks right before an order leaves: see TradingState.may_submit. Read it after the last
        await before sending, never from a state read earlier (a halt may have come in between)."""
        return self.order_refusal(reduce_only) is None

    def order_refusal(self, reduce_only: bool) -> str | None:
        """Why the current state refuses an order, or None. Halted with a flatten under way, reduce-only orders go."""
        if reduce_only and self.flatten_while_halted and self._state is S.HALTED:
            return None
        return self._state.refusal(reduce_only)

    def add_listener(self, listener: Callable[[TradingState, TradingState, str, str], None]) -> None:
        """Call `listener(before, after, reason, by)` after every change of state, whoever made it (`by`: the
        control API's caller, "" for the bot's own changes)."""
        self._listeners.append(listener)

    def can(self, command: str) -> bool:
        allowed, _ = TRANSITIONS[command]
        return self._state in allowed

    def apply(self, command: str, reason: str = "", by: str = "") -> tuple[TradingState, TradingState]:
        """Carry out a transition command; returns (before, after). Raises TransitionRefused. `by`: who asked, when
        it came through the control API."""
        if command not in TRANSITIONS:
            raise KeyError(command)
        allowed, target = TRANSITIONS[command]
        with self._lock:
            before = self._state
            if before not in allowed:
                hint = "clear the halt first with 'clear_halt'" if before is S.HALTED else ""
                raise TransitionRefused(command, before, hint)
            if command == "flatten" and before is S.HALTED:
                target = S.HALTED  # the halt stays; the runtime closes the positions
                if not self.flatten_while_halted:
                    self.flatten_while_halted = True
                    log.warning("flatten while halted (%s): closing every position, the halt stays", reason or command)
            elif before is S.HALTED and target is not S.HALTED:
                self.flatten_while_halted = False
            if before is not target:
                self._state = target
                self.reason = reason or command
                self.by = by
                self._metrics.transition(target)
                log.warning(
                    "trading state %s -> %s (%s)%s", before.value, target.value, self.reason, f" by {by}" if by else ""
                )
            reason = self.reason
        if before is not target:
            for listener in self._listeners:
                listener(before, target, reason, by)
        return before, target

    def flatten_done_while_halted(self) -> None:
        """The flatten given while halted closed every position: the bot stays halted, sending nothing."""
        with self._lock:
            if self.flatten_while_halted:
                self.flatten_while_halted = False
                log.warning("flatten while halted done: every position closed, the halt stays")
