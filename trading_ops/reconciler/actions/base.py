"""What every action kind provides, and the checked templating of alert label values into parameters."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from trading_ops.matchers import Pattern

if TYPE_CHECKING:
    import aiohttp

    from trading_ops.clients.alertmanager import AlertmanagerClient
    from trading_ops.clients.notify import Notifier
    from trading_ops.clients.prometheus import PrometheusClient
    from trading_ops.config import Config
    from trading_ops.reconciler.ledger import Ledger

RISKS = ("safe", "disruptive", "destructive")
TEMPLATE_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Refused(Exception):
    """The step must not run (a label value failed validation, a destructive step not allowed, ...)."""


@dataclass(frozen=True)
class Deadline:
    """One step's time, end to end: whatever the step does inside (a `show` before a restart, a status before each
    command), each part gets what is left of the step's timeout, never the whole timeout again."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def left(self) -> float:
        """Seconds left (0 once past)."""
        return max(0.0, self.at - time.monotonic())


@dataclass
class Result:
    outcome: str  # success, failure, timeout
    output: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "success"


@dataclass
class ActionContext:
    """Everything a step may use: the alert, the configuration and the shared clients."""

    config: Config
    labels: dict[str, str]
    annotations: dict[str, str]
    alertname: str
    target: str
    episode_id: int
    session: aiohttp.ClientSession
    alertmanager: AlertmanagerClient
    notifier: Notifier
    label_pattern: Pattern
    history: list[str] = field(default_factory=list)
    # The results of this run's steps so far, (action kind, result) in order (a step skipped, or run in an earlier
    # life of the run, is not here): what a later step's `needless` may read.
    results: list[tuple[str, Result]] = field(default_factory=list)
    # When the alert began (the episode's startsAt): what happened to the target since then is the fault's doing.
    starts_at: datetime | None = None
    # Prometheus, for steps that ask it which bots to act on (a `bot` step's `instances`).
    prometheus: PrometheusClient | None = None
    # Called with the pid of a process group a step starts (the engine records it in the step's row).
    process_started: Callable[[int], Awaitable[None]] | None = None
    # Called with a pause page an `escalate` step posted (TradingOpsBotPaused): ended once the bot trades again.
    announced_pause: Callable[[dict[str, Any]], None] | None = None
    # Called with an exposure page an `escalate` step posted (TradingOpsBotHostDown) and its episode: ended once the
    # account is flat or the host is back.
    announced_exposure: Callable[[dict[str, Any], int], None] | None = None
    # The approval this run spent for its steps (its row: who asked, who decided), once a step needed one: what a
    # step that widens a bot's risk signs into the decision it sends (trading_ops.reconciler.decision_signing).
    approval: dict[str, Any] | None = None
    # The ledger, for a step that records in it (a live start's readiness record and decision).
    ledger: Ledger | None = None

    def label(self, name: str) -> str:
        """A label value that passed the strict pattern, or Refused."""
        return checked_label(self.labels, name, self.label_pattern)

    def render(self, text: str) -> str:
        """Substitute ${label} references with validated label values."""
        return TEMPLATE_RE.sub(lambda m: self.label(m.group(1)), text)

    def filled(self, text: str) -> str:
        """`text` for people (a step's name): each ${label} filled in where the alert has it with a valid value, the
        others left as written."""

        def one(match: re.Match[str]) -> str:
            try:
                return self.label(match.group(1))
            except Refused:
                return match.group(0)

        return TEMPLATE_RE.sub(one, text)

    def step_or_bot(self, params: dict[str, Any], name: str) -> str:
        """The step's `name` parameter rendered, or else what the configuration says of the alert's bot (its
        `bots[].unit` or `.container`): a label picks a configured bot at most, never the thing itself."""
        if name in params:
            return self.render(params[name])
        instance = self.label("instance")
        target = self.config.reconciler.targets.get(instance)
        value = getattr(target, name, "") if target is not None else ""
        if not value:
            raise Refused(f"no {name} configured for bot instance {instance!r} (bots[].{name}) and none in the step")
        return str(value)


def checked_label(labels: dict[str, str], name: str, pattern: Pattern) -> str:
    """The value of label `name` when it matches the strict pattern, else Refused naming the label."""
    if name not in labels:
        raise Refused(f"label {name!r} is not on the alert")
    value = labels[name]
    if not pattern.fullmatch(value):
        raise Refused(f"label {name!r} value {value[:60]!r} does not match {pattern.pattern}")
    return value


def template_labels(value: Any) -> list[str]:
    """The labels ${name} templates in a parameter refer to (strings, lists and mappings, recursively)."""
    if isinstance(value, str):
        return TEMPLATE_RE.findall(value)
    if isinstance(value, dict):
        return [name for v in value.values() for name in template_labels(v)]
    if isinstance(value, list):
        return [name for v in value for name in template_labels(v)]
    return []


class Action:
    """One kind of step. Subclasses set `kind`, check parameters in `validate` and act in `run`."""

    kind = ""
    # Whether a step of this kind counts against the action budgets of its target.
    budgeted = True
    # Whether its parameters' ${label}s are filled in from the alert (exec's argv is literal): its step's name shows
    # them filled in too.
    templates = True
    default_risk = "safe"
    # Parameters this kind accepts: name -> (type, required).
    params: dict[str, tuple[type | tuple[type, ...], bool]] = {}
    # A parameter's type in the playbook's JSON Schema where its type above says less (its choices, its items, a
    # pattern): a msgspec type (trading_ops.reconciler.playbook_schema). Checking a step stays `validate`'s.
    schema: dict[str, Any] = {}

    def validate(self, params: dict[str, Any]) -> None:
        """Raise ValueError naming the parameter when `params` is wrong."""
        for name, value in params.items():
            if name not in self.params:
                known = ", ".join(sorted(self.params)) or "none"
                raise ValueError(f"{name}: unknown parameter (known: {known})")
            tp, _ = self.params[name]
            if not isinstance(value, tp) or isinstance(value, bool) and tp is not bool:
                raise ValueError(f"{name}: expected {_tname(tp)}, got {value!r:.40}")
        for name, (_, required) in self.params.items():
            if required and name not in params:
                raise ValueError(f"{name}: required")

    def risk(self, params: dict[str, Any]) -> str:
        return self.default_risk

    def protective(self, params: dict[str, Any]) -> bool:
        """Whether the step only stops trading or reduces risk (budgets and open circuits never hold it back)."""
        return False

    def default_approval(self, params: dict[str, Any]) -> str | None:
        """Whether a step of this kind waits for a person when neither it nor its rule says (`required`), or None
        (the rule decides). A step's own `approval: none` still exempts it."""
        return None

    async def needless(self, ctx: ActionContext, params: dict[str, Any]) -> str | None:
        """Why a step of this kind has nothing to do now (then it is skipped, and nobody is asked nor paged for it), or
        None. Asked before every step, its approval included; any doubt is None."""
        return None

    def describe(self, params: dict[str, Any]) -> str:
        args = " ".join(f"{k}={v}" for k, v in sorted(params.items()))
        return f"{self.kind} {args}".strip()

    def checked_labels(self, params: dict[str, Any]) -> list[str]:
        """The alert labels a step of this kind uses only after validation against the strict pattern (its
        ${label} templates by default); `playbook explain` checks them as the engine will."""
        return template_labels(params)

    async def run(self, ctx: ActionContext, params: dict[str, Any], timeout: float) -> Result:
        raise NotImplementedError


def _tname(tp: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a mapping",
    }
    if isinstance(tp, tuple):
        return " or ".join(names.get(t, t.__name__) for t in tp)
    return names.get(tp, tp.__name__)


def truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"... [{len(text) - limit} more characters]"
