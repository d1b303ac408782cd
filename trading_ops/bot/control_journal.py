"""The bot's journaled control commands, served back over its control API (`control_events`, scope read): what the
reconciler pulls into its audit chain, so a command sent straight to the bot is audited beside the reconciler's."""

from __future__ import annotations

from typing import Any

from trading_ops.bot.control import CALLER, CONTROL_EVENTS, CommandError, CommandHandler, ControlPlane
from trading_ops.bot.journal import Journal
from trading_ops.bot.recovery_store import RecoveryStore
from trading_ops.scopes import READ

# Events per answer: a page by default and at most (the reconciler asks again after the last one it got).
DEFAULT_EVENTS = 100
MAX_EVENTS = 500
# The largest event id asked for: a journal's row ids fit in 63 bits.
MAX_EVENT_ID = 2**63 - 1


class JournalUnreadable(CommandError):
    """The journal did not answer (its database down): 503, ask again later."""

    status = 503


def _number(args: dict[str, Any], name: str, default: int, most: int) -> int:
    value = args.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise CommandError(f"{name}: expected a whole number from 0 to {most}")
    return value


def serve_control_events(control: ControlPlane, journal: Journal, store: RecoveryStore) -> None:
    """Offer `control_events` {"after": ID, "limit": N}: the journal's control events after event ID, oldest first,
    with the newest event's id (`last_id`: lower than an `after` the caller kept, the journal is not the one it read)
    and the name of the token that asked (`caller`: which events were the caller's own). A read: never journaled."""
    control.register(CONTROL_EVENTS, control_events_handler(journal, store), scope=READ)


def control_events_handler(journal: Journal, store: RecoveryStore) -> CommandHandler:
    """The `control_events` command over `store`'s control events (serve_control_events): also what the control planes
    of the bots we don't write answer it with (trading_ops.integrations.command_journal)."""

    async def control_events(args: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(str(k) for k in args if k not in ("after", "limit"))
        if unknown:
            raise CommandError(f"{CONTROL_EVENTS} takes after and limit, got {', '.join(unknown)[:64]}")
        after = _number(args, "after", 0, MAX_EVENT_ID)
        limit = _number(args, "limit", DEFAULT_EVENTS, MAX_EVENTS)
        try:
            events, last = await journal.call(store.control_events, after, limit)
        except Exception as exc:
            raise JournalUnreadable(f"the journal cannot be read: {type(exc).__name__}") from exc
        caller = CALLER.get()
        return {
            "bot": store.bot,
            "caller": caller.token if caller is not None else "",
            "events": events,
            "last_id": last,
            "more": bool(events) and int(events[-1]["id"]) < last,
        }

    return control_events
