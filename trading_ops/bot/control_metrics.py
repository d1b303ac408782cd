"""The control API's families of BotMetrics: commands asked for, by whom, and those not carried out."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter

from trading_ops.bot.metrics_base import PREFIX, MetricsBase


class ControlMetrics(MetricsBase):
    """Control commands received (and state changes the risk limits made), by who asked, and failures by reason. A
    part of BotMetrics (see MetricsBase)."""

    if not TYPE_CHECKING:  # mypy would hold the part to an empty __slots__; BotMetrics holds its attributes
        __slots__ = ()

    _commands: Counter
    _command_failures: Counter

    def _control_metrics(self) -> None:
        self._commands = Counter(
            f"{PREFIX}_control_commands",
            "Control commands received by the control API, and state changes the bot's risk limits made, by who "
            "asked (source: the token's name; with the single control_token operator, reconciler or maintenance; "
            "risk; unauthenticated).",
            ["command", "source"],
            registry=self.registry,
        )
        self._command_failures = Counter(
            f"{PREFIX}_control_command_failures",
            "Control commands that were not carried out, by reason.",
            ["command", "reason"],
            registry=self.registry,
        )

    # -- control API --------------------------------------------------------------------------------------
    def control_commands_known(self, commands: tuple[str, ...], sources: tuple[str, ...]) -> None:
        """Export these commands' counters at 0 for each source from the start: increase() over a series that
        appears at 1 is 0, so the first pause or halt would be missing from the boards."""
        for command in commands:
            for source in sources:
                self._commands.labels(command, source)

    def control_command(self, command: str, source: str) -> None:
        """A control command asked for, and by whom (one of trading_ops.bot.control's SOURCE_* values)."""
        self._commands.labels(command, source).inc()

    def control_failure(self, command: str, reason: str) -> None:
        self._command_failures.labels(command, reason).inc()
