"""Prometheus and Alertmanager duration strings (`1h30m`, `10s`, `500ms`) to seconds and back."""

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


def parse_duration(text: str | int | float) -> float:
    """Seconds in a duration string; raises ValueError for anything Prometheus would reject."""
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int | float):
        return float(text)
    text = text.strip()
    if text == "0":
        return 0.0
    found = DURATION_RE.match(text)
    if not text or found is None:
        raise ValueError(f"not a duration: {text!r}")
    return sum(int(value) * seconds for value, (_, seconds) in zip(found.groups(), UNITS, strict=True) if value)


def format_duration(seconds: float) -> str:
    """The shortest duration string for `seconds` (rounded to milliseconds): 90 -> `1m30s`, 0.5 -> `500ms`."""
    millis = round(seconds * 1000)
    if millis <= 0:
        return "0s"
    parts = []
    for unit, size in UNITS:
        size_ms = round(size * 1000)
        count, millis = divmod(millis, size_ms)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
