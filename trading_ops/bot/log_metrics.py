"""The bot's log as metrics: how much it wrote, its file's size, and whether something rotates it."""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from trading_ops import logsetup
from trading_ops.bot.metrics import PREFIX


class LogCollector(Collector):
    """Read at every scrape from the log `logsetup.setup` made (nothing when the bot's author set logging up): the
    characters written, the file's size (a file log), and 1 when the log rotates (a file with a size limit, the journal,
    or `rotated_by`, the configuration's word for a Docker logging driver with max-size)."""

    def __init__(self, registry: CollectorRegistry | None, rotated_by: str = "") -> None:
        self.rotated_by = rotated_by
        if registry is not None:
            registry.register(self)

    def collect(self) -> Iterator[Metric]:
        out = logsetup.OUTPUT
        if not out.active:
            return
        written = CounterMetricFamily(
            f"{PREFIX}_log_written_bytes", "Bytes of log lines the bot wrote (its file or stderr) since it started."
        )
        written.add_metric([], out.written_bytes)
        yield written
        if out.file is not None:
            size = GaugeMetricFamily(f"{PREFIX}_log_file_bytes", "Size of the bot's current log file (bot.log_file).")
            try:
                size.add_metric([], os.stat(out.file).st_size)
            except OSError:
                size.add_metric([], 0)
            yield size
        rotating = out.file_max_bytes > 0 if out.file is not None else out.journal or bool(self.rotated_by)
        gauge = GaugeMetricFamily(
            f"{PREFIX}_log_rotating",
            "1 when the bot's log rotates (bot.log_file_max_bytes, the journal, bot.log_rotated_by), else 0.",
        )
        gauge.add_metric([], 1 if rotating else 0)
        yield gauge
