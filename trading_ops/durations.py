"""Durations as Prometheus and Alertmanager write them (`1h30m`, `10s`, `500ms`) to seconds and back."""

from __future__ import annotations

import re

# Units of the Prometheus duration format (model.ParseDuration), largest first.
UNITS: tuple[tuple[str, float], ...] = (
    ("y", 365 * 86400.0),
    ("w", 7 * 86400.0),
    ("d", 86400.0),
    ("h", 3600.0),
    ("m", 60.0),
    ("s", 1.0),
    ("ms", 0.001),
)
DURATION_RE = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
# The longest duration text read (`1y2w3d4h5m6s7ms` is 15), and the largest duration: what a timedelta holds.
MAX_DURATION_CHARS = 64
MAX_SECONDS = 10_000 * 365 * 86400.0
# Also accepted (playbooks and settings written by hand): a decimal number of one unit, `2.5s`, `1.5h`, or bare `30`.
DECIMAL_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
# The strings parse_duration reads, as one regular expression of both Python's and JSON Schema's (ECMA-262) dialect:
# what a JSON Schema says a duration is (`trading-ops playbook schema`).
DURATION_PATTERN = (
    r"^\s*(?:\d+(?:\.\d+)?(?:ms|s|m|h|d)?|(?=\d)(?:\d+y)?(?:\d+w)?(?:\d+d)?(?:\d+h)?(?:\d+m)?(?:\d+s)?(?:\d+ms)?)\s*$"
)


def parse_duration(text: str | int | float) -> float:
    """Seconds in a duration: a number of seconds, a Prometheus duration (`1h30m`) or one decimal unit (`2.5s`).

    Raises ValueError, naming what was given, for anything else (negative, empty, unknown unit)."""
    if isinstance(text, bool):
        raise ValueError(f"expected a duration like 30s, 5m or 1h, got {text!r}")
    if isinstance(text, int | float):
        if not 0 <= text < MAX_SECONDS:  # negative, NaN, infinite or past any calendar
            raise ValueError(f"expected a non-negative duration of less than 10,000 years, got {str(text)[:40]}")
        return float(text)
    if not isinstance(text, str):
        raise ValueError(f"expected a duration like 30s, 5m or 1h, got {str(text)[:40]!r}")
    text = text.strip()
    decimal = DECIMAL_RE.match(text)
    found = None if decimal else DURATION_RE.match(text)
    if not text or (decimal is None and found is None):
        raise ValueError(f"expected a duration like 30s, 5m or 1h, got {text[:40]!r}")
    # Hundreds of digits (`1h` then 999...) are a number no float holds, or one past any calendar: refused as a
    # duration, never an OverflowError (or an infinite timedelta) further on.
    if len(text) > MAX_DURATION_CHARS:
        raise ValueError(f"expected a duration like 30s, 5m or 1h, got {len(text)} characters")
    if decimal is not None:
        seconds = float(decimal.group(1)) * dict(UNITS)[decimal.group(2) or "s"]
    else:
        assert found is not None
        seconds = sum(int(value) * size for value, (_, size) in zip(found.groups(), UNITS, strict=True) if value)
    if not seconds < MAX_SECONDS:
        raise ValueError(f"expected a duration of less than 10,000 years, got {text[:40]!r}")
    return float(seconds)


def format_duration(seconds: float) -> str:
    """The shortest duration string for `seconds` (rounded to milliseconds) in days at most: 90 -> `1m30s`, 0.5 ->
    `500ms`, a week -> `7d` (windows are written in days: `--window 7d` is shown as given, not as `1w`; weeks and years
    are read, never written)."""
    millis = round(seconds * 1000)
    if millis <= 0:
        return "0s"
    parts = []
    for unit, size in UNITS:
        if unit in ("y", "w"):
            continue
        size_ms = round(size * 1000)
        count, millis = divmod(millis, size_ms)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
