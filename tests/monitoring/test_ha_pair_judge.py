"""The HA pair's judge (tests/ha_pair_returns.py) tells alertmanager#2447's stale views from false pages: a firing
of alerts the other member resolved within the window only; every other firing after a resolution is a page."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from ha_pair_returns import Pager

A, B = "http://127.0.0.1:1/a", "http://127.0.0.1:2/b"
STARTS = ("2026-11-29T00:29:08.003Z", "2026-11-29T00:29:20.003Z", "2026-11-29T00:29:30.003Z")


def note(at: float, status: str, member: str, start: str, host: str = "127.0.0.21:1") -> dict[str, Any]:
    labels = {"alertname": "TradingBotHostDown", "instance": host}
    return {
        "at": at,
        "status": status,
        "externalURL": member,
        "groupKey": f"{{}}:{labels}",
        "groupLabels": labels,
        "commonLabels": labels,
        "alerts": [{"status": status, "labels": labels, "startsAt": start}],
    }


@pytest.fixture
def pager() -> Iterator[Pager]:
    pager = Pager()
    try:
        yield pager
    finally:
        pager.close()


def test_only_the_other_members_firing_within_the_window_is_a_stale_view(pager: Pager) -> None:
    pager.notifications = [
        note(25.4, "firing", A, STARTS[0]),
        note(29.4, "resolved", A, STARTS[0]),
        note(29.4, "firing", B, STARTS[0]),  # the stale view: B's firing as A's resolution reached the pager
        note(33.4, "resolved", A, STARTS[0]),
        note(40.0, "firing", A, STARTS[1]),
        note(44.0, "resolved", A, STARTS[1]),
        note(45.0, "firing", A, STARTS[1]),  # the same member fires it again: a page
        note(50.0, "resolved", A, STARTS[2]),
        note(55.0, "firing", B, STARTS[2]),  # the other member, later than the window: a page
    ]
    assert pager.stale_views(4.0) == {2}
    assert [at for at, _, _ in pager.incidents(4.0)] == [25.4, 40.0, 45.0, 55.0]
    # Without a window nothing is told apart: the stale view opens an incident.
    assert pager.stale_views(0.0) == set()
    assert [at for at, _, _ in pager.incidents()] == [25.4, 29.4, 40.0, 45.0, 55.0]


def test_a_firing_of_another_host_or_start_is_never_a_stale_view(pager: Pager) -> None:
    pager.notifications = [
        note(10.0, "firing", A, STARTS[0]),
        note(12.0, "resolved", A, STARTS[0]),
        note(12.5, "firing", B, STARTS[1]),  # a new firing (another start)
        note(13.0, "firing", B, STARTS[0], host="127.0.0.22:1"),  # another host's
    ]
    assert pager.stale_views(4.0) == set()
