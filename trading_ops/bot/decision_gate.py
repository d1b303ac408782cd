"""What a bot checks before it widens its own risk: a decision the reconciler signed (trading_ops.decisions), verified
against the keys the bot trusts, spent once, logged and counted."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from trading_ops.bot.control import ACTED_ON, CommandForbidden
from trading_ops.bot.metrics import PREFIX, BotMetrics
from trading_ops.config import ConfigError
from trading_ops.decisions import (
    KINDS,
    Decision,
    DecisionKeyError,
    DecisionRefused,
    DecisionVerifier,
    UsedDecisions,
    load_public_key,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from trading_ops.config import Config

log = logging.getLogger(__name__)

ACTED_HELP = "Signed decisions the bot acted on (a ramp promotion, a live start, a loss-limit halt cleared), by kind."
REFUSED_HELP = (
    "Decisions the bot refused (missing, forged, expired, replayed, for another bot or stage), by the kind asked."
)
LAST_HELP = "When the bot last acted on a signed decision of this kind (its id is in the log and in status)."


class GateLabels(Protocol):
    """Where a gate's families go and the labels they carry: a bot's BotMetrics, or an integration's own."""

    @property
    def registry(self) -> CollectorRegistry | None: ...

    @property
    def venue(self) -> str: ...

    @property
    def strategy(self) -> str: ...


def trusted_keys(config: Config) -> list[Ed25519PublicKey]:
    """The public keys of bot.decision_keys; ConfigError naming the entry that cannot be read."""
    return load_trusted(config.bot.decision_keys, config, "bot.decision_keys")


def load_trusted(values: list[str], config: Config, key: str) -> list[Ed25519PublicKey]:
    """The public keys `values` of the configuration's `key` (bot.decision_keys, freqtrade.decision_keys); ConfigError
    naming the entry that cannot be read."""
    keys = []
    for i, value in enumerate(values):
        try:
            keys.append(load_public_key(value, config.base_dir, f"{key}[{i}]"))
        except DecisionKeyError as exc:
            raise ConfigError(f"{key}[{i}]", str(exc).split(": ", 1)[-1]) from None
    return keys


class DecisionGate:
    """The bot's side of a signed decision: `check` verifies one (CommandForbidden, 403, one line, when it does not
    hold), `spend` remembers it in the data dir before the change it allows, then logs and counts it; `status` says
    the last one acted on per kind."""

    def __init__(
        self,
        keys: list[Ed25519PublicKey],
        data_dir: Path,
        metrics: BotMetrics | GateLabels,
        bot: str,
        *,
        wall: Any = time.time,
    ) -> None:
        self.bot = bot
        self.verifier = DecisionVerifier(keys, UsedDecisions(data_dir, wall), wall)
        self.wall = wall
        self.last: dict[str, dict[str, Any]] = {}
        labels = ["venue", "strategy", "kind"]
        registry = metrics.registry
        acted = Counter(f"{PREFIX}_decisions", ACTED_HELP, labels, registry=registry)
        refused = Counter(f"{PREFIX}_decisions_refused", REFUSED_HELP, labels, registry=registry)
        last = Gauge(f"{PREFIX}_decision_last_timestamp_seconds", LAST_HELP, labels, registry=registry)
        self._acted = {k: acted.labels(metrics.venue, metrics.strategy, k) for k in KINDS}
        self._refused = {k: refused.labels(metrics.venue, metrics.strategy, k) for k in KINDS}
        self._last = {k: last.labels(metrics.venue, metrics.strategy, k) for k in KINDS}

    def check(self, token: Any, kind: str, stage: str | None = None) -> Decision:
        """The verified decision allowing `kind` (for `stage`) to this bot now; CommandForbidden otherwise."""
        try:
            return self.verifier.verify(token, kind, self.bot, stage)
        except DecisionRefused as exc:
            self._refused[kind].inc()  # the control API logs the refusal with who sent it
            raise CommandForbidden(str(exc)) from None

    def verify_kept(self, token: str, kind: str) -> Decision:
        """A decision verified by signature, kind and bot only (a live start's, read again at a restart: spent and
        expired by then, it still says who allowed this bot to go live); DecisionRefused otherwise."""
        return self.verifier.verify(token, kind, self.bot, check_time=False)

    def spend(self, decision: Decision) -> None:
        """Acted on: remembered (durable, in the data dir's USED_FILE) first, then logged, counted and shown."""
        self.verifier.spend(decision)
        self.record(decision)

    def kept_elsewhere(self, decision: Decision) -> None:
        """Acted on, its id kept durable by the change it allowed (the ramp's state file): logged, counted, shown."""
        self.remember(decision.id, decision.expires_at)
        self.record(decision)

    def remember(self, decision_id: str, expires_at: float) -> None:
        """An id spent in an earlier run, kept by another record (the ramp's state file)."""
        if self.verifier.used is not None:
            self.verifier.used.remember(decision_id, expires_at)

    def record(self, decision: Decision) -> None:
        now = self.wall()
        self._acted[decision.kind].inc()
        self._last[decision.kind].set(now)
        self.last[decision.kind] = {**decision.to_dict(), "acted_at": now}
        # The control command that carried it records who decided beside who sent it (control.ACTED_ON).
        ACTED_ON.set({k: self.last[decision.kind].get(k) for k in ("id", "kind", "requested_by", "approvers", "rule")})
        log.warning("acting on %s", decision.summary())

    def status(self) -> dict[str, Any]:
        """The last decision acted on, per kind (its id, who asked, who approved, the rule)."""
        return {
            kind: {k: d[k] for k in ("id", "stage", "record", "requested_by", "approvers", "rule", "acted_at")}
            for kind, d in self.last.items()
        }
