"""A returning host is never paged by the Prometheus pair and the Alertmanager cluster (docs/deployment.md, "High
availability"), with the shipped rules, routing and `config render --replica` alerting section.

Needs real servers, started here on 127.0.0.1: Debian's prometheus (2.42) and the long-term-support 3.5 (`make
monitoring-lts`), two of Debian's prometheus-alertmanager gossiping as a cluster (tests/ha_pair_returns.py)."""

from __future__ import annotations

import json
from pathlib import Path

from ha_pair_returns import account, ha_pair, judge
from system_binaries import REPO_ROOT

from trading_ops.durations import parse_duration
from trading_ops.stack.profiles import FAST
from trading_ops.stack.repo import load_yaml

DEATHS = 6
# After a return, how long a late member's firing could still page: a scrape and an evaluation of the late member,
# the second Alertmanager's wait for the first (the fast profile's peer timeout, 3 s) and a group interval, with room.
QUIET_SECONDS = 8.0


def host_down_group_interval() -> float:
    """The shipped alertmanager.yml's group_interval of TradingBotHostDown's pager route, in seconds."""
    routes = load_yaml(REPO_ROOT / "alertmanager" / "alertmanager.yml")["route"]["routes"]
    (route,) = [r for r in routes if r.get("receiver") == "pager" and 'alertname="TradingBotHostDown"' in r["matchers"]]
    return parse_duration(route["group_interval"])


def test_a_returning_host_pages_nothing_and_each_death_pages_once(tmp_path: Path) -> None:
    """Six deaths and returns at the fast profile, every other death as soon as the last one's end reached the pager:
    each death opens one incident at the pager (a death right after the last end at the group's next slot, a group
    interval later at most), no return opens one, and no host-down alert is notified firing after its own
    resolution (the cluster's second member paging a view it took before the end)."""
    with ha_pair(tmp_path, FAST) as pair:
        for i in range(DEATHS):
            pair.die()
            pair.come_back(0.0 if i % 2 == 0 and i + 1 < DEATHS else QUIET_SECONDS)
        verdict = judge(pair)
        print(json.dumps({k: v for k, v in verdict.items() if k != "refires"}))
        detail = f"{json.dumps(verdict, indent=1)}\n{account(pair)}"
        assert [c["pages_while_dead"] for c in verdict["cycles"]] == [1] * DEATHS, detail
        assert verdict["false_pages_after_return"] == 0, detail
        assert verdict["alerts_firing_after_resolved"] == 0, detail
        last = pair.pager.host_down()[-1]
        assert last["status"] == "resolved", detail
        # A death right after the last one's end waits at most for its group's next slot.
        first = verdict["cycles"][0]["page_seconds"]
        interval = FAST.people_group_interval(host_down_group_interval())
        assert all(c["page_seconds"] <= first + interval + 1.0 for c in verdict["cycles"]), detail
