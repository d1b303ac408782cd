"""Regular expressions of label matchers as Alertmanager runs them: RE2 (linear time), anchored at both ends.

Patterns come from playbooks, the configuration and, through Alertmanager's silences, from anyone who can reach
its API: Python's backtracking `re` would let `(.*)*(.*)*(.*)*z` stall the event loop for seconds per check."""

from __future__ import annotations

import functools
from typing import Any, Protocol

import re2

# Compiled patterns kept (silences are re-read every few seconds: the same few patterns again and again).
CACHE_SIZE = 1024
# Alertmanager anchors every matcher regex (Go's regexp, RE2 syntax): `^(?:<pattern>)$`.
ANCHORED = "^(?:{})$"


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # a bad pattern is our one-line error, not also a line of RE2's own on stderr
    return options


OPTIONS = _options()


class Pattern(Protocol):
    """What a compiled pattern offers (RE2's and `re`'s alike)."""

    @property
    def pattern(self) -> str: ...

    def fullmatch(self, text: str) -> Any: ...


class RegexError(ValueError):
    """A pattern RE2 does not accept (lookarounds and backreferences, say), named in one line."""


def _compile(text: str, shown: str) -> Any:
    try:
        return re2.compile(text, OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else exc
        raise RegexError(f"invalid regular expression {shown[:60]!r} (RE2 syntax): {reason}") from None


@functools.lru_cache(maxsize=CACHE_SIZE)
def compile_matcher(pattern: str) -> Any:
    """`pattern` anchored as Alertmanager anchors it, compiled by RE2; RegexError when RE2 refuses it."""
    return _compile(ANCHORED.format(pattern), pattern)


def compile_pattern(pattern: str) -> Pattern:
    """`pattern` as written (its own anchors, if any), compiled by RE2: for the configuration's own patterns."""
    compiled: Pattern = _compile(pattern, pattern)
    return compiled


def regex_matches(pattern: str, value: str) -> bool:
    """Whether the whole of `value` matches `pattern` (RegexError for a pattern RE2 refuses)."""
    return compile_matcher(pattern).search(value) is not None
