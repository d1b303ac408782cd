"""Paper to live: a bot of a live venue starts only with a passing paper readiness verdict, or a person's approval."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from trading_ops.config import Config, ConfigError

# The venue a bot trades on paper (bot.venue); any other is live.
PAPER_VENUE = "paper"
# Where `trading-ops readiness BOT --record` writes the bot's last recorded verdict: the bot's data directory, beside
# its journal and its ramp state (one configuration, the venue switched, reads the same file).
RECORD_FILE = "readiness-{bot}.json"


def record_path(data_dir: str | Path, bot: str) -> Path:
    return Path(data_dir) / RECORD_FILE.format(bot=bot)


def write_record(data_dir: str | Path, bot: str, record: dict[str, Any]) -> Path:
    """Write the bot's record atomically (a crash leaves the old one or the new one, never half)."""
    path = record_path(data_dir, bot)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({**record, "bot": bot, "recorded_at": time.time()}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def live_start_problem(config: Config) -> str | None:
    """Why this bot may not start live now, or None: on paper, without a ramp (bot.ramp.stages), with the check off
    (bot.ramp.require_readiness_to_go_live), or with a recorded passing paper verdict or a person's approval."""
    bot = config.bot
    if bot.venue == PAPER_VENUE or not bot.ramp.stages or not bot.ramp.require_readiness_to_go_live:
        return None
    path = record_path(bot.data_dir, bot.name)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        record = None
    except (OSError, ValueError) as exc:
        return f"{path} is unreadable ({exc})"
    if not isinstance(record, dict):
        record = None
    if record is not None and (record.get("verdict") == "ready" or record.get("approved_by")):
        return None
    what = (
        "no paper readiness verdict recorded" if record is None else f"its recorded verdict is {record.get('verdict')}"
    )
    return (
        f"{bot.name} would trade live on {bot.venue} with {what}: run it on paper until "
        f"`trading-ops readiness {bot.name} --record` passes, or have a person approve "
        f"(`--record --approved-by NAME --reason TEXT`)"
    )


def check_live_start(config: Config) -> None:
    """ConfigError (exit 2, one line) when the bot may not start live."""
    problem = live_start_problem(config)
    if problem is not None:
        raise ConfigError("bot.venue", problem)
