"""What else makes a ramp fall back by itself besides a loss-limit breach: a crash loop, a channel down too long."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from trading_ops.bot.ramp import Ramp
from trading_ops.config import RampConfig
from trading_ops.durations import parse_duration

log = logging.getLogger(__name__)


class RampWatch:
    """Falls the ramp back a stage on a crash loop (judged at start, from the journal's runs) and on a channel to the
        venue down `stream_down_for` without a break (judged every loop step, from the broker's connection events): once
        per crash loop (every crash since the stage was taken counts, the run live at that moment included; a demotion
    resets it) and once per outage
        (from a first channel down until every channel is back)."""

    def __init__(self, ramp: Ramp, config: RampConfig, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.ramp = ramp
        self.crash_loop_crashes = config.crash_loop_crashes
        self.crash_loop_window = parse_duration(config.crash_loop_window)
        self.stream_down_for = parse_duration(config.stream_down_for)
        self.clock = monotonic
        self._down_since: dict[str, float] = {}  # channel -> when it went down (monotonic)
        self._demoted = False  # the current outage (from a first channel down to every channel back) demoted already

    def crash_loop_since(self, wall_now: float) -> float:
        """From when crashes count towards a crash loop (wall clock): the window, not before the current stage."""
        return max(wall_now - self.crash_loop_window, self.ramp.since)

    def crash_loop_live_at(self, wall_now: float) -> float | None:
        """When the current stage was taken, if within the window: the run live at that moment counts too (it crashed
        after the promotion, though it started before); None when the window starts later."""
        return self.ramp.since if self.ramp.since >= wall_now - self.crash_loop_window else None

    def after_start(self, crashes: int) -> bool:
        """`crashes`: runs that crashed since crash_loop_since(), the one just found and the one live when the stage was
        taken included. True if it demoted."""
        if not self.crash_loop_crashes or crashes < self.crash_loop_crashes:
            return False
        window = f"{self.crash_loop_window / 60:g} min"
        stage = self.ramp.stage.name if self.ramp.stage is not None else ""
        return self.ramp.demote(
            f"crash loop: {crashes} crashes within {window} at stage {stage}, the run live when it was taken included "
            f"(bot.ramp.crash_loop_crashes: {self.crash_loop_crashes})",
            cause="crash_loop",
        )

    def connection(self, channel: str, connected: bool) -> None:
        if connected:
            self._down_since.pop(channel, None)
            if not self._down_since:  # every channel back: the outage is over
                self._demoted = False
        else:
            self._down_since.setdefault(channel, self.clock())

    def check(self) -> bool:
        """Every loop step: a channel down past stream_down_for demotes once for the outage (one fall however many
        channels it took down, until every channel is back). True if it demoted."""
        if self._demoted or not self._down_since:
            return False
        channel, since = min(self._down_since.items(), key=lambda item: item[1])
        down = self.clock() - since
        if down < self.stream_down_for:
            return False
        self._demoted = True
        return self.ramp.demote(
            f"stream down: the {channel} channel to the venue has been down {down:.0f} s "
            f"(bot.ramp.stream_down_for: {self.stream_down_for:g} s)",
            cause="stream_down",
        )
