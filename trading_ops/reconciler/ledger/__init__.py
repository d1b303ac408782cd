"""The durable store behind the reconciler: batched intake, episode claims with a lease, the run record, the console's
sessions.

`Ledger` is what its callers hold: one engine, and the parts that each own one concern of the store (intake,
claims, run record, limits, queries, pruning), whose methods it offers under the names they have always had."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta

from sqlalchemy import Connection, Engine

from trading_ops.db.states import ACTIVE_STATES, CLAIMED_STATES, CLOSED_STATES, OPEN_STATES, RUNNABLE_STATES
from trading_ops.reconciler.ledger.claims import LEFTOVER_FENCE_SECONDS, Claims, SweepResult
from trading_ops.reconciler.ledger.db import END_OF_TIME, LedgerDB, later
from trading_ops.reconciler.ledger.intake import (
    KNOWN_EPISODES_MAX,
    NOTIFICATION_COLUMNS,
    NOTIFICATION_INSERT,
    AlertIn,
    Intake,
    NotificationIn,
    StoreResult,
    notification_rows,
)
from trading_ops.reconciler.ledger.limits import (
    CIRCUIT_RESET,
    EXECUTED_OUTCOMES,
    GLOBAL_TARGET,
    PAUSE_KEY,
    PAUSED_DETAIL,
    Limits,
)
from trading_ops.reconciler.ledger.pruning import PRUNED_TABLES, Pruning
from trading_ops.reconciler.ledger.queries import NOTIFICATION_SEARCH_LIMIT, LedgerCounts, Queries, episode_json
from trading_ops.reconciler.ledger.reopening import LinkedAlert, Reopening
from trading_ops.reconciler.ledger.rollback import RecentWrites, Rollbacks, Written
from trading_ops.reconciler.ledger.runs import (
    FENCED,
    MISSING,
    OPERATOR_OUTCOMES,
    RETRYABLE_STATES,
    UNKNOWN,
    UNKNOWN_DETAIL,
    WRITTEN,
    Fenced,
    Gone,
    RunRecord,
)
from trading_ops.reconciler.ledger.sessions import ConsoleSessions, StoredSession

__all__ = [
    "ACTIVE_STATES",
    "CIRCUIT_RESET",
    "CLAIMED_STATES",
    "CLOSED_STATES",
    "END_OF_TIME",
    "EXECUTED_OUTCOMES",
    "GLOBAL_TARGET",
    "KNOWN_EPISODES_MAX",
    "LEFTOVER_FENCE_SECONDS",
    "NOTIFICATION_COLUMNS",
    "NOTIFICATION_INSERT",
    "NOTIFICATION_SEARCH_LIMIT",
    "OPEN_STATES",
    "OPERATOR_OUTCOMES",
    "PAUSED_DETAIL",
    "PAUSE_KEY",
    "PRUNED_TABLES",
    "RETRYABLE_STATES",
    "RUNNABLE_STATES",
    "UNKNOWN",
    "WRITTEN",
    "FENCED",
    "MISSING",
    "UNKNOWN_DETAIL",
    "AlertIn",
    "Claims",
    "ConsoleSessions",
    "Fenced",
    "Gone",
    "Intake",
    "Ledger",
    "LedgerCounts",
    "LedgerDB",
    "Limits",
    "NotificationIn",
    "Pruning",
    "Queries",
    "RecentWrites",
    "Reopening",
    "LinkedAlert",
    "Rollbacks",
    "RunRecord",
    "StoreResult",
    "Written",
    "StoredSession",
    "SweepResult",
    "episode_json",
    "later",
    "notification_rows",
]


class Ledger:
    """Owns nothing of its own: it builds the ledger's parts over one engine (`db`: its transactions) and offers
    their methods under the names its callers use. Each part owns one concern, see its class:

    - `intake` (Intake): notifications and the episodes they open or close;
    - `claims` (Claims): the due queue, claims and leases, the sweep of dead runs, leftover-process fences;
    - `runs` (RunRecord): an episode's state, attempts and steps as a run writes them, an operator's ack and retry;
    - `limits` (Limits): cooldowns, budgets, circuits and their audit, settings, the pause;
    - `queries` (Queries): reads for the engine's metrics, the API, the console and the CLI;
    - `sessions` (ConsoleSessions): the operator console's logins (every replica's, kept over a restart);
    - `pruning` (Pruning): retention's deletes;
    - `rollbacks` (Rollbacks): a replica's recent writes checked again, for a ledger that went back in time;
    - `reopening` (Reopening): recovered episodes whose alert keeps firing, reopened when their condition returns.

    A method is an attribute of the instance, so a test may replace one (monkeypatch) for every caller; `tx`, the
    write transaction, is the parts' own: replacing it replaces it for all of them."""

    def __init__(self, engine: Engine, retention: timedelta | None = None) -> None:
        """`retention`: how long closed episodes are kept (reconciler.retention_days); see Intake."""
        self.db = LedgerDB(engine)
        self.engine = engine
        self.dialect = self.db.dialect
        self.retention = retention
        self.tx_on = self.db.tx_on

        self.intake = self._offer_intake(Intake(self.db, retention))
        self.claims = self._offer_claims(Claims(self.db))
        self.runs = self._offer_runs(RunRecord(self.db))
        self.limits = self._offer_limits(Limits(self.db))
        self.queries = self._offer_queries(Queries(self.db))
        self.sessions = self._offer_sessions(ConsoleSessions(self.db))
        self.pruning = self._offer_pruning(Pruning(self.db))
        self.rollbacks = Rollbacks(self.db)
        self.reopening = Reopening(self.db)
        self.recovered_unresolved = self.reopening.recovered_unresolved
        self.reopen = self.reopening.reopen
        self.open_linked = self.reopening.open_linked

    def _offer_intake(self, intake: Intake) -> Intake:
        self.store = intake.store
        self.only_known_resends = intake.only_known_resends
        return intake

    def _offer_claims(self, claims: Claims) -> Claims:
        self.due = claims.due
        self.claim = claims.claim
        self.renew = claims.renew
        self.release_target = claims.release_target
        self.sweep = claims.sweep
        self.fenced_steps = claims.fenced_steps
        self.unfence = claims.unfence
        return claims

    def _offer_runs(self, runs: RunRecord) -> RunRecord:
        self.episode = runs.episode
        self.set_episode = runs.set_episode
        self.defer = runs.defer
        self.start_attempt = runs.start_attempt
        self.fail_running = runs.fail_running
        self.abandon_run = runs.abandon_run
        self.finish_attempt = runs.finish_attempt
        self.start_step = runs.start_step
        self.set_step_process = runs.set_step_process
        self.note_step = runs.note_step
        self.finish_step = runs.finish_step
        self.last_run = runs.last_run
        self.resume_attempt = runs.resume_attempt
        self.acknowledge = runs.acknowledge
        self.retry = runs.retry
        return runs

    def _offer_limits(self, limits: Limits) -> Limits:
        self.cooldown_until = limits.cooldown_until
        self.deferred_to = limits.deferred_to
        self.recovered_sibling = limits.recovered_sibling
        self.other_copies = limits.other_copies
        self.actions_last_hour = limits.actions_last_hour
        self.circuit_open_until = limits.circuit_open_until
        self.open_circuit = limits.open_circuit
        self.open_circuits = limits.open_circuits
        self.reset_circuit = limits.reset_circuit
        self.audit_entries = limits.audit_entries
        self.get_setting = limits.get_setting
        self.set_setting = limits.set_setting
        self.set_paused = limits.set_paused
        return limits

    def _offer_queries(self, queries: Queries) -> Queries:
        self.snapshot = queries.snapshot
        self.list_episodes = queries.list_episodes
        self.open_episodes_by_target = queries.open_episodes_by_target
        self.get_episode_full = queries.get_episode_full
        self.notification_for = queries.notification_for
        self.notification_count = queries.notification_count
        return queries

    def _offer_sessions(self, sessions: ConsoleSessions) -> ConsoleSessions:
        self.create_console_session = sessions.create_console_session
        self.console_session = sessions.console_session
        self.drop_console_session = sessions.drop_console_session
        self.update_console_flash = sessions.update_console_flash
        return sessions

    def _offer_pruning(self, pruning: Pruning) -> Pruning:
        self.prune_notifications = pruning.prune_notifications
        self.prune_episodes = pruning.prune_episodes
        self.prune_console_sessions = pruning.prune_console_sessions
        return pruning

    @property
    def tx(self) -> Callable[[], AbstractContextManager[Connection]]:
        """A write transaction (see LedgerDB.tx)."""
        return self.db.tx

    @tx.setter
    def tx(self, tx: Callable[[], AbstractContextManager[Connection]]) -> None:
        self.db.tx = tx
