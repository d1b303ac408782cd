"""freqtrade's connection to its venue, per channel, as its log and its trading loop tell it: the library's
`broker_connected`, `broker_disconnects_total`, `broker_reconnects_total` and `venue_errors_total`.

freqtrade keeps its REST API up and its loop turning while every exchange call fails (it logs each failure and carries
on), so neither `/health` nor the API's answers show a lost venue; its log does. A channel goes down with a call on it
that failed for good for a connection reason (its last retry, or a call freqtrade does not retry). It is up again
once freqtrade completed a whole loop iteration after that failure without a new one: the poller sees the loop's end
move past the failure, then move again. A freqtrade that makes no call on a channel for a while (no open trade, no new
candle) says nothing about it: the channel keeps its last state until the loop proves otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from trading_ops.integrations.freqtrade.logs import ExchangeError

CHANNELS = ("orders", "market_data", "account")


@dataclass
class _Channel:
    connected: bool = True
    failed_at: float = 0.0  # the latest connection failure on this channel (Unix time)
    loop_end: float | None = None  # the first loop end seen at or after failed_at


class VenueLink:
    """Channel states and the counters of one freqtrade's venue connection. Counters count what happened while the
    sidecar watched: the log history it finds at its first poll sets the states but is not counted."""

    def __init__(self) -> None:
        self.channels = {name: _Channel() for name in CHANNELS}
        self.errors: dict[str, float] = {}
        self.disconnects: dict[str, float] = {}
        self.reconnects: dict[str, float] = {}

    def connected(self, channel: str) -> bool:
        return self.channels[channel].connected

    @property
    def all_connected(self) -> bool:
        return all(c.connected for c in self.channels.values())

    def restarted(self) -> None:
        """freqtrade started afresh (a restart, reload_config): its new exchange connection has not failed yet."""
        for name, channel in self.channels.items():
            if not channel.connected:
                self.reconnects[name] = self.reconnects.get(name, 0.0) + 1
            self.channels[name] = _Channel()

    def observe(
        self, errors: list[ExchangeError], loop_end: float | None, count: bool = True, since: float | None = None
    ) -> None:
        """Take a poll's new exchange errors (oldest first) and freqtrade's last loop end (Unix time, or None). Errors
        from before `since` (this freqtrade's start: a reload keeps the log of the exchange it replaced) are counted
        but say nothing about the connection it has now."""
        for error in errors:
            if count and error.counted:
                self.errors[error.error_class] = self.errors.get(error.error_class, 0.0) + 1
            if not error.disconnects or (since is not None and error.at < since):
                continue
            channel = self.channels[error.channel]
            if channel.connected and count:
                self.disconnects[error.channel] = self.disconnects.get(error.channel, 0.0) + 1
            channel.connected = False
            channel.failed_at = max(channel.failed_at, error.at)
            channel.loop_end = None
        if loop_end is None:
            return
        for name, channel in self.channels.items():
            if channel.connected or loop_end < channel.failed_at:
                continue
            if channel.loop_end is None:
                channel.loop_end = loop_end  # maybe the iteration that failed: wait for the next one
            elif loop_end > channel.loop_end:  # an iteration that began after the failure, and none failed since
                channel.connected = True
                if count:
                    self.reconnects[name] = self.reconnects.get(name, 0.0) + 1
