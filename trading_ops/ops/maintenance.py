"""Maintenance windows, the operator's side: a silence, the matched bots paused (and resumed), the window recorded."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, select

from trading_ops import audit
from trading_ops.bot.control import SOURCE_HEADER, SOURCE_MAINTENANCE
from trading_ops.clients.alertmanager import AlertmanagerClient, AlertmanagerError, silence_matches
from trading_ops.config import Config, resolve_secret
from trading_ops.db.base import make_engine, make_sessionmaker, utcnow
from trading_ops.db.models.ops import MaintenanceWindow

log = logging.getLogger(__name__)

CREATED_BY = "trading-ops maintenance"
# Without --matcher a window covers every trading bot (the label all their alerts carry).
DEFAULT_MATCHERS = {"service": "tradingbot"}
# The labels a bot's own alerts carry, which decide whether a window's matchers select that bot.
BOT_SERVICE = "tradingbot"
# Which of the pipeline's own alerts a window silences is decided against their label sets (AlertShape), read from the
# shipped rule files and the reconciler's escalations by trading_ops.reconciler.own_pages: never a list of names here.
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
MAX_DURATION_SECONDS = 7 * 86400.0
CONTROL_TIMEOUT = aiohttp.ClientTimeout(total=10)
ACTIVE, ENDED, EXPIRED = "active", "ended", "expired"


class MaintenanceError(Exception):
    """A window that cannot be opened or ended as asked (overlap, no such window, bad matcher)."""


def parse_matchers(items: list[str]) -> dict[str, str]:
    """`name=value` items (equality matchers) to a mapping; the default when there are none."""
    matchers: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not LABEL_NAME.match(name) or not value or value.startswith("~"):
            raise MaintenanceError(f"--matcher {item[:60]!r}: expected label=value (a label name, a non-empty value)")
        if name in matchers:
            raise MaintenanceError(f"--matcher {name} given twice")
        matchers[name] = value
    return matchers or dict(DEFAULT_MATCHERS)


def canonical(matchers: dict[str, str]) -> str:
    return json.dumps(dict(sorted(matchers.items())), separators=(",", ":"))


def api_matchers(matchers: dict[str, str]) -> list[dict[str, Any]]:
    return [{"name": k, "value": v, "isRegex": False, "isEqual": True} for k, v in matchers.items()]


def matched_bots(config: Config, matchers: dict[str, str]) -> list[str]:
    """The reconciler.targets whose alerts the matchers select ({instance, service, job} of a bot's alerts)."""
    silence = {"matchers": api_matchers(matchers)}
    return [
        name
        for name in sorted(config.reconciler.targets)
        if silence_matches(silence, {"instance": name, "service": BOT_SERVICE, "job": BOT_SERVICE})
    ]


@dataclass(frozen=True)
class AlertShape:
    """An alert the alerting pipeline can raise, as far as a silence's equality matchers can tell: labels of a known
    value, labels it carries with any value, values a label never has, and whether it may carry labels beyond those (a
    rule's alert does: its series' target labels and Prometheus's external labels; an alert the reconciler posts
    carries exactly its own)."""

    alertname: str
    origin: str
    known: dict[str, str]
    any_value: frozenset[str] = frozenset()
    never: dict[str, frozenset[str]] = field(default_factory=dict)
    open: bool = True

    def may_match(self, matchers: dict[str, str]) -> bool:
        """Whether a silence of these equality matchers (non-empty values) could match some alert of this shape."""
        for name, value in matchers.items():
            if name in self.known:
                if self.known[name] != value:
                    return False
            elif value in self.never.get(name, frozenset()):
                return False
            elif name not in self.any_value and not self.open:
                return False  # a label the alert never carries: only an empty value would match it
        return True


def silences_own_pages(matchers: dict[str, str], own: list[AlertShape]) -> str | None:
    """What of the alerting pipeline's own alerts (`own`: the shipped rules' and the reconciler's pages) a window of
    these matchers would silence, in a few words; None when none of them."""
    hit = [shape for shape in own if shape.may_match(matchers)]
    if not hit:
        return None
    names = list(dict.fromkeys(shape.alertname for shape in hit))
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"the alerting pipeline's own pages ({shown})"


@dataclass
class Outcome:
    """What opening or ending a window did: the window's row, and what could not be done."""

    window: MaintenanceWindow
    problems: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)


class Maintenance:
    """Opens, ends, lists and closes maintenance windows against the database, Alertmanager and the bots."""

    def __init__(self, config: Config, engine: Engine, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.engine = engine
        self.sessions = make_sessionmaker(engine, immediate=True)
        self.session = session
        self.alertmanager = AlertmanagerClient(session, config.reconciler.alertmanager_urls)

    # ---- database ------------------------------------------------------------------------------------

    def _insert(
        self,
        matchers: dict[str, str],
        reason: str,
        created_by: str,
        start: datetime,
        end: datetime,
        who: tuple[str, str] | None = None,
    ) -> int:
        """The window's row, and its audit entry under `who` (principal, source) in the same transaction."""
        key = canonical(matchers)
        with self.sessions.begin() as db:
            db.connection(execution_options={"isolation_level": "SERIALIZABLE"} if self._pg else {})
            clash = db.scalars(
                select(MaintenanceWindow).where(
                    MaintenanceWindow.state == ACTIVE,
                    MaintenanceWindow.matchers == key,
                    MaintenanceWindow.ends_at > start,
                    MaintenanceWindow.starts_at < end,
                )
            ).first()
            if clash is not None:
                raise MaintenanceError(
                    f"window {clash.id} for {key} is already open until {clash.ends_at:%Y-%m-%d %H:%M:%S}Z; "
                    "end it first (trading-ops maintenance end --id " + str(clash.id) + ")"
                )
            row = MaintenanceWindow(
                matchers=key, reason=reason, created_by=created_by, starts_at=start, ends_at=end, state=ACTIVE
            )
            db.add(row)
            db.flush()
            principal, source = who or (created_by, "scheduler")
            audit.append(
                db.connection(),
                principal=principal,
                source=source,
                action="maintenance_start",
                target=key,
                before=None,
                after={"window": row.id, "matchers": matchers, "starts_at": start, "ends_at": end},
                decision=f"maintenance:{row.id}",
                comment=reason,
                at=utcnow(),
            )
            return int(row.id)

    @property
    def _pg(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def get(self, window_id: int) -> MaintenanceWindow | None:
        with self.sessions() as db:
            return db.get(MaintenanceWindow, window_id)

    def windows(self, *, open_only: bool, limit: int = 50) -> list[MaintenanceWindow]:
        """Windows newest first; `open_only`: active, or ended with bots not resumed yet."""
        with self.sessions() as db:
            query = select(MaintenanceWindow).order_by(MaintenanceWindow.id.desc()).limit(limit)
            if open_only:
                query = query.where((MaintenanceWindow.state == ACTIVE) | (MaintenanceWindow.paused_bots != "[]"))
            return list(db.scalars(query))

    def _save(
        self, window_id: int, problems: list[str], who: tuple[str, str] | None = None, **values: Any
    ) -> MaintenanceWindow:
        """Update the window; with `who` (principal, source), a person ended it: its audit entry in the same
        transaction."""
        with self.sessions.begin() as db:
            row = db.get(MaintenanceWindow, window_id)
            assert row is not None
            if who is not None:
                audit.append(
                    db.connection(),
                    principal=who[0],
                    source=who[1],
                    action="maintenance_end",
                    target=row.matchers,
                    before={"window": row.id, "state": row.state, "ends_at": row.ends_at},
                    after={
                        "window": row.id,
                        "state": values.get("state", row.state),
                        "ended_at": values.get("ended_at"),
                    },
                    decision=f"maintenance:{row.id}",
                    comment=row.reason,
                    at=utcnow(),
                )
            for key, value in values.items():
                setattr(row, key, value)
            if problems:
                stamp = utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
                row.problems = (row.problems + "".join(f"{stamp} {p}\n" for p in problems))[-8000:]
        with self.sessions() as db:
            saved = db.get(MaintenanceWindow, window_id)
            assert saved is not None
            return saved

    # ---- bots ----------------------------------------------------------------------------------------

    async def _command(self, bot: str, command: str, reason: str) -> dict[str, Any]:
        target = self.config.reconciler.targets[bot]
        token = resolve_secret(self.config, target, "token", f"reconciler.targets.{bot}.token")
        url = f"{target.url.rstrip('/')}/control/{command}"
        try:
            # The bot counts the command as a maintenance window's (tradingbot_control_commands_total{source}).
            headers = {"Authorization": f"Bearer {token}", SOURCE_HEADER: SOURCE_MAINTENANCE}
            body = {"reason": reason}
            async with self.session.post(url, json=body, headers=headers, timeout=CONTROL_TIMEOUT) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise MaintenanceError(f"{bot}: {command} answered HTTP {resp.status}: {text[:160]}")
                return dict(json.loads(text) or {})
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise MaintenanceError(f"{bot}: {command} failed: {exc or type(exc).__name__}") from exc

    async def _resume(self, window: MaintenanceWindow) -> tuple[list[str], list[str], list[str]]:
        """Resume the bots this window paused: (resumed, still paused, problems)."""
        resumed, left, problems = [], [], []
        for bot in json.loads(window.paused_bots):
            if bot not in self.config.reconciler.targets:
                problems.append(f"{bot}: no longer in reconciler.targets; not resumed")
                continue
            try:
                await self._command(bot, "resume", f"maintenance window {window.id} over")
                resumed.append(bot)
            except MaintenanceError as exc:
                problems.append(str(exc))
                left.append(bot)
        return resumed, left, problems

    # ---- operations ----------------------------------------------------------------------------------

    async def start(
        self,
        matchers: dict[str, str],
        duration_seconds: float,
        reason: str,
        created_by: str = CREATED_BY,
        now: datetime | None = None,
        until: datetime | None = None,
        who: tuple[str, str] | None = None,
    ) -> Outcome:
        """Record the window (refused when one for the same matchers overlaps it), silence, pause the bots. It ends
        `duration_seconds` from now, or at `until` when given (a scheduled window: its slot plus its duration). Its
        audit entry names `who` (the principal that decided it and its source; a scheduled window's: its schedule)."""
        if not 0 < duration_seconds <= MAX_DURATION_SECONDS:
            raise MaintenanceError(f"duration must be more than 0s and at most {MAX_DURATION_SECONDS / 86400:g}d")
        if not reason.strip():
            raise MaintenanceError("--reason must not be empty")
        start = now or utcnow()
        end = until or start + timedelta(seconds=duration_seconds)
        window_id = await asyncio.to_thread(self._insert, matchers, reason, created_by, start, end, who)
        problems, done = [], []
        silence_id = None
        try:
            silence_id = await self.alertmanager.create_silence(
                matchers, start, end, CREATED_BY, f"{reason} (maintenance window {window_id}, {created_by})"
            )
            done.append(f"silence {silence_id}")
        except AlertmanagerError as exc:
            problems.append(
                f"Alertmanager at {self.config.reconciler.alertmanager_url} could not be reached: "
                f"no silence created, matching alerts still notify ({exc})"
            )
        paused = []
        for bot in matched_bots(self.config, matchers):
            try:
                answer = await self._command(bot, "pause", f"maintenance window {window_id}: {reason}")
            except MaintenanceError as exc:
                problems.append(str(exc))
                continue
            if answer.get("changed", True):
                paused.append(bot)
            else:
                done.append(f"{bot} was already paused (left as it is at the end)")
        if paused:
            done.append("paused " + ", ".join(paused))
        row = await asyncio.to_thread(
            self._save, window_id, problems, silence_id=silence_id, paused_bots=json.dumps(paused)
        )
        return Outcome(row, problems, done)

    async def end(
        self, window_id: int, now: datetime | None = None, *, state: str = ENDED, who: tuple[str, str] | None = None
    ) -> Outcome:
        """End a window now (`state` expired: it ended by itself): expire its silence, resume what it paused. A person
        ending an open window (`who`: principal, source) is an audit entry."""
        window = await asyncio.to_thread(self.get, window_id)
        if window is None:
            raise MaintenanceError(f"no maintenance window {window_id}")
        problems, done = [], []
        values: dict[str, Any] = {}
        if window.state == ACTIVE:
            values.update(state=state, ended_at=now or utcnow())
            if window.silence_id and state == ENDED:
                try:
                    await self.alertmanager.expire_silence(window.silence_id)
                    done.append(f"silence {window.silence_id} expired")
                except AlertmanagerError as exc:
                    problems.append(f"silence {window.silence_id} not expired (it ends by itself at its end): {exc}")
        resumed, left, resume_problems = await self._resume(window)
        problems += resume_problems
        if resumed:
            done.append("resumed " + ", ".join(resumed))
        values["paused_bots"] = json.dumps(left)
        decided = who if who is not None and window.state == ACTIVE and state == ENDED else None
        row = await asyncio.to_thread(self._save, window_id, problems, decided, **values)
        return Outcome(row, problems, done)

    async def housekeeping(self, now: datetime | None = None) -> list[Outcome]:
        """Close windows past their end (resume their bots), retry what failed. Every replica's gauges read the
        result from the database (trading_ops.ops.maintenance_metrics)."""
        now = now or utcnow()
        outcomes = []
        for window in await asyncio.to_thread(self.windows, open_only=True, limit=1000):
            if window.state != ACTIVE or window.ends_at <= now:
                outcomes.append(await self.end(window.id, now, state=EXPIRED))
            elif window.silence_id is None:
                outcomes.append(await self._retry_silence(window))
        return outcomes

    async def _retry_silence(self, window: MaintenanceWindow) -> Outcome:
        matchers = json.loads(window.matchers)
        try:
            silence_id = await self.alertmanager.create_silence(
                matchers,
                window.starts_at,
                window.ends_at,
                CREATED_BY,
                f"{window.reason} (maintenance window {window.id})",
            )
        except AlertmanagerError:
            return Outcome(window)  # recorded once already; the next housekeeping tries again
        row = await asyncio.to_thread(
            self._save, window.id, [f"silence {silence_id} created late"], silence_id=silence_id
        )
        return Outcome(row, [], [f"silence {silence_id}"])

    async def silence_state(self, window: MaintenanceWindow) -> str:
        """The silence's state as Alertmanager reports it (or why it is unknown)."""
        if not window.silence_id:
            return "none"
        try:
            return str(((await self.alertmanager.silence(window.silence_id)).get("status") or {}).get("state", "?"))
        except AlertmanagerError:
            return "unknown (Alertmanager unreachable)"


async def with_maintenance(
    config: Config, engine: Engine | None = None
) -> tuple[Maintenance, aiohttp.ClientSession, Engine]:
    """A Maintenance with its own HTTP session (and engine unless given); the caller closes both. The session speaks
    to bots and Alertmanager as the reconciler does: with reconciler.tls."""
    from trading_ops.webconfig import client_ssl_context

    tls = client_ssl_context(config.reconciler.tls, "reconciler.tls")
    owned = engine or make_engine(config.database_url(), sqlite_synchronous=config.database.sqlite_synchronous)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls if tls is not None else True))
    return Maintenance(config, owned, session), session, owned


async def housekeeping(config: Config, registry: CollectorRegistry, slot: datetime) -> None:
    """The scheduled job (every minute): close the windows past their end and resume their bots. A bot that does not
    answer stays on its window (recorded, and in the gauges the overrun alert reads) for the next minute to retry:
    not an error to retry now, which would overlap the next run."""
    maintenance, session, engine = await with_maintenance(config)
    try:
        outcomes = await maintenance.housekeeping()
    finally:
        await session.close()
        engine.dispose()
    for outcome in outcomes:
        for problem in outcome.problems:
            log.warning("maintenance window %d: %s", outcome.window.id, problem)


def scheduled_window(name: str) -> Any:
    """The scheduled job opening maintenance.windows.<name>: from its slot to slot + duration (a window
    caught up after downtime ends when it would have)."""

    async def open_window(config: Config, registry: CollectorRegistry, slot: datetime) -> None:
        from trading_ops.durations import parse_duration

        spec = config.maintenance.windows[name]
        now = utcnow()
        until = slot + timedelta(seconds=parse_duration(spec.duration))
        remaining = (until - now).total_seconds()
        if remaining <= 0:
            log.info("scheduled maintenance window %s: its slot %s is already over", name, slot)
            return
        maintenance, session, engine = await with_maintenance(config)
        try:
            outcome = await maintenance.start(spec.matchers, remaining, spec.reason, f"schedule:{name}", now, until)
        except MaintenanceError as exc:
            log.warning("scheduled maintenance window %s not opened: %s", name, exc)
            return
        finally:
            await session.close()
            engine.dispose()
        for problem in outcome.problems:
            log.warning("scheduled maintenance window %s (window %d): %s", name, outcome.window.id, problem)
        log.info("scheduled maintenance window %s opened as window %d", name, outcome.window.id)

    open_window.__name__ = f"maintenance_window_{name}"
    return open_window
