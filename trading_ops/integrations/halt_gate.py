"""A loss-limit halt of a bot we don't write (freqtrade behind its sidecar, a NautilusTrader node under its controller)
clears only on a decision the reconciler signed, as the runtime's does (trading_ops.bot.decision_gate): the halt's
reason is kept in the integration's data dir (a restart forgets no loss-limit halt), and `clear_halt` of one whose
reason names a loss limit (`risk limit daily_loss ...`, `risk limit drawdown ...`) is refused (403, one line) without
a decision for this bot that verifies now, unspent."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trading_ops.bot.control import CommandForbidden
from trading_ops.bot.decision_gate import DecisionGate
from trading_ops.bot.risk import HALT_REASON_PREFIXES
from trading_ops.decisions import CLEAR_HALT

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from prometheus_client import CollectorRegistry

    from trading_ops.decisions import Decision

log = logging.getLogger(__name__)

# The halt's reason, in the integration's data dir beside the spent decisions (decisions.USED_FILE).
HALT_FILE = "halt.json"
REASON_MAX = 500


@dataclass(frozen=True)
class GateLabels:
    """The registry the gate's families go to and their venue and strategy labels."""

    registry: CollectorRegistry | None
    venue: str
    strategy: str


def is_loss_limit(reason: str) -> bool:
    """Whether a halt's reason names a loss limit (the runtime's words: `risk limit daily_loss ...`)."""
    return reason.startswith(HALT_REASON_PREFIXES)


class HaltGate:
    """The halt an integration set and why; `check_clear` before a clear_halt (the decision to spend, or None for a
    halt that clears in one step), `spend` once allowed, `cleared` after it."""

    def __init__(
        self, keys: list[Ed25519PublicKey], data_dir: Path, labels: Any, bot: str, *, wall: Any = None
    ) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / HALT_FILE
        extra = {"wall": wall} if wall is not None else {}
        self.decisions = DecisionGate(keys, data_dir, labels, bot, **extra)
        self.reason = self._read()

    def _read(self) -> str:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return ""
        except (OSError, ValueError):
            # Unreadable: the safe side (a halt that needs a decision), as a loss limit would have it.
            log.warning("%s cannot be read: the halt is taken as a loss limit's", self.path)
            return HALT_REASON_PREFIXES[0] + " (the halt's record cannot be read)"
        return str(data.get("reason", "")) if isinstance(data, dict) else ""

    def _write(self, reason: str) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps({"reason": reason}))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self.reason = reason

    @property
    def loss_limit(self) -> bool:
        return is_loss_limit(self.reason)

    def halted(self, reason: str, changed: bool) -> None:
        """The bot was halted for `reason` (`changed`: it was not halted before). A halt on a halt keeps a loss limit's
        reason: a person's halt on top of it does not make it one step to clear."""
        reason = " ".join(str(reason or "").split())[:REASON_MAX]
        if changed or (is_loss_limit(reason) and not self.loss_limit):
            self._write(reason)

    def check_clear(self, args: dict[str, Any]) -> Decision | None:
        """The verified clear_halt decision a loss-limit halt needs ({"decision": SIGNED}); None for any other halt.
        CommandForbidden (403, one line) when it does not hold."""
        if not self.loss_limit:
            return None
        try:
            return self.decisions.check(args.get("decision"), CLEAR_HALT)
        except CommandForbidden as exc:
            raise CommandForbidden(f"clear_halt of a loss-limit halt ({self.reason[:120]}): {exc}") from None

    def spend(self, decision: Decision | None) -> None:
        """Acted on: its id kept (durable) before the halt is cleared."""
        if decision is not None:
            self.decisions.spend(decision)

    def cleared(self) -> None:
        """The halt is cleared: nothing of it is kept."""
        if self.reason:
            self._write("")

    def status(self) -> dict[str, Any]:
        return {"halt_reason": self.reason or None, "decisions": self.decisions.status()}
