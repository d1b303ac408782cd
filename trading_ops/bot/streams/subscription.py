"""A channel a stream keeps subscribed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Subscription:
    """A channel to keep subscribed: `symbols` for public channels, `cadence` the seconds between its messages on a
    live market (None: a channel that may rightly be quiet), `params` more of the request (depth, snap_trades)."""

    channel: str
    symbols: list[str] = field(default_factory=list)
    cadence: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
