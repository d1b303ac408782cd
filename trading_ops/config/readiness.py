"""The readiness verdict's section (paper to live)."""

from __future__ import annotations

from dataclasses import dataclass

from trading_ops.config.fields import bounded, check_optional_duration, check_positive_duration, checked


@dataclass
class ReadinessConfig:
    """What `trading-ops readiness BOT` judges a bot's paper run by (docs/readiness.md): every threshold defaults to
    the seeds' production checklist (phase 2: 3 to 5 days, 120+ hours, with every metric in range; the final
    approval's 99 % uptime and no breach of the daily loss limit)."""

    # The window of the Prometheus criteria when --window is not given.
    window: str = checked("5d", check_positive_duration)
    # Share of the window the bot was scraped (`up`): at least this.
    min_uptime_ratio: float = bounded(0.99, min=0, max=1)
    # Process restarts in the window (deliberate or not; a crash is one too): at most this many.
    max_restarts: int = bounded(0, min=0)
    # Crashes in the window (runs that ended without a clean shutdown): at most this many.
    max_crashes: int = bounded(0, min=0)
    # Resident memory at its peak in the window: at most this (the seeds' 500 MB).
    max_memory_peak_bytes: int = bounded(500_000_000, min=1)
    # Resident memory's growth (its least-squares slope over the window), bytes per day: at most this ("stable").
    max_memory_growth_bytes_per_day: float = bounded(10_000_000.0, min=0)
    # Orders the venue acknowledged, of those sent: at least this (the seeds' trade success over 95 %).
    min_order_success_ratio: float = bounded(0.95, min=0, max=1)
    # Orders the venue rejected, of those sent: at most this.
    max_order_rejection_ratio: float = bounded(0.05, min=0, max=1)
    # Venue errors per request to the venue's API: at most this (the seeds' 0.1 %).
    max_api_error_ratio: float = bounded(0.001, min=0, max=1)
    # 99th percentile of the venue's answer time, seconds: at most this (the seeds' API response under 100 ms).
    max_api_latency_p99_seconds: float = bounded(0.1, min=0)
    # Share of the window each channel to the venue was connected: at least this (the seeds' WebSocket uptime 99 %).
    min_stream_uptime_ratio: float = bounded(0.99, min=0, max=1)
    # Breaches of the daily loss limit and of the drawdown limit in the window: at most this many.
    max_loss_limit_breaches: int = bounded(0, min=0)
    # Critical alerts of this bot that fired in the window: at most this many (the seeds' "no critical warnings").
    max_critical_alerts: int = bounded(0, min=0)
    # The bot's log: its file at its largest (bot.log_file), or what it wrote per day to stderr (the journal or Docker
    # keeps it): at most this (the seeds' "logs under 10 MB"). And it must rotate (bot.log_file_max_bytes, the journal,
    # or bot.log_rotated_by).
    max_log_bytes: int = bounded(10_000_000, min=1)
    # The last verified backup, the last passed restore drill and the last emergency stop (halt, then flatten) of the
    # bot: each at most this long ago.
    backup_verified_within: str = checked("7d", check_positive_duration)
    restore_drill_within: str = checked("7d", check_positive_duration)
    emergency_stop_within: str = checked("7d", check_positive_duration)
    # Prometheus's retention (its --storage.tsdb.retention.time), when known: a ramp stage's window longer than it is
    # refused at load (Prometheus cannot hold that much history). Empty: asked of Prometheus when the verdict runs.
    prometheus_retention: str = checked("", check_optional_duration)
