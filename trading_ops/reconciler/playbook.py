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
from typing import Any

import yaml

from trading_ops.durations import parse_duration
from trading_ops.matchers import compile_matcher, regex_matches
from trading_ops.reconciler.actions import ACTIONS
from trading_ops.reconciler.actions.base import RISKS
from trading_ops.reconciler.packaged_playbooks import DEFAULT_PLAYBOOK, PACKAGED_PLAYBOOKS

MATCHER_RE = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(?:"((?:[^"\\]|\\.)*)"|(\S*))\s*$')
STEP_KEYS = ("action", "name", "timeout", "risk", "approval", "approval_timeout", "on_timeout")
RULE_KEYS = (
    "name",
    "match",
    "steps",
    "wait_for",
    "timeout",
    "max_attempts",
    "backoff",
    "cooldown",
    "verify",
    "on_failure",
    "allow_destructive",
    "target_label",
    "on_recovery",
    "summary",
    "on_unknown",
    "approval",
    "approval_timeout",
    "on_timeout",
    "hard_limit",
)
ON_FAILURE = ("escalate", "none")
# What a run does with a step whose outcome is unknown (the reconciler died while it ran): run it again, or page a
# human and do nothing more. Unset: escalate for a disruptive or destructive step, retry for a safe one.
ON_UNKNOWN = ("retry", "escalate")
RISKY = ("disruptive", "destructive")
# `approval: required` on a step: it waits for a person's decision (trading_ops.reconciler.approvals). On a rule: each
# of its disruptive and destructive steps does (a step's own `approval: none` exempts it).
APPROVAL = ("required", "none")
# What an approval nobody answered in time does: page and end the episode escalated, or skip the step and go on.
ON_TIMEOUT = ("escalate", "skip")
DEFAULT_APPROVAL_TIMEOUT = 900.0
IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
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


def parse_playbook(data: Any, source: str = "<memory>") -> Playbook:
    if not isinstance(data, dict):
        raise PlaybookError(f"{source}: expected a mapping with `rules`")
    unknown = set(data) - {"version", "defaults", "rules"}
    if unknown:
        raise PlaybookError(f"{source}: {sorted(unknown)[0]}: unknown key (known: version, defaults, rules)")
    defaults = data.get("defaults") or {}
    rules_data = data.get("rules")
    if not isinstance(defaults, dict):
        raise PlaybookError(f"{source}: defaults: expected a mapping")
    if not isinstance(rules_data, list) or not rules_data:
        raise PlaybookError(f"{source}: rules: expected a non-empty list")
    try:
        _rule({**defaults, "name": "defaults", "match": [], "steps": []}, "defaults", {}, allow_empty=True)
    except PlaybookError as exc:
        raise PlaybookError(f"{source}: {exc}") from exc
    rules: list[Rule] = []
    names: set[str] = set()
    for i, raw in enumerate(rules_data):
        try:
            rule = _rule(raw, f"rules[{i}]", defaults)
        except PlaybookError as exc:
            raise PlaybookError(f"{source}: {exc}") from exc
        if rule.name in names:
            raise PlaybookError(f"{source}: rules[{i}].name: duplicate rule name {rule.name!r}")
        names.add(rule.name)
        rules.append(rule)
    canonical = json.dumps(data, sort_keys=True, default=str).encode()
    return Playbook(rules, source, version=hashlib.sha256(canonical).hexdigest()[:16])


# Mappings a rule refines key by key rather than replaces: the defaults' values stand for the keys it does not set.
MERGED_KEYS = ("verify", "backoff")


def _rule(raw: Any, where: str, defaults: dict[str, Any], allow_empty: bool = False) -> Rule:
    if not isinstance(raw, dict):
        raise PlaybookError(f"{where}: expected a mapping")
    data = {**defaults, **raw}
    for key in MERGED_KEYS:  # a rule's `verify: {expr: ...}` keeps the defaults' interval and deadline
        base, own = defaults.get(key), raw.get(key)
        if isinstance(base, dict) and key in raw:
            data[key] = {**base, **own} if isinstance(own, dict) else base if own is True else own
    for key in data:
        if key not in RULE_KEYS:
            raise PlaybookError(f"{where}.{key}: unknown key (known: {', '.join(RULE_KEYS)})")
    name = data.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", name):
        raise PlaybookError(f"{where}.name: expected a name of letters, digits, '_', '.', '-'")
    matchers = _matchers(data.get("match"), f"{where}.match", allow_empty)
    timeout = _duration(data.get("timeout", 30), f"{where}.timeout")
    allow_destructive = data.get("allow_destructive", False)
    if not isinstance(allow_destructive, bool):
        raise PlaybookError(f"{where}.allow_destructive: expected true or false")
    steps_data = data.get("steps")
    if not isinstance(steps_data, list) or (not steps_data and not allow_empty):
        raise PlaybookError(f"{where}.steps: expected a non-empty list of steps")
    approval = _approval_settings(data, where, (None, DEFAULT_APPROVAL_TIMEOUT, "escalate"))
    steps = tuple(_step(s, f"{where}.steps[{j}]", timeout, approval) for j, s in enumerate(steps_data))
    recovery_data = data.get("on_recovery", [])
    if not isinstance(recovery_data, list):
        raise PlaybookError(f"{where}.on_recovery: expected a list of steps")
    on_recovery = tuple(_step(s, f"{where}.on_recovery[{j}]", timeout) for j, s in enumerate(recovery_data))
    for j, step in enumerate(on_recovery):
        if step.approval:
            raise PlaybookError(f"{where}.on_recovery[{j}].approval: only a rule's steps wait for an approval")
    hard_limit = _matchers(data.get("hard_limit", []), f"{where}.hard_limit", allow_empty=True)
    max_attempts = data.get("max_attempts", 2)
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise PlaybookError(f"{where}.max_attempts: expected an integer >= 1")
    on_failure = data.get("on_failure", "escalate")
    if on_failure not in ON_FAILURE:
        raise PlaybookError(f"{where}.on_failure: expected one of {', '.join(ON_FAILURE)}")
    on_unknown = data.get("on_unknown")
    if on_unknown is not None and on_unknown not in ON_UNKNOWN:
        raise PlaybookError(f"{where}.on_unknown: expected one of {', '.join(ON_UNKNOWN)}")
    target_label = data.get("target_label", "instance")
    if not isinstance(target_label, str):
        raise PlaybookError(f"{where}.target_label: expected a label name")
    summary = data.get("summary", "")
    if not isinstance(summary, str) or "\n" in summary.strip():
        raise PlaybookError(f"{where}.summary: expected one line of text")
    return Rule(
        name=name,
        matchers=matchers,
        steps=steps,
        wait_for=_duration(data.get("wait_for", 0), f"{where}.wait_for"),
        max_attempts=max_attempts,
        backoff=_backoff(data.get("backoff") or {}, f"{where}.backoff"),
        cooldown=_duration(data.get("cooldown", 300), f"{where}.cooldown"),
        verify=_verify(data.get("verify", True), f"{where}.verify"),
        on_failure=on_failure,
        allow_destructive=allow_destructive,
        target_label=target_label,
        on_recovery=on_recovery,
        summary=summary.strip(),
        on_unknown=on_unknown,
        hard_limit=hard_limit,
    )


ApprovalSettings = tuple[str | None, float, str]


def _approval_settings(raw: dict[str, Any], where: str, inherited: ApprovalSettings) -> ApprovalSettings:
    """`approval` (required, none or unset), `approval_timeout` and `on_timeout` of a rule or a step."""
    approval = raw.get("approval", inherited[0])
    if approval is not None and approval not in APPROVAL:
        raise PlaybookError(f"{where}.approval: expected one of {', '.join(APPROVAL)}")
    timeout = inherited[1]
    if "approval_timeout" in raw:
        timeout = _duration(raw["approval_timeout"], f"{where}.approval_timeout")
        if timeout <= 0:
            raise PlaybookError(f"{where}.approval_timeout: expected a duration longer than 0")
    on_timeout = raw.get("on_timeout", inherited[2])
    if on_timeout not in ON_TIMEOUT:
        raise PlaybookError(f"{where}.on_timeout: expected one of {', '.join(ON_TIMEOUT)}")
    return approval, timeout, on_timeout


def _matchers(raw: Any, where: str, allow_empty: bool) -> tuple[Matcher, ...]:
    if isinstance(raw, dict):
        raw = [f'{k}="{v}"' for k, v in raw.items()]
    if not isinstance(raw, list) or (not raw and not allow_empty):
        raise PlaybookError(f'{where}: expected a list of matchers like alertname="TradingBotDown"')
    out = []
    for k, text in enumerate(raw):
        try:
            out.append(parse_matcher(str(text)))
        except ValueError as exc:
            raise PlaybookError(f"{where}[{k}]: {exc}") from exc
    return tuple(out)


def _step(
    raw: Any, where: str, default_timeout: float, rule_approval: ApprovalSettings = (None, 900.0, "escalate")
) -> StepSpec:
    if not isinstance(raw, dict):
        raise PlaybookError(f"{where}: expected a mapping with `action`")
    kind = raw.get("action")
    if kind not in ACTIONS:
        raise PlaybookError(f"{where}.action: unknown action {kind!r} (known: {', '.join(ACTIONS)})")
    action = ACTIONS[kind]
    params = {k: v for k, v in raw.items() if k not in STEP_KEYS}
    try:
        action.validate(params)
    except ValueError as exc:
        raise PlaybookError(f"{where}.{exc}") from exc
    risk = raw.get("risk", action.risk(params))
    if risk not in RISKS:
        raise PlaybookError(f"{where}.risk: expected one of {', '.join(RISKS)}")
    # A step may declare itself riskier than its kind, never safer.
    if RISKS.index(risk) < RISKS.index(action.risk(params)):
        raise PlaybookError(f"{where}.risk: {kind} {action.describe(params)} is {action.risk(params)}, not {risk}")
    timeout = _duration(raw.get("timeout", default_timeout), f"{where}.timeout")
    name = str(raw.get("name") or action.describe(params))
    own, approval_timeout, on_timeout = _approval_settings(raw, where, (None, *rule_approval[1:]))
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


def _backoff(raw: Any, where: str) -> Backoff:
    if not isinstance(raw, dict):
        raise PlaybookError(f"{where}: expected a mapping (initial, max, multiplier, jitter)")
    for key in raw:
        if key not in ("initial", "max", "multiplier", "jitter"):
            raise PlaybookError(f"{where}.{key}: unknown key (known: initial, max, multiplier, jitter)")
    jitter = raw.get("jitter", 0.2)
    multiplier = raw.get("multiplier", 2.0)
    if not isinstance(jitter, int | float) or not 0 <= jitter <= 1:
        raise PlaybookError(f"{where}.jitter: expected a number between 0 and 1")
    if not isinstance(multiplier, int | float) or multiplier < 1:
        raise PlaybookError(f"{where}.multiplier: expected a number >= 1")
    return Backoff(
        initial=_duration(raw.get("initial", 5), f"{where}.initial"),
        max=_duration(raw.get("max", 300), f"{where}.max"),
        multiplier=float(multiplier),
        jitter=float(jitter),
    )


def _verify(raw: Any, where: str) -> Verify:
    if isinstance(raw, bool):
        return Verify(enabled=raw)
    if not isinstance(raw, dict):
        raise PlaybookError(f"{where}: expected true, false or a mapping (expr, deadline, interval)")
    for key in raw:
        if key not in ("expr", "deadline", "interval", "enabled"):
            raise PlaybookError(f"{where}.{key}: unknown key (known: enabled, expr, deadline, interval)")
    expr = raw.get("expr")
    if expr is not None and (not isinstance(expr, str) or not expr.strip()):
        raise PlaybookError(f"{where}.expr: expected a PromQL expression")
    return Verify(
        enabled=bool(raw.get("enabled", True)),
        expr=expr,
        deadline=_duration(raw.get("deadline", 120), f"{where}.deadline"),
        interval=_duration(raw.get("interval", 5), f"{where}.interval"),
    )
