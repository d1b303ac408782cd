"""The live status line of `up`: alerts firing (most severe first), the reconciler's open episodes, its pause and
open circuits, and its last action."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

WATCHDOG = "Watchdog"
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=2)
ALERTS_QUERY = "/api/v2/alerts?active=true&silenced=false&inhibited=false&unprocessed=false"
EPISODES_LISTED = 20
NAMES_SHOWN = 3
# Alerts are listed most severe first (a critical one is never hidden behind "+N more"); unknown severities last.
SEVERITY_ORDER = ("critical", "warning", "info")
# What the reconciler's own /metrics says about its gates (the episodes API does not).
PAUSED_METRIC = "tradingops_paused"
CIRCUIT_METRIC = "tradingops_circuit_open"
# Clear to the end of the line after rewriting it in place.
CLEAR_EOL = "\x1b[K"


@dataclass
class Snapshot:
    alerts: list[str] | None = None  # names of the alerts firing (Watchdog aside); None: nobody could say
    alerts_from: str = ""  # the URLs of the Alertmanagers that answered (comma-separated), or "prometheus"
    severities: dict[str, str] = field(default_factory=dict)  # alert name -> its most severe `severity` label
    paused: bool | None = None
    open_circuits: list[str] = field(default_factory=list)
    watchdog: bool | None = None
    open_episodes: int | None = None
    last_action: str | None = None
    down: list[str] = field(default_factory=list)
    bots: int | None = None  # a fleet (up --bots N): how many bots; None for one bot (listed in `down` if it is)
    bots_down: list[str] = field(default_factory=list)  # the fleet's bots not active, in the fleet's order


async def _get_json(session: aiohttp.ClientSession, url: str, token: str = "") -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        async with session.get(url, timeout=REQUEST_TIMEOUT, headers=headers) as resp:
            if resp.status != 200:
                return None
            return await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return None


async def _alerts(session: aiohttp.ClientSession, alertmanagers: Sequence[str], prometheus: Sequence[str]) -> Snapshot:
    snap = Snapshot()
    # Alertmanager knows what reaches receivers: also the escalations the reconciler posts, minus silenced and
    # inhibited alerts. Of a clustered pair, every member that answers: one down changes nothing on the line, and one
    # just restarted, which holds no alert until Prometheus sends them again (members gossip silences and what they
    # notified, not alerts), hides none of the other's.
    bodies = await asyncio.gather(*(_get_json(session, f"{url}{ALERTS_QUERY}") for url in alertmanagers))
    answered = [(url, body) for url, body in zip(alertmanagers, bodies, strict=True) if isinstance(body, list)]
    if answered:
        merged: dict[str, dict[str, Any]] = {}
        for _, body in answered:
            for alert in body:
                if isinstance(alert, dict):
                    labels = alert.get("labels") or {}
                    merged.setdefault(str(alert.get("fingerprint") or sorted(labels.items())), labels)
        _take(list(merged.values()), snap, ", ".join(url for url, _ in answered))
        return snap
    for member in prometheus:  # the members of a Prometheus pair in turn: the first that answers
        body = await _get_json(session, f"{member}/api/v1/alerts")
        if isinstance(body, dict):
            alerts = (body.get("data") or {}).get("alerts") or []
            _take([a.get("labels") or {} for a in alerts if a.get("state") == "firing"], snap, "prometheus")
            break
    return snap


def _rank(severity: str) -> int:
    return SEVERITY_ORDER.index(severity) if severity in SEVERITY_ORDER else len(SEVERITY_ORDER)


def _take(labels: list[dict[str, Any]], snap: Snapshot, source: str) -> None:
    names = [str(lab.get("alertname", "?")) for lab in labels]
    snap.alerts, snap.alerts_from = [n for n in names if n != WATCHDOG], source
    snap.watchdog = WATCHDOG in names
    for name, lab in zip(names, labels, strict=True):
        severity = str(lab.get("severity", ""))
        if name not in snap.severities or _rank(severity) < _rank(snap.severities[name]):
            snap.severities[name] = severity


async def _gates(session: aiohttp.ClientSession, reconciler: str, snap: Snapshot) -> None:
    """The reconciler's pause and open circuits, from its own /metrics."""
    try:
        async with session.get(f"{reconciler}/metrics", timeout=REQUEST_TIMEOUT) as resp:
            if resp.status != 200:
                return
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError, OSError, UnicodeDecodeError):
        return
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == PAUSED_METRIC:
                    snap.paused = sample.value == 1
                elif sample.name == CIRCUIT_METRIC and sample.value == 1:
                    snap.open_circuits.append(sample.labels.get("target", "?"))
    except ValueError:
        return


def last_action(episodes: list[dict[str, Any]]) -> str | None:
    """The most recently started step of any listed episode, with its outcome and its episode's state."""
    latest: tuple[str, dict[str, Any], dict[str, Any]] | None = None
    for episode in episodes:
        for attempt in episode.get("attempts") or []:
            for step in attempt.get("steps") or []:
                started = step.get("started_at") or ""
                if latest is None or started > latest[0]:
                    latest = (started, step, episode)
    if latest is None:
        return None
    started, step, episode = latest
    try:
        when = datetime.fromisoformat(started).astimezone().strftime("%H:%M:%S")
    except ValueError:
        when = "?"
    outcome = step.get("outcome") or "running"
    return (
        f"{step.get('description') or step.get('action')} -> {outcome} at {when} "
        f"({episode.get('alertname')}, episode {episode.get('id')} {episode.get('state')})"
    )


async def fetch(
    session: aiohttp.ClientSession,
    alertmanagers: Sequence[str],
    prometheus: str | Sequence[str] | None,
    reconciler: str | None,
    read_token: str = "",
) -> Snapshot:
    """What the status line shows: the alerts of every one of `alertmanagers` that answers, each alert once (none
    answers: those of the first member of `prometheus`, one URL or a pair's, that does); the episodes are read with
    the reconciler's read token."""
    members = [prometheus] if isinstance(prometheus, str) else list(prometheus or ())
    alerts_task = asyncio.ensure_future(_alerts(session, alertmanagers, members))
    url = f"{reconciler}/api/v1/episodes?limit={EPISODES_LISTED}"
    body = await _get_json(session, url, read_token) if reconciler else None
    snap = await alerts_task
    if reconciler:
        await _gates(session, reconciler, snap)
    if isinstance(body, dict) and isinstance(body.get("episodes"), list):
        episodes = [e for e in body["episodes"] if isinstance(e, dict)]
        snap.open_episodes = sum(1 for e in episodes if not e.get("closed_at"))
        snap.last_action = last_action(episodes)
    return snap


def render(snap: Snapshot) -> str:
    if snap.alerts is None:
        alerts = "alerts: unknown (no Alertmanager or Prometheus answers)"
    elif snap.alerts:
        counts = sorted(Counter(snap.alerts).items(), key=lambda nc: (_rank(snap.severities.get(nc[0], "")), -nc[1]))
        # Every critical alert is named, however many; the others fill up to NAMES_SHOWN, the rest counted.
        critical = sum(1 for n, _ in counts if snap.severities.get(n) == "critical")
        shown = max(NAMES_SHOWN, critical)
        names = ", ".join(_named(n, c, snap.severities.get(n, "")) for n, c in counts[:shown])
        more = f", +{len(counts) - shown} more" if len(counts) > shown else ""
        alerts = f"alerts firing: {len(snap.alerts)} ({names}{more})"
    else:
        alerts = "alerts firing: 0"
    parts = [alerts]
    if snap.bots is not None:
        parts.append(_fleet(snap.bots, snap.bots_down))
    if snap.watchdog is not None:
        parts.append("watchdog: ok" if snap.watchdog else "watchdog: not seen")
    parts.append(f"episodes open: {'?' if snap.open_episodes is None else snap.open_episodes}")
    if snap.paused:
        parts.append("RECONCILER PAUSED (trading-ops reconciler resume)")
    if snap.open_circuits:
        parts.append(f"CIRCUIT OPEN: {', '.join(sorted(snap.open_circuits))}")
    parts.append(f"last action: {snap.last_action or 'none'}")
    if snap.down:
        parts.append(f"DOWN: {', '.join(snap.down)}")
    return " | ".join(parts)


def _fleet(total: int, down: list[str]) -> str:
    """`bots: 20 (20 active)`, or `bots: 20 (16 active, 4 not: ccxt-2, ccxt-5, ccxt-9, +1 more)`."""
    if not down:
        return f"bots: {total} ({total} active)"
    names = ", ".join(down[:NAMES_SHOWN]) + (f", +{len(down) - NAMES_SHOWN} more" if len(down) > NAMES_SHOWN else "")
    return f"bots: {total} ({total - len(down)} active, {len(down)} not: {names})"


def _named(name: str, count: int, severity: str) -> str:
    times = f" x{count}" if count > 1 else ""
    return f"{name}{times} [critical]" if severity == "critical" else f"{name}{times}"


class StatusPrinter:
    """On a terminal one line rewritten in place; otherwise a line printed only when it changes."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.last = ""
        self.open_line = False

    def _write(self, text: str) -> None:
        # A closed terminal or pipe must not stop `up` from stopping its children cleanly.
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(text)
            self.stream.flush()

    def show(self, line: str) -> None:
        if self.tty:
            width = shutil.get_terminal_size((120, 24)).columns
            text = f"{datetime.now().strftime('%H:%M:%S')} {line}"
            self._write("\r" + text[: max(20, width - 1)] + CLEAR_EOL)
            self.open_line = True
        elif line != self.last:
            self._write(f"{datetime.now().strftime('%H:%M:%S')} status: {line}\n")
        self.last = line

    def message(self, text: str) -> None:
        """A line of its own (a child's exit, shutdown progress), never mixed into the status line."""
        if self.open_line:
            self._write("\n")
            self.open_line = False
        self._write(text + "\n")


def loss_limit_note(bot: str, exposition: str) -> str | None:
    """What `up` says of a bot that starts halted by a loss limit breached today (its journal keeps the day's loss
    and the equity peak: every start that day halts it again), read from the bot's /metrics; None for any other bot."""
    values: dict[tuple[str, str], float] = {}
    try:
        for family in text_string_to_metric_families(exposition):
            for sample in family.samples:
                key = (sample.name, sample.labels.get("state") or sample.labels.get("limit") or "")
                values[key] = values.get(key, 0.0) + sample.value
    except ValueError:
        return None
    if values.get(("tradingbot_state", "halted")) != 1:
        return None
    loss = -(values.get(("tradingbot_realized_pnl", ""), 0.0) + values.get(("tradingbot_unrealized_pnl", ""), 0.0))
    limit = values.get(("tradingbot_daily_loss_limit", ""), 0.0)
    drawdown = values.get(("tradingbot_drawdown", ""), 0.0)
    drawdown_limit = values.get(("tradingbot_risk_limit", "drawdown"), 0.0)
    if limit > 0 and loss >= limit:
        why = f"the day's loss {loss:.2f} is past the daily loss limit {limit:g}"
    elif drawdown_limit > 0 and drawdown >= drawdown_limit:
        why = f"the drawdown {drawdown:.2f} is past its limit {drawdown_limit:g}"
    else:
        return None
    return (
        f"!!! {bot} started halted: loss limit breached today ({why}); it halts again at every start until the day "
        "ends: use --fresh (make run UP_ARGS=--fresh) to start the demo over, or `trading-ops clear-halt` (another "
        "person approves) once the loss is understood"
    )


async def loss_limit_notes(session: aiohttp.ClientSession, bots: Sequence[tuple[str, str]]) -> list[str]:
    """loss_limit_note of each (name, url) bot that answers its /metrics."""
    notes = []
    for name, url in bots:
        try:
            async with session.get(f"{url}/metrics", timeout=REQUEST_TIMEOUT) as resp:
                if resp.status != 200:
                    continue
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError, OSError, UnicodeDecodeError):
            continue
        note = loss_limit_note(name, text)
        if note is not None:
            notes.append(note)
    return notes
