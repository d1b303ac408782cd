"""Paper to live: a bot of a live venue starts only with a passing paper readiness verdict, or a person's approval,
recorded in the ledger (`trading-ops readiness BOT --record`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trading_ops.config import Config, ConfigError
from trading_ops.db import readiness_records as records

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

# The venue a bot trades on paper (bot.venue); any other is live.
PAPER_VENUE = "paper"


def live_start_problem(config: Config, engine: Engine) -> str | None:
    """Why this bot may not start live now, or None: on paper, without a ramp (bot.ramp.stages), with the check off
    (bot.ramp.require_readiness_to_go_live), or with a recorded passing paper verdict or a person's approval. The
    record is read from the ledger, the database the bot shares with the reconciler (`engine`)."""
    bot = config.bot
    if bot.venue == PAPER_VENUE or not bot.ramp.stages or not bot.ramp.require_readiness_to_go_live:
        return None
    try:
        record = records.latest(engine, bot.name)
    except records.LedgerUnreachable as exc:
        return f"{bot.name} would trade live on {bot.venue} and cannot read its readiness record: {exc}"
    if record is not None and record.allows_live:
        return None
    what = (
        "no paper readiness verdict recorded in the ledger"
        if record is None
        else f"its recorded verdict is {record.verdict} "
        f"({record.recorded_at:%Y-%m-%d %H:%M} UTC by {record.recorded_by})"
    )
    return (
        f"{bot.name} would trade live on {bot.venue} with {what}: run it on paper until "
        f"`trading-ops readiness {bot.name} --record` passes, or have a person approve "
        f"(`--record --approved-by NAME --reason TEXT`)"
    )


def check_live_start(config: Config, engine: Engine) -> None:
    """ConfigError (exit 2, one line) when the bot may not start live."""
    problem = live_start_problem(config, engine)
    if problem is not None:
        raise ConfigError("bot.venue", problem)
