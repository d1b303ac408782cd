"""The YAML playbook: rules of label matchers (=, !=, =~, !~) mapped to ordered, risk-classed steps."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from trading_ops.durations import parse_duration
from trading_ops.matchers import compile_matcher, regex_matches
from trading_ops.reconciler.actions import ACTIONS
from trading_ops.reconciler.actions.base import RISKS
from trading_ops.reconciler.packaged_playbooks import DEFAULT_PLAYBOOK, PACKAGED_PLAYBOOKS
from trading_ops.schema import SchemaError, convert, describe, unknown_key_words

MATCHER_RE = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(?:"((?:[^"\\]|\\.)*)"|(\S*))\s*$')
ON_FAILURE = ("escalate", "none")
# What a run does with a step whose outcome is unknown (the reconciler died while it ran): run it again, or page a
# human and do nothing more. Unset: escalate for a disruptive or destructive step, retry for a safe one.
ON_UNKNOWN = ("retry", "escalate")
RISKY = ("disruptive", "destructive")
# The steps that page (say what was done): a cooldown never holds them back in a rule it partly holds.
PAGE_ACTIONS = ("escalate", "notify")
# `approval: required` on a step: it waits for a person's decision (trading_ops.reconciler.approvals). On a rule: each
# of its disruptive and destructive steps does (a step's own `approval: none` exempts it).
APPROVAL = ("required", "none")
# What an approval nobody answered in time does: page and end the episode escalated, or skip the step and go on.
ON_TIMEOUT = ("escalate", "skip")
DEFAULT_APPROVAL_TIMEOUT = 900.0
NAME_WORDS = "a name of letters, digits, '_', '.', '-'"
BACKOFF_WORDS = "a mapping (initial, max, multiplier, jitter)"
VERIFY_WORDS = "true, false or a mapping (expr, deadline, interval)"
RISK_WORDS = f"one of {', '.join(RISKS)}"
# A label name, as Prometheus's (an alert name too): the key of a `match` or `hard_limit` mapping.
LABEL_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
IDENTIFIER_RE = re.compile(LABEL_NAME_PATTERN)
# A rule's own keys: each rule gives them, `defaults` never (it would hand one name, match or steps to every rule).
OWN_KEYS = ("name", "match", "steps")
# How long after a recovery it defers to was verified a rule still takes its alert for that recovery's aftermath.
DEFAULT_DEFER_WITHIN_SECONDS = 30.0
# Longest duration a playbook may give (waits, cooldowns, backoffs): added to times, a longer one would overflow the
# calendar; a century is past any real wait.
MAX_DURATION_SECONDS = 100 * 365 * 86400.0


class PlaybookError(Exception):
    """A playbook problem, one line naming the file and the key."""


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str
    value: str

    def matches(self, labels: dict[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op in ("=", "!="):
            return (actual == self.value) == (self.op == "=")
        hit = regex_matches(self.value, actual)  # RE2, anchored, checked when the playbook was loaded
        return hit == (self.op == "=~")

    def __str__(self) -> str:
        return f'{self.name}{self.op}"{self.value}"'


def unescape_matcher_value(raw: str) -> str:
    """A quoted matcher value's text, as Alertmanager reads it (OpenMetrics escapes): \\" is a quote, \\n a line
    feed, \\\\ a backslash; any other backslash is literal (so a regex's \\d stays \\d). Unicode is kept as is."""
    out: list[str] = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw):
            nxt = raw[i + 1]
            if nxt in ('"', "\\"):
                out.append(nxt)
                i += 2
                continue
            if nxt == "n":
                out.append("\n")
                i += 2
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def parse_matcher(text: str) -> Matcher:
    m = MATCHER_RE.match(text)
    if not m:
        raise ValueError(f'expected name="value" with =, !=, =~ or !~, got {text[:60]!r}')
    name, op = m.group(1), m.group(2)
    if m.group(3) is None and m.group(4).startswith('"'):
        raise ValueError(f"unterminated or unescaped double quote in the value: {text[:60]!r}")
    value = unescape_matcher_value(m.group(3)) if m.group(3) is not None else m.group(4)
    if op in ("=~", "!~"):
        compile_matcher(value)  # RegexError (a ValueError) names the pattern RE2 refuses
    return Matcher(name, op, value)


@dataclass(frozen=True)
class Backoff:
    initial: float = 5.0
    max: float = 300.0
    multiplier: float = 2.0
    jitter: float = 0.2  # +-20 %

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        base = min(self.max, self.initial * self.multiplier ** max(0, attempt - 1))
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1.0 + spread))


@dataclass(frozen=True)
class Verify:
    enabled: bool = True
    # None: the expression of Prometheus's own alerting rule of the alert's name, read from its rules API (never the
    # webhook's generatorURL, which whoever holds the webhook token writes).
    expr: str | None = None
    deadline: float = 120.0
    interval: float = 5.0


@dataclass(frozen=True)
class StepSpec:
    action: str
    params: dict[str, Any]
    timeout: float
    risk: str
    name: str
    # Whether the step waits for an approval (a rule's `approval: required` already applied), how long at most,
    # and what happens when nobody answers in time.
    approval: bool = False
    approval_timeout: float = DEFAULT_APPROVAL_TIMEOUT
    on_timeout: str = "escalate"

    def describe(self) -> str:
        return ACTIONS[self.action].describe(self.params)

    def arguments(self) -> str:
        """The step's exact arguments (its action and parameters) as an approval binds them."""
        return json.dumps({"action": self.action, "params": self.params}, sort_keys=True, default=str)


@dataclass(frozen=True)
class Rule:
    name: str
    matchers: tuple[Matcher, ...]
    steps: tuple[StepSpec, ...]
    wait_for: float = 0.0
    max_attempts: int = 2
    backoff: Backoff = field(default_factory=Backoff)
    cooldown: float = 300.0
    verify: Verify = field(default_factory=Verify)
    on_failure: str = "escalate"
    allow_destructive: bool = False
    target_label: str = "instance"
    # Steps run once the recovery is verified (the fault is over): undoing what the steps did only for the fault's
    # duration, e.g. resuming the bots a venue outage set to reduce_only. Their failure pages a human.
    on_recovery: tuple[StepSpec, ...] = ()
    # What the alert means in a person's words (${label}s filled in): it leads the page when the rule fails, before
    # the step that failed and why, e.g. "Loss limit breached on ${instance}: bot command=flatten: failure: ...".
    summary: str = ""
    # The playbook's on_unknown (None: decided by the risk of the step whose outcome is unknown, `unknown_policy`).
    on_unknown: str | None = None
    # A breached hard limit, as the alert's labels say it (every matcher matches): no step of the rule then waits
    # for an approval. Protective actions on a breached hard limit (flattening a bot its runtime halted for its
    # loss limit) never wait for a person; the same steps for a softer alert do.
    hard_limit: tuple[Matcher, ...] = ()
    # The condition that returned (PromQL, ${label}s filled in; any sample: it holds), for an episode that ended
    # recovered while its alert keeps firing: the episode is reopened and its steps run once more (the loss limit's
    # flatten when a position comes back while the day's loss is still past the limit). None: never reopened.
    reopen_when: str | None = None
    # One fault, one remedy: the rules whose recovery this rule's alert may be the aftermath of (a stream channel
    # silent only because the venue link was down: broker-reconnect). While an episode of one of them on the same
    # target is open, or for `defer_within` seconds after one was verified recovered, this rule does not act on a new
    # episode: it is parked (the ledger says which episode it defers to) and acts only if its alert outlives that.
    defers_to: tuple[str, ...] = ()
    defer_within: float = DEFAULT_DEFER_WITHIN_SECONDS

    def needs_approval(self, step: StepSpec, labels: dict[str, str]) -> bool:
        """Whether `step` waits for a person's decision for an alert with these labels."""
        if not step.approval:
            return False
        return not (self.hard_limit and all(m.matches(labels) for m in self.hard_limit))

    def unknown_policy(self, step: StepSpec) -> str:
        """`retry` or `escalate`: what to do after `step` ran with an outcome nobody saw."""
        if self.on_unknown is not None:
            return self.on_unknown
        return "escalate" if step.risk in RISKY else "retry"

    def matches(self, labels: dict[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)

    @property
    def protective(self) -> bool:
        """Every step that spends budget stops trading or shrinks risk (pause, reduce_only, halt, cancel_all,
        flatten): such a rule is never refused because other alerts spent the budget or opened a circuit."""
        budgeted = [s for s in self.steps if ACTIONS[s.action].budgeted]
        return bool(budgeted) and all(ACTIONS[s.action].protective(s.params) for s in budgeted)

    @property
    def protective_positions(self) -> frozenset[int]:
        """The positions of the steps a cooldown never holds back: those that stop trading or shrink risk, and the
        pages (escalate, notify) that say what was done. In a rule that also has other steps, these run at once
        while the cooldown holds the rest (Gates.held_back)."""
        return frozenset(
            position
            for position, step in enumerate(self.steps)
            if step.action in PAGE_ACTIONS
            or (ACTIONS[step.action].budgeted and ACTIONS[step.action].protective(step.params))
        )

    @property
    def heals_unattended(self) -> bool:
        """Whether this rule's verified recovery leaves nothing for a person: no step waits for an approval or pages
        (escalate, notify), the recovery is verified against Prometheus, and the target is the alert's own instance
        (not a venue, which nobody here can heal). Alertmanager's routes to people wait out such a fault's remedy
        (alertmanager/alertmanager.yml): it pages only if it outlives it."""
        steps = (*self.steps, *self.on_recovery)
        return (
            self.verify.enabled
            and self.target_label == "instance"
            and not any(step.approval or step.action in PAGE_ACTIONS for step in steps)
        )

    def target(self, labels: dict[str, str]) -> str:
        return labels.get(self.target_label) or labels.get("alertname", "unknown")


# Label sets whose rule Playbook.match remembers, and the longest (in label value characters) it keeps: a few MB at
# most, whatever a sender puts in its labels.
MATCH_MEMO_MAX = 2048
MATCH_MEMO_LABEL_CHARS = 1024


@dataclass
class Playbook:
    rules: list[Rule]
    source: str = "<memory>"
    # A hash of what was loaded (the parsed YAML: comments and layout do not count): an approval is bound to it, and
    # is refused once the playbook changed.
    version: str = ""
    # Label sets already routed: most notifications are resends of alerts already seen, and a rule's regular
    # expressions cost more than a look-up. Emptied when full (MATCH_MEMO_MAX).
    _memo: dict[frozenset[tuple[str, str]], Rule | None] = field(default_factory=dict, repr=False, compare=False)

    def match(self, labels: dict[str, str]) -> Rule | None:
        """The first rule whose matchers all match, as Alertmanager's routes without `continue`."""
        key = frozenset(labels.items())
        try:
            return self._memo[key]
        except KeyError:
            pass
        rule = next((r for r in self.rules if r.matches(labels)), None)
        if sum(map(len, labels.values())) <= MATCH_MEMO_LABEL_CHARS:
            if len(self._memo) >= MATCH_MEMO_MAX:
                self._memo.clear()
            self._memo[key] = rule
        return rule

    def alertnames(self) -> list[str]:
        """The alert names the rules name literally (`alertname="X"`, or an alternative of `alertname=~"X|Y"`)."""
        names: list[str] = []
        for rule in self.rules:
            for m in rule.matchers:
                if m.name != "alertname" or m.op not in ("=", "=~"):
                    continue
                candidates = [m.value] if m.op == "=" else m.value.split("|")
                names += [n for n in candidates if IDENTIFIER_RE.fullmatch(n) and n not in names]
        return names


def load_packaged_playbook(name: str) -> Playbook:
    """A playbook shipped in the package, by name (see PACKAGED_PLAYBOOKS)."""
    filename = PACKAGED_PLAYBOOKS[name]
    text = resources.files("trading_ops.reconciler").joinpath("playbooks", filename).read_text(encoding="utf-8")
    return _parse_text(text, f"<packaged {name}: {filename}>")


def load_configured_playbook(value: str, resolve: Callable[[str], Path] = Path) -> Playbook:
    """What `reconciler.playbook` (or --playbook) names: empty for the packaged default, a packaged playbook's
    name, or a file (a relative path resolved with `resolve`). PlaybookError says which it was not."""
    if not value:
        return load_packaged_playbook(DEFAULT_PLAYBOOK)
    if value in PACKAGED_PLAYBOOKS:
        return load_packaged_playbook(value)
    path = resolve(value)
    if not path.is_file():
        names = ", ".join(PACKAGED_PLAYBOOKS)
        raise PlaybookError(
            f"{value!r} is neither a packaged playbook ({names}) nor a playbook file ({path} not found)"
        )
    return load_playbook(path)


def load_playbook(path: str | Path | None) -> Playbook:
    """Read and validate a playbook file; None or "" gives the packaged default."""
    if not path:
        return load_packaged_playbook(DEFAULT_PLAYBOOK)
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PlaybookError(f"{source}: cannot read: {exc.strerror}") from exc
    return _parse_text(text, source)


def _parse_text(text: str, source: str) -> Playbook:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise PlaybookError(f"{source}: invalid YAML{where}: {getattr(exc, 'problem', '') or exc}") from exc
    return parse_playbook(data, source)


# ---- the playbook's schema: what a file may say, checked by msgspec in one call per rule ------------------------
# A duration: seconds, or a Prometheus duration (`1h30m`) or one decimal unit (`2.5s`), read by parse_duration.
Duration = Annotated[float | str, msgspec.Meta(description="a duration like 30s, 5m or 1h, or seconds")]
Expected = msgspec.Meta  # its description is the words after "expected" in an error about the key


class PlaybookFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A playbook file: rules tried in order, the first whose matchers all match handles an alert."""

    version: Any = None
    defaults: Annotated[dict[str, Any], Expected(description="a mapping")] | None = None
    rules: Annotated[list[Any], Expected(min_length=1, description="a non-empty list")]


class BackoffSpec(msgspec.Struct, forbid_unknown_fields=True):
    """Waits between a rule's attempts: initial, times multiplier after each, at most max, +- jitter."""

    initial: Duration = 5
    max: Duration = 300
    multiplier: Annotated[float, Expected(ge=1, description="a number >= 1")] = 2.0
    jitter: Annotated[float, Expected(ge=0, le=1, description="a number between 0 and 1")] = 0.2


class VerifySpec(msgspec.Struct, forbid_unknown_fields=True):
    """How success is checked against Prometheus after the steps."""

    enabled: bool = True
    expr: Annotated[str, Expected(description="a PromQL expression")] | None = None
    deadline: Duration = 120
    interval: Duration = 5


Approval = Annotated[Literal["required", "none"], Expected(description=f"one of {', '.join(APPROVAL)}")]
OnTimeout = Annotated[Literal["escalate", "skip"], Expected(description=f"one of {', '.join(ON_TIMEOUT)}")]
Matchers = (
    Annotated[list[Any], Expected(description='a list of matchers like alertname="TradingBotDown"')] | dict[str, Any]
)
Steps = Annotated[list[Any], Expected(description="a list of steps")]


class DefersToSpec(msgspec.Struct, forbid_unknown_fields=True):
    """The rules whose recovery a rule's alert may be the aftermath of, and how long after it is verified."""

    rules: Annotated[list[str], Expected(description="a list of rule names")]
    within: Duration = DEFAULT_DEFER_WITHIN_SECONDS


class RuleSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A rule: the alerts it handles (match) and what it does about them (steps)."""

    name: Annotated[str, Expected(pattern=r"^[A-Za-z0-9_.-]{1,128}$", description=NAME_WORDS)]
    match: Matchers
    steps: Steps
    wait_for: Duration = 0
    timeout: Duration = 30
    max_attempts: Annotated[int, Expected(ge=1, description="an integer >= 1")] = 2
    backoff: Annotated[BackoffSpec, Expected(description=BACKOFF_WORDS)] | None = None
    cooldown: Duration = 300
    verify: bool | Annotated[VerifySpec, Expected(description=VERIFY_WORDS)] = True
    on_failure: Annotated[Literal["escalate", "none"], Expected(description=f"one of {', '.join(ON_FAILURE)}")] = (
        "escalate"
    )
    allow_destructive: Annotated[bool, Expected(description="true or false")] = False
    target_label: Annotated[str, Expected(description="a label name")] = "instance"
    on_recovery: Steps = []
    summary: Annotated[str, Expected(description="one line of text")] = ""
    on_unknown: (
        Annotated[Literal["retry", "escalate"], Expected(description=f"one of {', '.join(ON_UNKNOWN)}")] | None
    ) = None
    approval: Approval | None = None
    approval_timeout: Duration | None = None
    on_timeout: OnTimeout | None = None
    hard_limit: Matchers = []
    reopen_when: Annotated[str, Expected(description="a PromQL expression")] | None = None
    defers_to: (
        Annotated[DefersToSpec, Expected(description="a mapping of rules (a list of rule names) and within")] | None
    ) = None


class StepKeys(msgspec.Struct):
    """A step's own keys (its other keys are its action's parameters, checked by the action)."""

    action: Any = None
    name: str | None = None
    timeout: Duration | None = None
    risk: Annotated[Literal["safe", "disruptive", "destructive"], Expected(description=RISK_WORDS)] | None = None
    approval: Approval | None = None
    approval_timeout: Duration | None = None
    on_timeout: OnTimeout | None = None


STEP_KEYS = tuple(f.name for f in msgspec.structs.fields(StepKeys))


def _spec(
    data: Any, tp: Any, where: str, sep: str = ".", unknown_key: Callable[[type, str], str] = unknown_key_words
) -> Any:
    """`data` as the structure `tp`; PlaybookError names the key under `where` (a rule's, or the file's with ": ")."""
    try:
        return convert(data, tp, unknown_key=unknown_key, expected_from_description=True)
    except SchemaError as exc:
        raise PlaybookError(f"{where}{sep}{exc.key}: {exc.problem}" if exc.key else f"{where}: {exc.problem}") from None


def parse_playbook(data: Any, source: str = "<memory>") -> Playbook:
    spec: PlaybookFile = _spec(data, PlaybookFile, source, ": ")
    defaults = spec.defaults or {}
    if own := next((key for key in OWN_KEYS if key in defaults), None):
        raise PlaybookError(
            f"{source}: defaults.{own}: a rule's own key, not a default (each rule gives its own {own})"
        )
    try:
        _rule({**defaults, "name": "defaults", "match": [], "steps": []}, "defaults", {}, allow_empty=True)
    except PlaybookError as exc:
        raise PlaybookError(f"{source}: {exc}") from exc
    rules: list[Rule] = []
    names: set[str] = set()
    for i, raw in enumerate(spec.rules):
        try:
            rule = _rule(raw, f"rules[{i}]", defaults)
        except PlaybookError as exc:
            raise PlaybookError(f"{source}: {exc}") from exc
        if rule.name in names:
            raise PlaybookError(f"{source}: rules[{i}].name: duplicate rule name {rule.name!r}")
        names.add(rule.name)
        rules.append(rule)
    for i, rule in enumerate(rules):
        unknown = [name for name in rule.defers_to if name not in names or name == rule.name]
        if unknown:
            raise PlaybookError(
                f"{source}: rules[{i}].defers_to.rules: {unknown[0]!r} is not another rule of this playbook"
            )
    canonical = json.dumps(data, sort_keys=True, default=str).encode()
    return Playbook(rules, source, version=hashlib.sha256(canonical).hexdigest()[:16])


# Mappings a rule refines key by key rather than replaces: the defaults' values stand for the keys it does not set.
MERGED_KEYS = ("verify", "backoff")


def _merged(raw: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """A rule over the playbook's defaults: a rule's `verify: {expr: ...}` keeps the defaults' interval and deadline."""
    data = {**defaults, **raw}
    for key in MERGED_KEYS:
        base, own = defaults.get(key), raw.get(key)
        if isinstance(base, dict) and key in raw:
            data[key] = {**base, **own} if isinstance(own, dict) else base if own is True else own
    return data


def _rule(raw: Any, where: str, defaults: dict[str, Any], allow_empty: bool = False) -> Rule:
    if not isinstance(raw, dict):
        raise PlaybookError(f"{where}: expected a mapping")
    unknown_key = _default_key if allow_empty else unknown_key_words  # allow_empty: the playbook's defaults
    spec: RuleSpec = _spec(_merged(raw, defaults), RuleSpec, where, unknown_key=unknown_key)
    matchers = _matchers(spec.match, f"{where}.match", allow_empty)
    timeout = _duration(spec.timeout, f"{where}.timeout")
    if not spec.steps and not allow_empty:
        raise PlaybookError(f"{where}.steps: expected a non-empty list of steps")
    approval = _approval_settings(spec, where, (None, DEFAULT_APPROVAL_TIMEOUT, "escalate"))
    steps = tuple(_step(s, f"{where}.steps[{j}]", timeout, approval) for j, s in enumerate(spec.steps))
    on_recovery = tuple(_step(s, f"{where}.on_recovery[{j}]", timeout) for j, s in enumerate(spec.on_recovery))
    for j, step in enumerate(on_recovery):
        if step.approval:
            raise PlaybookError(f"{where}.on_recovery[{j}].approval: only a rule's steps wait for an approval")
    if "\n" in spec.summary.strip():
        raise PlaybookError(f"{where}.summary: expected one line of text")
    return Rule(
        name=spec.name,
        matchers=matchers,
        steps=steps,
        wait_for=_duration(spec.wait_for, f"{where}.wait_for"),
        max_attempts=spec.max_attempts,
        backoff=_backoff(spec.backoff or BackoffSpec(), f"{where}.backoff"),
        cooldown=_duration(spec.cooldown, f"{where}.cooldown"),
        verify=_verify(spec.verify, f"{where}.verify"),
        on_failure=spec.on_failure,
        allow_destructive=spec.allow_destructive,
        target_label=spec.target_label,
        on_recovery=on_recovery,
        summary=spec.summary.strip(),
        on_unknown=spec.on_unknown,
        hard_limit=_matchers(spec.hard_limit, f"{where}.hard_limit", allow_empty=True),
        reopen_when=_reopen_when(spec.reopen_when, f"{where}.reopen_when"),
        defers_to=tuple(spec.defers_to.rules) if spec.defers_to else (),
        defer_within=(
            _duration(spec.defers_to.within, f"{where}.defers_to.within")
            if spec.defers_to
            else DEFAULT_DEFER_WITHIN_SECONDS
        ),
    )


def _reopen_when(expr: str | None, where: str) -> str | None:
    if expr is not None and not expr.strip():
        raise PlaybookError(f"{where}: expected a PromQL expression")
    return expr


ApprovalSettings = tuple[str | None, float, str]


def _approval_settings(spec: RuleSpec | StepKeys, where: str, inherited: ApprovalSettings) -> ApprovalSettings:
    """`approval` (required, none or unset), `approval_timeout` and `on_timeout` of a rule or a step."""
    timeout = inherited[1]
    if spec.approval_timeout is not None:
        timeout = _duration(spec.approval_timeout, f"{where}.approval_timeout")
        if timeout <= 0:
            raise PlaybookError(f"{where}.approval_timeout: expected a duration longer than 0")
    return spec.approval or inherited[0], timeout, spec.on_timeout or inherited[2]


def _default_key(struct: type, name: str) -> str:
    """The message for a key `defaults` does not have: it lists those it has (a rule's, but its own)."""
    if struct is not RuleSpec:  # a key of its backoff or verify
        return unknown_key_words(struct, name)
    known = ", ".join(f.name for f in msgspec.structs.fields(RuleSpec) if f.name not in OWN_KEYS)
    return f"unknown key (known: {known})"


def _matchers(raw: list[Any] | dict[str, Any], where: str, allow_empty: bool) -> tuple[Matcher, ...]:
    texts = [_mapped_matcher(k, v, where) for k, v in raw.items()] if isinstance(raw, dict) else raw
    if not texts and not allow_empty:
        raise PlaybookError(f'{where}: expected a list of matchers like alertname="TradingBotDown"')
    out = []
    for k, text in enumerate(texts):
        try:
            out.append(parse_matcher(str(text)))
        except ValueError as exc:
            raise PlaybookError(f"{where}[{k}]: {exc}") from exc
    return tuple(out)


def _mapped_matcher(name: Any, value: Any, where: str) -> str:
    """An entry `name: value` of a mapping of matchers as the matcher `name="value"`: its key a label name (not a
    matcher: `job=~a` would read as one), its value a string or a number (true is no label value)."""
    if not isinstance(name, str) or not IDENTIFIER_RE.fullmatch(name):
        raise PlaybookError(
            f"{where}: {describe(name)} is not a label name (a mapping's keys are; =~, != and !~ take the list form)"
        )
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise PlaybookError(f"{where}.{name}: expected a string or a number, got {describe(value)}")
    return f'{name}="{value}"'


def _step(
    raw: Any, where: str, default_timeout: float, rule_approval: ApprovalSettings = (None, 900.0, "escalate")
) -> StepSpec:
    if not isinstance(raw, dict):
        raise PlaybookError(f"{where}: expected a mapping with `action`")
    keys: StepKeys = _spec(raw, StepKeys, where)
    kind = keys.action
    if not isinstance(kind, str):
        raise PlaybookError(f"{where}.action: expected an action name ({', '.join(ACTIONS)}), got {kind!r:.40}")
    if kind not in ACTIONS:
        raise PlaybookError(f"{where}.action: unknown action {kind!r} (known: {', '.join(ACTIONS)})")
    action = ACTIONS[kind]
    params = {k: v for k, v in raw.items() if k not in STEP_KEYS}
    try:
        action.validate(params)
    except ValueError as exc:
        raise PlaybookError(f"{where}.{exc}") from exc
    risk = keys.risk or action.risk(params)
    # A step may declare itself riskier than its kind, never safer.
    if RISKS.index(risk) < RISKS.index(action.risk(params)):
        raise PlaybookError(f"{where}.risk: {kind} {action.describe(params)} is {action.risk(params)}, not {risk}")
    timeout = _duration(default_timeout if keys.timeout is None else keys.timeout, f"{where}.timeout")
    name = keys.name or action.describe(params)
    own, approval_timeout, on_timeout = _approval_settings(keys, where, (None, *rule_approval[1:]))
    if own is None:
        own = action.default_approval(params)  # e.g. a venue flatten, which waits for a person by default
    # The step's own `approval` decides; else the rule's `approval: required` covers its disruptive and destructive
    # steps.
    required = own == "required" if own is not None else rule_approval[0] == "required" and risk in RISKY
    return StepSpec(kind, params, timeout, risk, name, required, approval_timeout, on_timeout)


def _duration(value: Any, where: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise PlaybookError(f"{where}: {exc}") from exc
    if seconds > MAX_DURATION_SECONDS:
        raise PlaybookError(f"{where}: {str(value)[:40]} is longer than the 100 years a playbook duration may be")
    return seconds


def _backoff(spec: BackoffSpec, where: str) -> Backoff:
    return Backoff(
        initial=_duration(spec.initial, f"{where}.initial"),
        max=_duration(spec.max, f"{where}.max"),
        multiplier=spec.multiplier,
        jitter=spec.jitter,
    )


def _verify(spec: bool | VerifySpec, where: str) -> Verify:
    if isinstance(spec, bool):
        return Verify(enabled=spec)
    if spec.expr is not None and not spec.expr.strip():
        raise PlaybookError(f"{where}.expr: expected a PromQL expression")
    return Verify(
        enabled=spec.enabled,
        expr=spec.expr,
        deadline=_duration(spec.deadline, f"{where}.deadline"),
        interval=_duration(spec.interval, f"{where}.interval"),
    )
