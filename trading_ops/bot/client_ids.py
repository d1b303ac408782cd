"""The client order ids the runtime gives a bot's orders (`<prefix>-<run>-<n>`, trading_ops.bot.orders), told apart
from every other bot's on the same account: the broker on a shared account and the reconciler's `venue` step."""

from __future__ import annotations

import re

# What follows the prefix: the run (its start in milliseconds, in hex) and the order's counter.
RUN_PART = r"-[0-9a-f]+-[0-9]+"


def bot_order_pattern(prefix: str) -> re.Pattern[str]:
    """The client order ids of the bot whose runtime prefix is `prefix`, and no other bot's (bot `a` is not bot
    `a-1`: the run part after the prefix is exactly a hex number and a counter)."""
    return re.compile(re.escape(prefix) + RUN_PART)
