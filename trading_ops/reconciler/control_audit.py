"""Each configured bot's journaled control commands, pulled into the audit chain: a `resume` sent straight to a bot's
control API (curl with its token) is an audit entry beside the reconciler's own decisions.

Every `reconciler.control_audit_interval_seconds` every replica asks each target for the `control` events of its
journal after the last one the chain holds (the bot's `control_events`, scope read, with the target's token) and
appends each as one entry: action `bot_control:COMMAND`, principal the token that authenticated it at the bot, source
the address the bot saw, the state before and after, the signed decision it acted on, at the bot's own time. What
the reconciler sent itself (its target tokens, counted as `reconciler` or `maintenance`) is left out: its decisions
are audited, or in an episode's history, where it sent them.

How far the chain holds a bot's journal is a row of `audit_bot_cursors`, read and moved under the chain's own lock
(trading_ops.audit.lock) in the transaction that appends: replicas on one ledger queue there, so an event is appended
once however many ask; a journal restored from an older backup is read from its start, and what the chain holds of it
already is skipped. The freqtrade sidecar and the NautilusTrader controller journal the commands they receive and
answer `control_events` as a bot does (trading_ops.integrations.command_journal): they are pulled alike. A bot that is
down, answers what is not a page of events, or has no `control_events` (an older bot, an older sidecar: no journal) is
logged when that changes, and holds no other bot back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import aiohttp
from sqlalchemy import Connection, Table, select, update

from trading_ops import audit
from trading_ops.bot.control import CONTROL_EVENTS, SOURCE_HEADER, SOURCE_MAINTENANCE, SOURCE_RECONCILER
from trading_ops.config import Config, resolve_secret
from trading_ops.db.base import utcnow
from trading_ops.db.models.audit import Audit, AuditBotCursor
from trading_ops.reconciler.ledger import Ledger

log = logging.getLogger(__name__)

CURSORS = cast(Table, AuditBotCursor.__table__)
AUDIT = cast(Table, Audit.__table__)
# The entries' action: this prefix and the bot's command.
ACTION_PREFIX = "bot_control:"
# Events asked for per request, and requests per bot per pull at most (the rest at the next pull).
PAGE = 200
MAX_PAGES = 25
# How long one request may take.
REQUEST_TIMEOUT_SECONDS = 5.0
# A bot without `control_events` (no journal: an older bot or sidecar) is asked again this much later, not every pull:
# each ask is an unknown command in its log and its failure count.
NO_JOURNAL_RETRY_SECONDS = 600.0
# What the single shared token's commands the reconciler sends are counted as (its SOURCE_HEADER).
OWN_SOURCES = (SOURCE_RECONCILER, SOURCE_MAINTENANCE)
# A bot's state as logged: the first that is not OK is a warning, the return to OK an info line.
OK = "ok"


class Unanswered(Exception):
    """A bot that gave no page of events: why, in one line (its state, logged when it changes)."""


class NoJournal(Unanswered):
    """A control API without `control_events` (404): asked again only after NO_JOURNAL_RETRY_SECONDS."""


@dataclass(frozen=True)
class Page:
    """One answer of a bot's `control_events` to a request for the events after `after`: the events, its journal's
    newest event id, whether more follow, and the name of the token that asked."""

    after: int
    events: list[dict[str, Any]]
    last_id: int
    more: bool
    caller: str


def _page(after: int, status: int, text: str) -> Page:
    if status == 404:
        raise NoJournal("it has no control_events (an older bot, or a control plane without a journal): not audited")
    if status != 200:
        raise Unanswered(f"control_events answered HTTP {status}: {' '.join(text.split())[:120]}")
    try:
        body = json.loads(text)
    except ValueError:
        raise Unanswered("control_events answered what is not JSON") from None
    events, last = (body.get("events"), body.get("last_id")) if isinstance(body, dict) else (None, None)
    if not isinstance(events, list) or isinstance(last, bool) or not isinstance(last, int):
        raise Unanswered("control_events answered no page of events (events, last_id)")
    caller = body.get("caller")
    return Page(after, events, last, body.get("more") is True, caller if isinstance(caller, str) else "")


def _event_id(event: Any) -> int | None:
    value = event.get("id") if isinstance(event, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _text(event: dict[str, Any], key: str) -> str:
    value = event.get(key)
    return value if isinstance(value, str) else ""


def own(event: dict[str, Any], names: set[str]) -> bool:
    """Whether the reconciler sent `event`'s command: with a token of its own (`names`: what the bot calls its target
    tokens), counted under that token's name (a named token) or as the reconciler's or a maintenance window's (the
    single shared token, which a person's curl also holds: counted as `operator` unless its header says otherwise)."""
    principal, source = _text(event, "principal"), _text(event, "source")
    return principal in names and (source == principal or source in OWN_SOURCES)


def _at(event: dict[str, Any]) -> datetime | None:
    try:
        at = datetime.fromisoformat(_text(event, "at"))
    except ValueError:
        return None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def entry_of(bot: str, event: dict[str, Any]) -> dict[str, Any]:
    """The audit entry (append's keyword arguments) of one journaled control command of `bot`."""
    command = _text(event, "command") or "unknown"
    outcome = _text(event, "outcome") or "unknown"
    before, after = _text(event, "before"), _text(event, "after")
    found = event.get("decision")
    decided: dict[str, Any] = found if isinstance(found, dict) else {}
    decision_id = decided["id"] if isinstance(decided.get("id"), str) and decided["id"] else None
    said = [f"sent straight to the bot (counted as {_text(event, 'source') or 'unknown'})"]
    if error := _text(event, "error"):
        said.append(error)
    if decision_id is not None:
        listed = decided.get("approvers")
        approvers = listed if isinstance(listed, list) else []
        said.append(
            f"on the signed decision requested by {decided.get('requested_by') or 'unknown'}, approved by "
            f"{', '.join(str(a) for a in approvers) or 'nobody'}"
        )
    said.append(f"journal event {event.get('id')} of run {event.get('run_id')}")
    return {
        "principal": _text(event, "principal") or "unknown",
        "source": _text(event, "peer") or "unknown",
        "action": f"{ACTION_PREFIX}{command}",
        "target": bot,
        "before": {"state": before} if before else {},
        "after": {"state": after, "outcome": outcome} if after else {"outcome": outcome},
        "decision": f"decision:{decision_id}" if decision_id is not None else None,
        "comment": "; ".join(said),
        "at": _at(event),
    }


def record(ledger: Ledger, bot: str, page: Page, names: set[str]) -> tuple[int, int]:
    """Append `page`'s events of `bot` that the chain does not hold yet and the reconciler did not send, in one
    transaction under the chain's lock, and move the bot's cursor past them: (entries appended, the cursor). A journal
    whose newest event is before the one the page was asked after is another journal (restored, or new): its cursor
    goes back to its start, unless another replica moved it since (then that replica saw it); what the chain holds of
    it already (a restored journal's events up to its backup) is skipped (_held_already)."""
    with ledger.db.tx() as conn:
        audit.lock(conn)
        cursor = _cursor(conn, bot)
        if page.last_id < page.after:
            if cursor == page.after:
                log.warning(
                    "control audit of %s: its journal's newest control event is %d, the chain holds it to %d: "
                    "another journal (restored or new), read from its start",
                    bot,
                    page.last_id,
                    cursor,
                )
                _move(ledger, conn, bot, 0)
                return 0, 0
            return 0, cursor
        appended = 0
        for event in page.events:
            event_id = _event_id(event)
            if event_id is None or event_id <= cursor:
                continue  # held already (another replica's pull), or no event of a journal
            if not own(event, names):
                entry = entry_of(bot, event)
                if not _held_already(conn, entry):
                    audit.append(conn, **entry)
                    appended += 1
            cursor = event_id
        _move(ledger, conn, bot, cursor)
    return appended, cursor


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _held_already(conn: Connection, entry: dict[str, Any]) -> bool:
    """Whether the chain holds `entry` already: the same command of the same journal event (its id and run in the
    comment) from the same principal at the same moment. A journal restored from an older backup is read from its
    start, and its events up to the backup are those the chain took from the journal before it: each is skipped, not
    appended a second time. An event of the restored journal's later runs may reuse an id and a run number of the lost
    part, never its moment."""
    rows = conn.execute(
        select(AUDIT.c.at, AUDIT.c.principal, AUDIT.c.source).where(
            AUDIT.c.target == entry["target"], AUDIT.c.action == entry["action"], AUDIT.c.comment == entry["comment"]
        )
    ).all()
    at = entry["at"]
    return any(
        row.principal == entry["principal"]
        and row.source == entry["source"]
        and at is not None
        and _utc(row.at) == _utc(at)
        for row in rows
    )


def _cursor(conn: Connection, bot: str) -> int:
    value = conn.execute(select(CURSORS.c.event_id).where(CURSORS.c.bot == bot)).scalar()
    return int(value or 0)


def _move(ledger: Ledger, conn: Connection, bot: str, cursor: int) -> None:
    now = utcnow()
    done = conn.execute(update(CURSORS).where(CURSORS.c.bot == bot).values(event_id=cursor, updated_at=now)).rowcount
    if not done:
        conn.execute(ledger.db.insert(CURSORS).values(bot=bot, event_id=cursor, updated_at=now))


def held(ledger: Ledger, bot: str) -> int:
    """The last event of `bot`'s journal the chain holds (0: none)."""
    with ledger.db.engine.connect() as conn:
        return _cursor(conn, bot)


class ControlAudit:
    """Pulls every target's journaled control commands into the audit chain, one bot's failure no other's."""

    def __init__(self, config: Config, ledger: Ledger, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.ledger = ledger
        self.session = session
        self.interval = config.reconciler.control_audit_interval_seconds
        # Each bot's state as last logged (OK, or why it gave no page): a line when it changes, not every pull.
        self.states: dict[str, str] = {}
        # Bots without control_events, left alone until then (time.monotonic()).
        self.quiet_until: dict[str, float] = {}

    def bot_name(self, instance: str) -> str:
        """What the chain's entries name the bot at `instance`: its name under bots:, else the instance."""
        return next((b.name for b in self.config.bots if b.instance == instance), instance)

    async def pull(self) -> dict[str, int]:
        """One pull of every target, side by side: the entries appended per bot."""
        instances = list(self.config.reconciler.targets)
        counts = await asyncio.gather(*(self.pull_bot(i) for i in instances))
        return dict(zip((self.bot_name(i) for i in instances), counts, strict=True))

    async def pull_bot(self, instance: str) -> int:
        """Pull one bot's new events into the chain (the entries appended); never raises."""
        bot = self.bot_name(instance)
        appended = 0
        if time.monotonic() < self.quiet_until.get(bot, 0.0):
            return 0
        try:
            after = await asyncio.to_thread(held, self.ledger, bot)
            names: set[str] | None = None
            for _ in range(MAX_PAGES):
                page = await self._ask(instance, "token", after, PAGE)
                if names is None and page.events:
                    names = await self._own_names(instance, page.caller)
                count, cursor = await asyncio.to_thread(record, self.ledger, bot, page, names or set())
                appended += count
                if cursor < after or (page.more and cursor > after):
                    after = cursor  # another journal: from its start; or the next page
                    continue
                break
        except Unanswered as exc:
            if isinstance(exc, NoJournal):
                self.quiet_until[bot] = time.monotonic() + NO_JOURNAL_RETRY_SECONDS
            self._state(bot, instance, str(exc))
            return appended
        except Exception as exc:  # the ledger down, a bug: logged, the next pull tries again
            first = (str(exc).splitlines() or [""])[0][:200]
            self._state(bot, instance, f"not recorded: {type(exc).__name__}: {first}")
            return appended
        self._state(bot, instance, OK)
        if appended:
            log.info("control audit of %s: %d command(s) sent straight to the bot appended", bot, appended)
        return appended

    async def _own_names(self, instance: str, token_name: str) -> set[str]:
        """The names the bot knows the reconciler's tokens by: its `token`'s (it asked the page) and its
        `destructive_token`'s (asked for one empty page; one the bot does not take sent nothing it journaled)."""
        names = {token_name} if token_name else set()
        target = self.config.reconciler.targets[instance]
        key = f"reconciler.targets.{instance}"
        destructive = resolve_secret(self.config, target, "destructive_token", f"{key}.destructive_token")
        if destructive and destructive != resolve_secret(self.config, target, "token", f"{key}.token"):
            try:
                page = await self._ask(instance, "destructive_token", 0, 0)
            except Unanswered as exc:
                log.debug("control audit of %s: its destructive token's name not read: %s", instance, exc)
                return names
            if page.caller:
                names.add(page.caller)
        return names

    async def _ask(self, instance: str, which: str, after: int, limit: int) -> Page:
        target = self.config.reconciler.targets[instance]
        token = resolve_secret(self.config, target, which, f"reconciler.targets.{instance}.{which}")
        url = f"{target.url.rstrip('/')}/control/{CONTROL_EVENTS}"
        headers = {"Authorization": f"Bearer {token}", SOURCE_HEADER: SOURCE_RECONCILER}
        try:
            async with self.session.post(
                url,
                json={"after": after, "limit": limit},
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
            ) as resp:
                status, text = resp.status, await resp.text()
        except TimeoutError:
            raise Unanswered(f"no answer within {REQUEST_TIMEOUT_SECONDS:g}s") from None
        except aiohttp.ClientError as exc:
            raise Unanswered(f"not reached: {type(exc).__name__}: {exc}") from None
        except UnicodeDecodeError:
            raise Unanswered("control_events answered what is not text") from None
        return _page(after, status, text)

    def _state(self, bot: str, instance: str, state: str) -> None:
        was = self.states.get(bot)
        self.states[bot] = state
        if state == was or (state == OK and was is None):
            return
        if state == OK:
            log.info("control audit of %s (%s): its journal answers again", bot, instance)
        else:
            log.warning("control audit of %s (%s): %s", bot, instance, state)

    async def run_forever(self) -> None:
        """Pull every interval, the first an interval after the start (the bots start beside the reconciler)."""
        while True:
            await asyncio.sleep(self.interval)
            await self.pull()
