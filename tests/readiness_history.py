"""Days of a bot's history, as Prometheus would have scraped it, backfilled into a real Prometheus.

`History` describes one bot's run (how long, what went wrong and when); `openmetrics` writes the series of many bots
as OpenMetrics text; `backfill` turns it into TSDB blocks with `promtool tsdb create-blocks-from openmetrics`;
`started_prometheus` starts a real Prometheus on those blocks with enough retention. Used by
tests/readiness/test_readiness.py and benchmarks/readiness/bench_readiness.py.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_server import start_prometheus
from server_process import stop, wait_http

DAY = 86400
MB = 1_000_000
CHANNELS = ("orders", "market_data")
BUCKETS = ("0.001", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "+Inf")
SYMBOL = 'symbol="BTC-USD"'


@dataclass
class History:
    """One bot's history: every knob at its healthy value unless a case changes it. Times are seconds before now."""

    instance: str
    days: float = 5.2
    restarts_at: tuple[float, ...] = ()  # deliberate restarts (a clean shutdown, then a start)
    crashes_at: tuple[float, ...] = ()  # crashes (the next start counts one more in tradingbot_crashes_total)
    down: tuple[tuple[float, float], ...] = ()  # (from, to): not scraped (`up` 0, no other sample)
    unscraped: tuple[tuple[float, float], ...] = ()  # (from, to): no sample at all, `up` neither (Prometheus was down)
    memory_mb: float = 120.0
    memory_growth_mb_per_day: float = 0.0
    memory_spike_mb: float = 0.0  # one sample this much higher, a day ago
    orders_per_min: float = 10.0
    acks_per_min: float = 10.0
    rejects_per_min: float = 0.0
    requests_per_min: float = 100.0
    errors_per_min: float = 0.0
    request_seconds: str = "0.01"  # the bucket every request falls in
    connected_share: float = 1.0  # of each minute, each channel
    daily_loss_breach_at: float | None = None
    drawdown_breach_at: float | None = None
    critical_alert: tuple[float, float] | None = None  # (from, to) it fired
    switch_armed: bool | None = True  # None: no switch series at all (a bot on a venue without one: Binance)
    emergency_stop_at: float | None = 1.5 * DAY  # halt then flatten
    orders: bool = True  # False: the bot exports no order series at all
    log_mb_per_day: float = 1.0  # written to stderr (the journal)
    log_file_mb: float | None = None  # a file log: its size all along (instead of stderr)
    log_rotating: bool = True
    ramp: tuple[tuple[float, int], ...] = ()  # (from, stage): the ramp's stage from then on; the first is the start's
    demotions: tuple[tuple[float, str], ...] = ()  # (at, cause): a fall back of the ramp by itself
    extra: dict[str, str] = field(default_factory=dict)


def openmetrics(histories: list[History], now: float, step: int) -> str:
    """The OpenMetrics text of every history, one family after the other, each series in time order."""
    families: dict[str, list[str]] = {}
    for history in histories:
        for name, labels, points in _series(history, now, step):
            lines = families.setdefault(name, [])
            selector = f'{{job="tradingbot",instance="{history.instance}"{"," + labels if labels else ""}}}'
            lines.extend(f"{name}{selector} {value:.6g} {t}" for t, value in points)
    out = []
    for name, lines in families.items():
        out.append(f"# TYPE {name} unknown")
        out.extend(lines)
    out.append("# EOF")
    return "\n".join(out) + "\n"


def _series(h: History, now: float, step: int) -> Iterator[tuple[str, str, list[tuple[int, float]]]]:
    end = int(now) - step
    start = end - int(h.days * DAY)
    gaps = [(now - a, now - b) for a, b in h.unscraped]
    times = [t for t in range(start - start % step, end, step) if not any(a <= t < b for a, b in gaps)]

    def ago(seconds: float) -> float:
        return now - seconds

    downs = [(ago(a), ago(b)) for a, b in h.down]
    starts = sorted([ago(s) for s in h.restarts_at + h.crashes_at])
    crash_starts = {ago(s) for s in h.crashes_at}

    def up(t: int) -> bool:
        return not any(a <= t < b for a, b in downs)

    def process_start(t: int) -> float:
        begun = float(times[0] - 3600)
        for s in starts:
            if s <= t:
                begun = s
        return begun

    def crashes(t: int) -> float:
        return float(sum(1 for s in crash_starts if s <= t))

    scraped = [t for t in times if up(t)]
    yield "up", "", [(t, 1.0 if up(t) else 0.0) for t in times]

    def per_process(rate_per_min: float) -> list[tuple[int, float]]:
        """A counter growing at `rate_per_min` from 0 at each process start (a restart resets it)."""
        return [(t, rate_per_min * (t - process_start(t)) / 60) for t in scraped]

    yield "process_start_time_seconds", "", [(t, process_start(t)) for t in scraped]
    yield "tradingbot_crashes_total", 'venue="paper"', [(t, crashes(t)) for t in scraped]
    spike_at = ago(DAY)
    memory = []
    for t in scraped:
        value = (h.memory_mb + h.memory_growth_mb_per_day * (t - times[0]) / DAY) * MB
        if h.memory_spike_mb and abs(t - spike_at) < step:
            value += h.memory_spike_mb * MB
        memory.append((t, value))
    yield "process_resident_memory_bytes", "", memory
    vs = 'venue="paper",strategy="demo"'
    yield from _venue_series(h, vs, per_process)
    yield "tradingbot_venue_errors_total", 'venue="paper",error_class="network"', per_process(h.errors_per_min)
    yield "tradingbot_venue_errors_total", 'venue="paper",error_class="other"', per_process(0)
    for limit, at in (("daily_loss", h.daily_loss_breach_at), ("drawdown", h.drawdown_breach_at)):
        points = [(t, 1.0 if at is not None and t >= ago(at) else 0.0) for t in scraped]
        yield "tradingbot_risk_limit_breaches_total", f'{vs},limit="{limit}"', points
    if h.critical_alert is not None:
        a, b = ago(h.critical_alert[0]), ago(h.critical_alert[1])
        labels = 'alertname="TradingBotDown",alertstate="firing",severity="critical",service="tradingbot"'
        yield "ALERTS", labels, [(t, 1.0) for t in times if a <= t < b]
    if h.switch_armed is not None:
        yield (
            "tradingbot_dead_man_switch_armed",
            'venue="paper"',
            [(t, 1.0 if h.switch_armed or t < end - 3600 else 0.0) for t in scraped],
        )
    if h.log_file_mb is not None:
        yield "tradingbot_log_file_bytes", "", [(t, h.log_file_mb * MB) for t in scraped]
    yield "tradingbot_log_written_bytes_total", "", per_process(h.log_mb_per_day * MB / 1440)
    yield "tradingbot_log_rotating", "", [(t, 1.0 if h.log_rotating else 0.0) for t in scraped]
    yield from _ramp_series(h, vs, scraped, ago)
    for command in ("halt", "flatten"):
        at = h.emergency_stop_at
        points = [(t, 1.0 if at is not None and t >= ago(at) else 0.0) for t in scraped]
        yield "tradingbot_control_commands_total", f'command="{command}",source="operator"', points


def _ramp_series(
    h: History, vs: str, scraped: list[int], ago: Callable[[float], float]
) -> Iterator[tuple[str, str, list[tuple[int, float]]]]:
    """The ramp's stage and its falls back by cause, for a history with a ramp."""
    if not h.ramp:
        return
    changes = sorted((ago(at), stage) for at, stage in h.ramp)

    def stage(t: int) -> float:
        return float(next((s for at, s in reversed(changes) if at <= t), changes[0][1]))

    yield "tradingbot_ramp_stage", vs, [(t, stage(t)) for t in scraped]
    for cause in ("loss_limit", "crash_loop", "stream_down"):
        falls = [ago(at) for at, c in h.demotions if c == cause]
        yield (
            "tradingbot_ramp_demotions_total",
            f'{vs},cause="{cause}"',
            [(t, float(sum(1 for at in falls if at <= t))) for t in scraped],
        )


def _venue_series(
    h: History, vs: str, per_process: Callable[[float], list[tuple[int, float]]]
) -> Iterator[tuple[str, str, list[tuple[int, float]]]]:
    """Orders, requests to the venue with their durations, and the channels' connected seconds."""
    if h.orders:
        order = f'{vs},{SYMBOL},side="buy",order_type="limit"'
        yield "tradingbot_orders_submitted_total", order, per_process(h.orders_per_min)
        yield "tradingbot_orders_acknowledged_total", order, per_process(h.acks_per_min)
        if h.rejects_per_min:
            yield (
                "tradingbot_orders_rejected_total",
                f'{vs},{SYMBOL},reason="invalid_order"',
                per_process(h.rejects_per_min),
            )
    for channel in CHANNELS:
        labels = f'venue="paper",channel="{channel}"'
        yield "tradingbot_venue_requests_total", labels, per_process(h.requests_per_min / len(CHANNELS))
        yield "tradingbot_broker_connected_seconds_total", labels, per_process(60 * h.connected_share)
        for le in BUCKETS:
            inside = float(le) >= float(h.request_seconds) if le != "+Inf" else True
            rate = h.requests_per_min / len(CHANNELS) if inside else 0.0
            yield "tradingbot_venue_request_duration_seconds_bucket", f'{labels},le="{le}"', per_process(rate)


def backfill(text: str, data: Path, workdir: Path) -> float:
    """`promtool tsdb create-blocks-from openmetrics` of `text` into `data`; the seconds it took."""
    source = workdir / "history.om"
    source.write_text(text)
    began = time.monotonic()
    result = subprocess.run(
        [
            "promtool",
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            "--max-block-duration=240h",
            "-q",
            str(source),
            str(data),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"promtool could not backfill: {result.stderr.strip()[-500:]}")
    source.unlink()
    return time.monotonic() - began


@contextmanager
def started_prometheus(
    workdir: Path, data: Path, port: int, retention: str = "30d", rule_files: tuple[Path, ...] = ()
) -> Iterator[str]:
    """A real Prometheus on `data` (the backfilled blocks) with `retention`; its URL. Stopped on the way out."""
    config = workdir / "prometheus.yml"
    rules = "".join(f"\n  - {path}" for path in rule_files)
    config.write_text(f"global:\n  scrape_interval: 1m\n  evaluation_interval: 1m\nrule_files:{rules or ' []'}\n")
    proc = start_prometheus(config, data, port, f"--storage.tsdb.retention.time={retention}")
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", proc=proc, deadline=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
