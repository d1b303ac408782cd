"""The readiness verdict of bots: every criterion measured (Prometheus, the operations' records, Alertmanager's
routing), each with its value, threshold, window and source; `ready` only when every one passes on real data."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from trading_ops.clients.alertmanager import AlertmanagerClient, AlertmanagerError
from trading_ops.clients.prometheus import PrometheusClient, PrometheusError
from trading_ops.config import BotEntryConfig, Config
from trading_ops.durations import parse_duration
from trading_ops.ops.backup import STATE_FILE as BACKUP_STATE_FILE
from trading_ops.ops.restore_drill import DRILL_STATE_FILE
from trading_ops.ops.state import OpsState
from trading_ops.readiness import routing
from trading_ops.readiness.criteria import (
    CRITERIA,
    PromCriterion,
    compare,
    history_query,
    instances_selector,
    not_applicable,
    whole,
)

# n/a: the criterion does not apply to the bot's venue or kind (criteria.not_applicable): neither failing nor missing.
Status = Literal["pass", "fail", "unknown", "n/a"]
READY, NOT_READY, UNKNOWN = "ready", "not ready", "unknown"
DAY = 86400.0
# A query that failed (Prometheus unreachable for a moment, a connection dropped, its timeout on a loaded host) is
# asked again after QUERY_RETRY_SECONDS, up to QUERY_ATTEMPTS in all: one lost request must not make a criterion, or
# the whole verdict (the history query), `unknown`. A Prometheus that stays down still is, a few seconds later.
QUERY_ATTEMPTS = 3
QUERY_RETRY_SECONDS = 1.0

T = TypeVar("T")


@dataclass
class Result:
    """One criterion of one bot."""

    name: str
    what: str
    status: Status
    value: float | None
    op: str
    threshold: float
    unit: str
    window: str
    source: str
    detail: str = ""


@dataclass
class Verdict:
    bot: str
    instance: str
    window: str
    verdict: str
    failing: list[str]
    missing: list[str]
    results: list[Result]
    evaluated_at: float
    queries: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        lines = [f"{self.bot} ({self.instance}): {self.verdict.upper()} over {self.window}"]
        if self.failing:
            lines.append(f"  failing: {', '.join(self.failing)}")
        if self.missing:
            lines.append(f"  missing data: {', '.join(self.missing)}")
        for r in self.results:
            value = "-" if r.value is None else _show(r.value, r.unit)
            threshold = _show(r.threshold, r.unit)
            note = f"  ({r.detail})" if r.detail else ""
            lines.append(
                f"  {r.status.upper():7} {r.name:20} {value:>14} {r.op} {threshold:<12} over {r.window:6} "
                f"[{r.source.splitlines()[0][:60]}]{note}"
            )
        return "\n".join(lines)


def _show(value: float, unit: str) -> str:
    if unit == "ratio":
        return f"{value * 100:.3g}%"
    if unit in ("bytes", "bytes/day"):
        return f"{value / 1e6:.4g} MB" + ("/day" if unit == "bytes/day" else "")
    if unit == "seconds":
        return f"{value * 1000:.4g} ms"
    if unit == "days":
        return f"{value:.3g} d"
    return f"{value:g}"


@dataclass
class _Counter:
    queries: int = 0


@dataclass
class _Context:
    config: Config
    window: str
    now: float
    prometheus: PrometheusClient
    alertmanager: AlertmanagerClient | None
    counter: _Counter = field(default_factory=_Counter)
    # The moment Prometheus judges at: the `now` a caller gave (a verdict of a past moment), else Prometheus's own.
    at: float | None = None

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """`expr` at the verdict's moment; one query as counted, however often it was asked."""
        return await self.ask(lambda: self.prometheus.query(expr, self.at))

    async def ask(self, request: Callable[[], Awaitable[T]]) -> T:
        """One request of Prometheus, counted once and asked again after a failure (QUERY_ATTEMPTS)."""
        self.counter.queries += 1
        for _ in range(QUERY_ATTEMPTS - 1):
            try:
                return await request()
            except PrometheusError:
                await asyncio.sleep(QUERY_RETRY_SECONDS)
        return await request()


async def evaluate(
    config: Config,
    bots: list[BotEntryConfig],
    window: str,
    prometheus: PrometheusClient,
    alertmanager: AlertmanagerClient | None,
    *,
    now: float | None = None,
) -> list[Verdict]:
    """The verdict of each bot over `window`: one query per criterion for all of them, asked at once. Judged now, or
    as of `now` (Unix seconds) when given: every Prometheus query is evaluated at that moment, and the operations'
    records are aged to it."""
    ctx = _Context(config, window, time.time() if now is None else now, prometheus, alertmanager, at=now)
    instances = [b.instance for b in bots]
    sel = instances_selector(instances)
    results: dict[str, list[Result]] = {i: [] for i in instances}

    history: set[str] | None
    history_problem = ""
    try:
        history = {_instance(s) for s in await ctx.query(history_query(sel, window))}
    except PrometheusError as exc:
        history, history_problem = None, f"Prometheus: {exc}"
    # The criteria's queries at once: Prometheus evaluates them side by side.
    answers = await asyncio.gather(*(_prometheus_criterion(ctx, c, sel, instances, history) for c in CRITERIA))
    for answer in answers:
        for instance, result in answer.items():
            if history is None and result.status != "unknown":
                result.status, result.value = "unknown", None
            if history is None:
                result.detail = history_problem
            results[instance].append(result)
    for bot in bots:
        for result in results[bot.instance]:
            reason = not_applicable(result.name, bot.venue.exchange, bot.kind)
            if reason:
                result.status, result.value, result.detail = "n/a", None, reason
    for result in _operations(ctx):
        for instance in instances:
            results[instance].append(result)
    for instance, rows in (await _alert_routing(ctx, instances)).items():
        results[instance].extend(rows)
    verdicts = []
    for bot in bots:
        rows = results[bot.instance]
        failing = [r.name for r in rows if r.status == "fail"]
        missing = [r.name for r in rows if r.status == "unknown"]
        verdict = NOT_READY if failing else UNKNOWN if missing else READY
        verdicts.append(
            Verdict(bot.name, bot.instance, window, verdict, failing, missing, rows, ctx.now, ctx.counter.queries)
        )
    return verdicts


def _instance(sample: dict[str, Any]) -> str:
    return str((sample.get("metric") or {}).get("instance", ""))


async def _prometheus_criterion(
    ctx: _Context, c: PromCriterion, sel: str, instances: list[str], history: set[str] | None
) -> dict[str, Result]:
    window = c.window(ctx.config.readiness) if c.window is not None else ctx.window
    expr = c.expr(sel, window)
    threshold = float(c.threshold(ctx.config.readiness))

    def result(status: Status, value: float | None, detail: str = "") -> Result:
        return Result(c.name, c.what, status, value, c.op, threshold, c.unit, window, expr, detail)

    try:
        samples = await ctx.query(expr)
    except PrometheusError as exc:
        return {i: result("unknown", None, f"Prometheus: {exc}") for i in instances}
    by_instance: dict[str, list[tuple[dict[str, Any], float]]] = {}
    for sample in samples:
        metric = sample.get("metric") or {}
        try:
            value = float(sample["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        by_instance.setdefault(str(metric.get("instance", "")), []).append((metric, value))
    out = {}
    for instance in instances:
        if c.window is None and history is not None and instance not in history:
            out[instance] = result("unknown", None, f"no history at the start of the {window} window")
            continue
        series = by_instance.get(instance, [])
        values = [v for _, v in series]
        if c.expect is not None:
            label, wanted = c.expect
            seen = {str(m.get(label)): v for m, v in series}
            values = [seen.get(w, 0.0) for w in wanted] if series else []
        if not values:
            if c.when_absent is None:
                out[instance] = result("unknown", None, "no series")
                continue
            values = [c.when_absent]
        if c.reduce == "count":
            value = float(len(series))
        elif any(math.isnan(v) for v in values):
            out[instance] = result("unknown", None, "no samples to compute it from (NaN)")
            continue
        else:
            value = min(values) if c.reduce == "min" else max(values)
        if c.whole:
            value = whole(value)
        out[instance] = result("pass" if compare(c.op, value, threshold) else "fail", value)
    return out


def _operations(ctx: _Context) -> list[Result]:
    """The operations' records, the same for every bot: the last verified backup and the last passed drill."""
    readiness, backup = ctx.config.readiness, ctx.config.backup
    directory = Path(backup.directory)
    checks = (
        (
            "backup_verified",
            "days since a backup was last verified",
            directory / BACKUP_STATE_FILE,
            "last_verify_success_timestamp_seconds",
            readiness.backup_verified_within,
        ),
        (
            "restore_drill",
            "days since a restore drill last passed",
            directory / DRILL_STATE_FILE,
            "last_success_timestamp_seconds",
            readiness.restore_drill_within,
        ),
    )
    results = []
    for name, what, path, key, within in checks:
        limit = parse_duration(within) / DAY
        source = f"{path}: {key}"
        stamp = OpsState(path).read().get(key)
        if not isinstance(stamp, int | float) or isinstance(stamp, bool):
            results.append(Result(name, what, "fail", None, "<=", limit, "days", within, source, "never"))
            continue
        age = max(0.0, (ctx.now - float(stamp)) / DAY)
        status: Status = "pass" if age <= limit else "fail"
        results.append(Result(name, what, status, age, "<=", limit, "days", within, source))
    return results


async def _alert_routing(ctx: _Context, instances: list[str]) -> dict[str, list[Result]]:
    """Every alert Prometheus evaluates reaches a receiver that notifies (critical and warning), and names its
    runbook; each value is how many do not."""
    runbooks = Result(
        "runbooks", "alerts without their runbook", "unknown", None, "<=", 0, "count", "now", "Prometheus /api/v1/rules"
    )
    routed = Result(
        "alerts_routed",
        "alerts that reach no notifying receiver",
        "unknown",
        None,
        "<=",
        0,
        "count",
        "now",
        "Prometheus /api/v1/rules, Alertmanager /api/v2/status",
    )
    alerting: list[dict[str, Any]] = []
    try:
        alerting = [r for r in await ctx.ask(ctx.prometheus.rules) if r.get("type") == "alerting"]
    except PrometheusError as exc:
        routed.detail = runbooks.detail = f"Prometheus: {exc}"
    else:
        if not alerting:
            routed.detail = runbooks.detail = "Prometheus has no alerting rules"
        else:
            missing_runbooks = routing.alerts_without_runbook(alerting)
            runbooks.value = float(len(missing_runbooks))
            runbooks.status = "fail" if missing_runbooks else "pass"
            runbooks.detail = ", ".join(missing_runbooks[:5])
    config: dict[str, Any] | None = None
    if alerting and ctx.alertmanager is None:
        routed.detail = "no Alertmanager configured"
    elif alerting and ctx.alertmanager is not None:
        try:
            ctx.counter.queries += 1
            config = routing.load(await ctx.alertmanager.config_text())
        except (AlertmanagerError, routing.RoutingError) as exc:
            routed.detail = f"Alertmanager: {exc}"
    out = {}
    for instance in instances:
        mine = Result(**asdict(routed))
        if config is not None:
            try:
                unrouted = routing.unrouted_alerts(config, alerting, {"instance": instance})
            except routing.RoutingError as exc:
                mine.detail = f"Alertmanager's configuration: {exc}"
            else:
                mine.value = float(len(unrouted))
                mine.status = "fail" if unrouted else "pass"
                mine.detail = ", ".join(unrouted[:5])
        out[instance] = [mine, runbooks]
    return out
