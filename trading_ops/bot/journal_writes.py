"""The journal writes a bot makes in the background, one set the shutdown's flush waits for."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from trading_ops.bot.control import Caller, ControlPlane
from trading_ops.bot.journal import Journal
from trading_ops.bot.recovery_store import RecoveryStore
from trading_ops.bot.state import StateMachine, TradingState

log = logging.getLogger(__name__)


class JournalWrites:
    """Background writes to the journal (a heartbeat probe, a state transition, the instance lock's confirmation):
    each runs as a task of its own, and `wait` returns once every one started so far has ended."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, write: Coroutine[Any, Any, None], name: str | None = None) -> asyncio.Task[None]:
        task = asyncio.create_task(write, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks)


def command_event(command: str, caller: Caller, outcome: str, detail: dict[str, Any]) -> dict[str, Any]:
    """The fields of a journaled control command (what `control_events` serves back): who sent it, from where, and
    how it ended, with the command's own detail (the state before and after, the decision it acted on)."""
    return {
        "command": command,
        "principal": caller.token,
        "source": caller.source,
        "peer": caller.peer,
        "outcome": outcome,
        **detail,
    }


def journal_transitions(
    state: StateMachine,
    writes: JournalWrites,
    journal: Journal,
    store: RecoveryStore,
    run_id: Callable[[], int | None],
) -> None:
    """Every change of trading state goes to the journal with its reason and, for a control command, who asked from
    where (a loss-limit halt is found there at the next start). Written in the background, in order with the journal's
    other writes; none before the run has its id (the start's heartbeat) or outside an event loop."""

    def transition(before: TradingState, after: TradingState, reason: str, by: str) -> None:
        run = run_id()
        if run is None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return

        async def write() -> None:
            try:
                await journal.call(store.record_transition, run, before.value, after.value, reason, by)
            except Exception:
                log.exception("journaling the state transition %s -> %s failed", before.value, after.value)

        writes.spawn(write())

    state.add_listener(transition)


def journal_commands(
    control: ControlPlane,
    writes: JournalWrites,
    journal: Journal,
    store: RecoveryStore,
    run_id: Callable[[], int | None],
) -> None:
    """Every control command an authenticated caller sent (`status` aside) goes to the journal with the principal that
    authenticated it (the token's name), the source it was counted under, the peer, what came of it and the signed
    decision it acted on (who asked, who approved): a `resume` or a `clear_halt` sent straight to the bot is recorded
    at the bot, whoever holds its token. Written in the background, in order with the journal's other writes; the
    control API answers once it is written (trading_ops.bot.server)."""

    def record(command: str, caller: Caller, outcome: str, detail: dict[str, Any]) -> asyncio.Task[None] | None:
        run = run_id()
        if run is None:
            return None
        fields = command_event(command, caller, outcome, detail)

        async def write() -> None:
            try:
                await journal.call(store.record_command, run, fields)
            except Exception:
                log.exception("journaling the control command %s by %s failed", command, caller)

        return writes.spawn(write())

    control.on_command(record)
