"""Durations in playbooks, settings and the Prometheus and Alertmanager files the local stack adapts."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trading_ops.durations import DURATION_PATTERN, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10),
        ("2m", 120),
        ("1h30m", 5400),
        ("500ms", 0.5),
        ("1d", 86400),
        ("0", 0),
        ("1m30s", 90),
        ("2w", 1209600),
    ],
)
def test_prometheus_durations_parse_and_format_back(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(("seconds", "text"), [(7 * 86400, "7d"), (400 * 86400 + 90, "400d1m30s"), (14 * 86400, "14d")])
def test_durations_are_written_in_days_at_most_as_windows_are_given(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("value", "seconds"), [("1.5s", 1.5), ("2.5m", 150), ("30", 30), (" 5m ", 300), (2.5, 2.5), (0, 0)]
)
def test_hand_written_forms_of_playbooks_are_accepted(value: str | float, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "bad", ["", "ten seconds", "5 m", "-1s", "1x", "1h-5m", "1.5h30m", -1, math.nan, math.inf, True]
)
def test_a_bad_duration_is_refused_naming_it(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)  # type: ignore[arg-type]


@settings(max_examples=500)
@given(st.text(alphabet="0123456789.smhdwy \t-", max_size=8) | st.sampled_from(["1h30m", "2w3d", "1.5ms", "500ms"]))
def test_the_duration_pattern_of_json_schemas_is_what_parse_duration_reads(text: str) -> None:
    """`trading-ops playbook schema` says which strings are durations with DURATION_PATTERN: exactly these."""
    try:
        parse_duration(text)
    except ValueError as refused:
        # The pattern is the shape of a duration; how long one may be (under 10,000 years) is not its to say.
        assert "10,000 years" in str(refused) or re.search(DURATION_PATTERN, text) is None, text
    else:
        assert re.search(DURATION_PATTERN, text) is not None, text
