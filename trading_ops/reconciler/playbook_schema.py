"""The JSON Schema of a playbook file as it is written (`trading-ops playbook schema`), for editors.

The loader (trading_ops.reconciler.playbook) converts each rule after merging it with the file's `defaults`, so its
structures describe a merged rule. The file's own document types are made here from the loader's: `defaults` takes
every setting of a rule; a rule needs its name, match and steps, and its settings may come from `defaults`; a step
is one structure per action kind, tagged by `action`, with that kind's parameters. Where cheap, the schema says what
the loader checks beyond types (durations, matchers, one-line summaries, a step's risk not below its kind's); what it
cannot say (duplicate names, RE2's refusals, a bot step's risk by command, a duration longer than 100 years written
as text, a URL's host) stays the loader's, which loads every file the schema accepts otherwise.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from trading_ops.reconciler.actions import ACTIONS, Action
from trading_ops.reconciler.actions.base import RISKS
from trading_ops.reconciler.playbook import (
    LABEL_NAME_PATTERN,
    MAX_DURATION_SECONDS,
    OWN_KEYS,
    Approval,
    BackoffSpec,
    DefersToSpec,
    Duration,
    Expected,
    PlaybookFile,
    RuleSpec,
    StepKeys,
    VerifySpec,
)
from trading_ops.schema import duration_type, json_schema, one_of

TITLE = "trading-ops playbook"
MATCHER_WORDS = 'a matcher like alertname="TradingBotDown" (=, !=, =~, !~)'
# A matcher as parse_matcher reads it (MATCHER_RE): a value in quotes with its quotes escaped, or a value without
# quotes that does not start with one (so `=~"` is not read as `=` and `~"`).
MATCHER_PATTERN = r'^\s*[A-Za-z_][A-Za-z0-9_]*\s*(?:=~|!~|!=|=(?!~))\s*(?:"(?:[^"\\]|\\.)*"|[^\s"]\S*|)\s*$'
# A value of the mapping form of `match` ({label: value}): the loader quotes it, so a quote in it must be escaped.
QUOTED_VALUE_PATTERN = r'^(?:[^"\\]|\\.)*$'
DEFAULTS_DOC = "What every rule takes unless it says otherwise (a rule's verify and backoff refine these key by key)."
# Python's types of action parameters (Action.params) as a JSON Schema says them.
PARAM_TYPES: dict[type, Any] = {str: str, int: int, float: float, bool: bool, list: list[Any], dict: dict[str, Any]}

PlaybookDuration = duration_type(MAX_DURATION_SECONDS)
PositiveDuration = duration_type(MAX_DURATION_SECONDS, positive=True)
MatcherText = Annotated[str, msgspec.Meta(pattern=MATCHER_PATTERN, description=MATCHER_WORDS)]
MatcherMap = dict[
    Annotated[str, msgspec.Meta(pattern=LABEL_NAME_PATTERN)],
    Annotated[str, msgspec.Meta(pattern=QUOTED_VALUE_PATTERN)] | float,
]
Matchers = list[MatcherText] | MatcherMap
NonEmptyMatchers = (
    Annotated[list[MatcherText], msgspec.Meta(min_length=1)] | Annotated[MatcherMap, msgspec.Meta(min_length=1)]
)
OneLine = Annotated[str, Expected(pattern=r"^\s*[^\n]*\s*$", description="one line of text")]
Expression = Annotated[str, Expected(pattern=r"\S", description="a PromQL expression")]


def _struct(name: str, doc: str | None, fields: list[tuple[Any, ...]], **options: Any) -> type[msgspec.Struct]:
    return msgspec.defstruct(
        name, fields, kw_only=True, forbid_unknown_fields=True, module=__name__, namespace={"__doc__": doc}, **options
    )


def _given(tp: Any) -> tuple[Any, Any]:
    """A field the file may leave out, with no default in the schema (the playbook's defaults may give it)."""
    return tp | msgspec.UnsetType, msgspec.UNSET


def _fields(spec: type[msgspec.Struct], types: dict[str, Any], own: tuple[str, ...], shown: bool) -> list[Any]:
    """The fields of `spec` with the types of `types` where it names them (else a Duration as a playbook's): those
    of `own` required, the others optional with the loader's defaults if `shown`, else without one."""
    out: list[tuple[Any, ...]] = []
    for f in msgspec.structs.fields(spec):
        tp = types.get(f.name, PlaybookDuration if f.type == Duration else f.type)
        if f.name in own:
            out.append((f.name, tp))
        elif shown:
            default = f.default if f.default is not msgspec.NODEFAULT else f.default_factory()
            out.append((f.name, tp, default))
        else:
            out.append((f.name, *_given(tp)))
    return out


def _step_struct(action: Action, recovery: bool) -> type[msgspec.Struct]:
    """A step of the kind `action`: its own keys and its parameters; `recovery`, a step of `on_recovery` (which never
    waits for an approval)."""
    overridable = type(action).risk is Action.risk  # a kind whose risk depends on its parameters takes any risk
    risks = RISKS[RISKS.index(action.default_risk) :] if overridable else RISKS
    keys = {
        "timeout": PlaybookDuration | None,
        "risk": Annotated[one_of(risks), Expected(description=f"one of {', '.join(risks)}")] | None,
        "approval": (Literal["none"] if recovery else Approval) | None,
        "approval_timeout": PositiveDuration | None,
    }
    fields: list[tuple[Any, ...]] = [
        (f.name, *_given(keys.get(f.name, f.type))) for f in msgspec.structs.fields(StepKeys) if f.name != "action"
    ]
    for name, (python_type, required) in action.params.items():
        if name in action.schema:
            tp = action.schema[name]
        elif isinstance(python_type, tuple):
            tp = _union([PARAM_TYPES[t] for t in python_type])
        else:
            tp = PARAM_TYPES[python_type]
        fields.append((name, tp) if required else (name, *_given(tp)))
    name = f"{action.kind.title().replace('_', '')}{'RecoveryStep' if recovery else 'Step'}"
    doc = f"A step of kind {action.kind}: its own keys and the {action.kind} action's parameters."
    return _struct(name, doc, fields, tag_field="action", tag=action.kind)


def _union(types: list[Any]) -> Any:
    union = types[0]
    for tp in types[1:]:
        union = union | tp
    return union


def document_type() -> type[msgspec.Struct]:
    """The playbook file as written: its top-level keys, `defaults`, the rules, their steps."""
    backoff = _struct("Backoff", BackoffSpec.__doc__, _fields(BackoffSpec, {}, (), shown=False))
    verify = _struct("Verify", VerifySpec.__doc__, _fields(VerifySpec, {"expr": Expression | None}, (), shown=False))
    # Its `within` a playbook's duration (at least 0, at most the longest), as every other duration of the file.
    defers_to = _struct("DefersTo", DefersToSpec.__doc__, _fields(DefersToSpec, {}, ("rules",), shown=True))
    steps = _union([_step_struct(a, recovery=False) for a in ACTIONS.values()])
    recovery_steps = _union([_step_struct(a, recovery=True) for a in ACTIONS.values()])
    settings = {
        "steps": Annotated[list[steps], Expected(min_length=1, description="a non-empty list of steps")],  # type: ignore[valid-type]
        "match": NonEmptyMatchers,
        "hard_limit": Matchers,
        "on_recovery": list[recovery_steps],  # type: ignore[valid-type]
        "summary": OneLine,
        "approval_timeout": PositiveDuration | None,
        "backoff": backoff | None,
        "verify": bool | verify,
        "reopen_when": Expression | None,
        "defers_to": defers_to | None,
    }
    rule = _struct("Rule", RuleSpec.__doc__, _fields(RuleSpec, settings, OWN_KEYS, shown=False))
    defaults_fields = [f for f in _fields(RuleSpec, settings, OWN_KEYS, shown=True) if f[0] not in OWN_KEYS]
    defaults = _struct("Defaults", DEFAULTS_DOC, defaults_fields)
    top = [
        ("version", *_given(Any)),
        ("defaults", *_given(defaults | None)),
        ("rules", Annotated[list[rule], Expected(min_length=1, description="a non-empty list")]),  # type: ignore[valid-type]
    ]
    return _struct("Playbook", PlaybookFile.__doc__, top)


def playbook_schema() -> dict[str, Any]:
    """The JSON Schema of a playbook file (`trading-ops playbook schema`)."""
    return json_schema(document_type(), TITLE)
