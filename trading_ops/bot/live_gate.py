"""Paper to live: a bot of a live venue starts only with a readiness record in the ledger that allows it (the reconciler
writes one once other people approved a person's live start request: `trading-ops readiness BOT --record`) and the
live_start decision the reconciler signed for that record (bot.live_start_decision_file, fetched with
`trading-ops readiness BOT --decision-out FILE`), which the bot verifies."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trading_ops.config import Config, ConfigError
from trading_ops.db import readiness_records as records
from trading_ops.decisions import LIVE_START, Decision, DecisionRefused, DecisionVerifier

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

# The venue a bot trades on paper (bot.venue); any other is live.
PAPER_VENUE = "paper"
# The live_start decision the bot went live on, in its data dir: a restart on the same decision needs it unexpired no
# more (the go-live was decided once; a new record needs a new decision).
LIVE_FILE = "live-start.json"
DECISION_KEY = "bot.live_start_decision_file"


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
        f"{bot.name} would trade live on {bot.venue} with {what}: ask for its live start with your own token "
        f"(`trading-ops readiness {bot.name} --record --reason TEXT`) and have other people approve it"
    )


def check_live_start(
    config: Config, engine: Engine, keys: list[Ed25519PublicKey] | None = None, data_dir: Path | None = None
) -> Decision | None:
    """ConfigError (exit 2, one line) when the bot may not start live; the verified live_start decision it goes live
    on (logged with its readiness record), or None when it does not go live (paper, no ramp, the check off)."""
    problem = live_start_problem(config, engine)
    if problem is not None:
        raise ConfigError("bot.venue", problem)
    bot = config.bot
    if bot.venue == PAPER_VENUE or not bot.ramp.stages or not bot.ramp.require_readiness_to_go_live:
        return None
    record = records.latest(engine, bot.name)
    assert record is not None  # live_start_problem said it allows live
    decision = live_start_decision(config, record, keys or [], Path(data_dir or bot.data_dir))
    log.warning(
        "going live on %s: readiness record %d (%s, recorded by %s at %s UTC) and %s",
        bot.venue,
        record.id,
        record.verdict,
        record.recorded_by,
        f"{record.recorded_at:%Y-%m-%d %H:%M}",
        decision.summary(),
    )
    return decision


def live_start_decision(
    config: Config, record: records.Record, keys: list[Ed25519PublicKey], data_dir: Path, wall: Any = time.time
) -> Decision:
    """The signed live_start decision of bot.live_start_decision_file, verified for this bot and `record`; unexpired
    unless the bot went live on it before (LIVE_FILE). ConfigError naming what is missing otherwise."""
    bot = config.bot
    how = (
        f"fetch the one the reconciler signed for readiness record {record.id} "
        f"(`trading-ops readiness {bot.name} --decision-out FILE`) and name FILE in {DECISION_KEY}"
    )
    path = bot.live_start_decision_file
    if not path:
        raise ConfigError(
            DECISION_KEY, f"{bot.name} would trade live on {bot.venue} without a signed live_start decision: {how}"
        )
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(DECISION_KEY, f"cannot read {path}: {exc.strerror}") from None
    live_file = data_dir / LIVE_FILE
    try:
        started_on = json.loads(live_file.read_text(encoding="utf-8")).get("decision")
    except (OSError, ValueError, AttributeError):
        started_on = None
    verifier = DecisionVerifier(keys, None, wall)
    try:
        decision = verifier.verify(token, LIVE_START, bot.name, check_time=False)
        if decision.id != started_on:
            decision = verifier.verify(token, LIVE_START, bot.name)
    except DecisionRefused as exc:
        raise ConfigError(DECISION_KEY, f"{exc}: {how}") from None
    if decision.record != record.id:
        raise ConfigError(
            DECISION_KEY,
            f"the live_start decision {decision.id} answers readiness record {decision.record}, the bot's latest is "
            f"{record.id}: {how}",
        )
    if decision.id != started_on:
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = live_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"decision": decision.id, "record": record.id}), encoding="utf-8")
        os.replace(tmp, live_file)
    return decision
