"""A graceful shutdown: named steps run in order within one deadline; what the deadline cut off is logged.

The steps that wait on the venue (a cancel of the open orders, disarming its dead man's switch) share a bounded part of
the deadline, `VENUE_SHARE`: a venue that makes them wait (its rate limit spent, an outage) cuts them off there,
unconfirmed, and the local steps after them (flushing the journal, the final heartbeat with the clean-shutdown
marker, closing the journal, releasing the lock) still run in the rest."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

Step = tuple[str, Callable[[], Awaitable[Any]]]
# The part of the deadline the venue steps may take together (counted from the sequence's start, so a wait for the
# trading step in progress counts too): the rest is the local steps', which take milliseconds when the journal works.
VENUE_SHARE = 0.8


class ShutdownDeadlineExceeded(Exception):
    """The graceful steps did not finish in time; `unfinished` names the step cut off and those never begun."""

    def __init__(self, deadline: float, unfinished: list[str]) -> None:
        super().__init__(f"shutdown deadline of {deadline:g} s passed; unfinished: {', '.join(unfinished)}")
        self.unfinished = unfinished


class OrdersLeftOpen(Exception):
    """A graceful shutdown whose cancel of the open orders could not be confirmed: it ran to its end, and the process
    exits non-zero saying so (the orders may still rest at the venue)."""


class _CutOff(Exception):
    """A venue step that its share of the deadline cut off (already logged)."""


class ShutdownSequence:
    """Steps run in order within `deadline` seconds; a failing step is logged and the next one runs.

    `failed` lists the steps that failed so far (a later step may look at it: the clean-shutdown marker is written
    only when the steps before it succeeded). `unfinished()` names the step running and those after it.
    """

    def __init__(
        self,
        steps: list[Step],
        deadline: float,
        venue_steps: frozenset[str] = frozenset(),
        venue_share: float = VENUE_SHARE,
    ) -> None:
        self.steps = steps
        self.deadline = deadline
        self.failed: list[str] = []
        # Steps that wait on the venue: together they may take `venue_share` of the deadline; one cut off there is
        # failed (unconfirmed) and the next step runs.
        self.venue_steps = venue_steps
        self.venue_share = venue_share
        self.cut_off: list[str] = []
        self._current = 0
        self._exit_timer: threading.Timer | None = None

    def unfinished(self) -> list[str]:
        return [name for name, _ in self.steps[self._current :]]

    async def run(self) -> list[str]:
        """Returns the names of the steps that failed. Raises ShutdownDeadlineExceeded when the deadline passes,
        after logging one line that names the unfinished steps."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.deadline):
                for index, (name, step) in enumerate(self.steps):
                    self._current = index
                    try:
                        if name in self.venue_steps:
                            await self._venue_step(name, step, started + self.deadline * self.venue_share)
                        else:
                            await step()
                        log.info("shutdown: %s done (%.0f ms)", name, (time.monotonic() - started) * 1000)
                    except _CutOff:
                        self.failed.append(name)
                        self.cut_off.append(name)
                    except Exception:
                        log.exception("shutdown: %s failed", name)
                        self.failed.append(name)
                self._current = len(self.steps)
        except TimeoutError:
            unfinished = self.unfinished()
            log.error("shutdown deadline of %g s passed; unfinished: %s", self.deadline, ", ".join(unfinished))
            raise ShutdownDeadlineExceeded(self.deadline, unfinished) from None
        return list(self.failed)

    async def _venue_step(self, name: str, step: Callable[[], Awaitable[Any]], until: float) -> None:
        """Run a venue step until `until` (monotonic) at the latest; raise _CutOff (logged) when it is cut off there."""
        share = self.deadline * self.venue_share
        left = until - time.monotonic()
        if left <= 0:
            log.error(
                "shutdown: %s not attempted: the venue steps' %g s of the deadline are spent (unconfirmed)", name, share
            )
            raise _CutOff
        timeout = asyncio.timeout(left)
        try:
            async with timeout:
                await step()
        except TimeoutError:
            if not timeout.expired():
                raise  # the whole deadline's, not this step's
            log.error(
                "shutdown: %s cut off after the venue steps' %g s of the deadline (unconfirmed); the local steps run",
                name,
                share,
            )
            raise _CutOff from None

    def arm_forced_exit(self, grace: float, status: int) -> None:
        """Backstop for an event loop that cannot even notice its deadline (a step blocking it): `grace` seconds
        after the deadline, a thread logs the unfinished steps and ends the process with `status`, whatever any
        other thread (a stuck database write) is doing. Disarmed by `disarm()`."""
        if self._exit_timer is not None:
            return
        timer = threading.Timer(self.deadline + grace, self._force_exit, args=(status,))
        timer.daemon = True
        timer.name = "shutdown-deadline"
        timer.start()
        self._exit_timer = timer

    def disarm(self) -> None:
        if self._exit_timer is not None:
            self._exit_timer.cancel()
            self._exit_timer = None

    def _force_exit(self, status: int) -> None:
        log.critical(
            "shutdown deadline of %g s passed and the process is still running; unfinished: %s; exiting with %d",
            self.deadline,
            ", ".join(self.unfinished()) or "none (the process itself did not exit)",
            status,
        )
        exit_now(status)


def exit_now(status: int) -> None:
    """Flush the log and end the process at once (threads stuck in a write cannot keep it alive)."""
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):  # nothing left to report a failing handler to
            handler.flush()
    os._exit(status)


async def run_steps(steps: list[Step], deadline: float) -> list[str]:
    """Run `steps` in order within `deadline` seconds; a failing step is logged and the next one runs.

    Returns the names of the steps that failed. Raises ShutdownDeadlineExceeded when the deadline passes.
    """
    return await ShutdownSequence(steps, deadline).run()
