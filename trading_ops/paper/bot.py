"""The paper-trading bot: the demo strategy on the simulated venue, on the bot runtime like any other bot."""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from trading_ops.bot.control_commands import CENT
from trading_ops.bot.runtime import BotRuntime, control_tokens, risk_limits
from trading_ops.bot.schedule import startup_retry_delay
from trading_ops.config import Config
from trading_ops.paper.chaos import Chaos
from trading_ops.paper.strategy import DemoStrategy
from trading_ops.paper.streaming import StreamingPaperBroker
from trading_ops.paper.venue import PaperVenue
from trading_ops.scopes import TokenSet

log = logging.getLogger(__name__)

VENUE_STATE_FILE = "paper-venue.json"
# The paper venue drains its events exactly before each snapshot (Broker.drain_events), so the confirmation
# snapshot of a reconciliation needs only a moment; a real venue's stream needs the engine's default.
CONFIRM_DELAY_SECONDS = 0.05


def make_venue(config: Config, autosave_path: Path | None = None) -> PaperVenue:
    p = config.paper
    return PaperVenue.from_config(
        p, list(p.symbols), seed=p.seed or secrets.randbits(32), venue=config.bot.venue, autosave_path=autosave_path
    )


def load_or_make_venue(config: Config, state_path: Path) -> PaperVenue:
    """The venue outlives the bot (as a real one does): reload its state and let it catch up on the time the bot
    was away, filling resting orders that crossed meanwhile."""
    venue = make_venue(config, autosave_path=state_path)
    if state_path.exists():
        saved_at = venue.load_state(state_path)
        away = max(0.0, (datetime.now(UTC) - saved_at).total_seconds())
        fills = venue.advance(away)
        log.info("paper venue state loaded from %s; %.1f s caught up, %d fills meanwhile", state_path, away, len(fills))
    return venue


class PaperBot(BotRuntime):
    """The demo strategy on the paper venue (its state kept in the data directory between runs), with the fault
    injection commands when `chaos` is set. Everything else is the runtime's."""

    def __init__(
        self,
        config: Config,
        *,
        token: str | TokenSet | None = None,
        venue: PaperVenue | None = None,
        registry: CollectorRegistry | None = None,
        engine: Any = None,
        chaos: bool = False,
    ) -> None:
        paper = config.paper
        self.venue_state_path = Path(config.bot.data_dir) / f"{config.bot.name}-{VENUE_STATE_FILE}"

        def open_venue() -> PaperVenue | StreamingPaperBroker:
            # Called once the single-instance lock is held: only then may the venue file be read.
            paper_venue = venue if venue is not None else load_or_make_venue(config, self.venue_state_path)
            if paper.stream:  # its events over the venue's push channel, REST polls beside them
                return StreamingPaperBroker(paper_venue, poll_seconds=paper.stream_poll_seconds)
            return paper_venue

        super().__init__(
            config,
            open_venue,
            DemoStrategy(paper, seed=paper.seed or None),
            symbols=paper.symbols,
            quote_asset=paper.quote_asset,
            loop_interval=paper.loop_interval_seconds,
            token=token,
            registry=registry,
            engine=engine,
            venue_task=lambda: self.paper_venue.run(paper.tick_interval_seconds),
            confirm_delay_seconds=CONFIRM_DELAY_SECONDS,
            # The paper bot is a whole process of its own, so it may tune process-wide settings.
            own_process=True,
            # The demo's daily loss limit when bot.risk sets none (paper.daily_loss_limit, where it used to live).
            limits=risk_limits(config, daily_loss_default=paper.daily_loss_limit),
        )
        self.chaos: Chaos | None = None
        if chaos:
            self.chaos = Chaos(
                self.inst.control,
                self.paper_venue,
                symbols=self.symbols,
                journal=self.journal,
                book=self.book,
                hang=self.hang,
                daily_loss_limit=self.risk.limits.daily_loss,
                data_dir=self.data_dir,
                stream=self.broker.push if isinstance(self.broker, StreamingPaperBroker) else None,
            )
            self.on_stop(self.chaos.clear)
        self.inst.control.add_status(lambda: {"chaos": self.chaos.status() if self.chaos is not None else None})
        if isinstance(self.broker, StreamingPaperBroker):
            streaming = self.broker
            self.inst.control.add_status(lambda: {"stream": streaming.status()})

    @property
    def paper_venue(self) -> PaperVenue:
        """The simulated venue (what fault injection drives): the broker itself, or the one it streams from."""
        if isinstance(self.broker, StreamingPaperBroker):
            return self.broker.paper
        assert isinstance(self.broker, PaperVenue)
        return self.broker


__all__ = ["CENT", "PaperBot", "control_tokens", "make_venue", "startup_retry_delay"]
