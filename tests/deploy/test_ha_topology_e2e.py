"""Each ops host of the documented highly available topology killed whole in turn (tests/ha_topology.py: two ops hosts
with a Prometheus, an Alertmanager, a reconciler replica and a Patroni-managed PostgreSQL each, a third host for etcd's
vote, a bot host with Debian's node exporter and the example ccxt bot on the Kraken-compatible gateway), the shipped
rules and routing at the fast profile and at the standard one (the shipped timings), a pager receiver of the test's
own.

A bot fault whose playbook acts and verifies (its session with the venue dropped: broker-reconnect) is staged with the
topology whole, with ops-b dead (every process of it SIGKILLed, its link cut), and, ops-b back, with ops-a dead (its
PostgreSQL the primary: Patroni promotes ops-b's); each time a surviving replica verifies it. Then, ops-a still dead,
the bot's host is killed whole with its bid resting: its order is cancelled at the venue and the host-down page
reaches the pager once (no exposure page: the account is flat). Nothing pages falsely: TradingOpsReconcilerDown and
TradingOpsAlertmanagerDown only for a member that was dead, no TradingBotDown (its host's alert mutes it), no failed
remediation, and no page twice. A fault staged with an ops host dead, once the topology settled on the survivor,
is verified within a few seconds of the healthy figure. Then the hosts return and die again
(ha_topology.returns_and_deaths): ops-a returns (a standby of ops-b's now), the bot's host returns and dies again
(its orders cancelled and one page again, nothing for its return), and ops-b is killed while a bot fault is being
healed (ops-a's replica heals it, once). Prints what each stage took (JSON).

Each profile runs twice: with this host's Debian 12 binaries (`debian12-*`) and with the Debian parts from Debian 13
(`debian13-*`: etcd 3.5, Patroni 4, PostgreSQL 17, Prometheus, Alertmanager and the node exporter of a cached trixie
root, tests/debian13_root.py's, run with chroot in each host's network namespace: tests/debian_parts.py), the
project's Python (the reconciler replicas, the example bot, the gateway) from the checkout's virtualenv either way.

Needs root, `ip`, etcd-server, patroni, PostgreSQL's server, prometheus, prometheus-alertmanager and
prometheus-node-exporter; for Debian 13, debootstrap and systemd-nspawn (the root is built once per machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from debian_parts import RELEASES, Release
from ha_topology import (
    HOST_DOWN_FOR_SECONDS,
    RECONCILER_PORT,
    Topology,
    returns_and_deaths,
    run_sequence,
    topology,
    wall,
)

from trading_ops.db.states import CLOSED_STATES
from trading_ops.stack.profiles import FAST, STANDARD, Profile

# Patroni alone takes its `ttl` (30 s) to promote, and a busy 2-core machine starts the topology slowly.
pytestmark = [
    pytest.mark.alertmanager,
    pytest.mark.postgres,
    pytest.mark.hosts,
    pytest.mark.slow,
    pytest.mark.timeout(2400),
]

# Pages a dead ops host owes (a true page: the member is down), by the member's instance label.
MEMBER_PAGES = {"TradingOpsReconcilerDown": RECONCILER_PORT, "TradingOpsAlertmanagerDown": 9093}
HOST_PAGES = ("TradingBotHostDown", "TradingOpsBotHostDown")


def false_pages(
    topo: Topology, dead: dict[str, tuple[float, float]], bot_down: list[tuple[float, float]]
) -> list[tuple[float, dict[str, str]]]:
    """What reached the pager that nothing owed: a member's down page for a member that was alive when its page
    arrived (each of its host's deaths, `dead`'s `b`, `b2`, ..., to its return plus the alert's own resolve time), the
    bot host's pages outside its deaths (`bot_down`: each kill to the host's return), any other page of the bot (its
    staged faults' too: each is healed, and the pager's route waits out the remedy), a failed remediation."""
    # The least time from a host's death to its TradingBotHostDown firing: the rule's `for:` at the profile.
    detection = topo.profile.alert_for(HOST_DOWN_FOR_SECONDS, scrape_failure=True)
    wrong = []
    for at, labels in topo.pager.since(0):
        name = labels["alertname"]
        if name in MEMBER_PAGES:
            host = labels.get("instance", "").rsplit(":", 1)[0]
            owner = next((o.name for o in topo.ops.values() if o.address == host), None)
            windows = [w for key, w in dead.items() if key.rstrip("0123456789") == owner]
            if not any(start <= at <= end for start, end in windows):
                wrong.append((at, labels))
        elif name in HOST_PAGES:
            if not any(start <= at <= end for start, end in bot_down):
                wrong.append((at, labels))
            elif name == "TradingBotHostDown" and not any(start + detection <= at <= end for start, end in bot_down):
                # Sooner after a death than its alert can fire: a member's stale firing of the death before
                # (prometheus/alertmanager#2447: a view of the group taken before the last return, sent after the
                # other member's end).
                wrong.append((at, labels))
        elif name not in ("TradingOpsApprovalRequested", "Watchdog"):
            wrong.append((at, labels))
    return wrong


def pages_by_death(topo: Topology, deaths: dict[str, float]) -> dict[str, list[str]]:
    """Each page of a dead member or host at the pager, under the death it came after (the latest one before it), with
    its seconds from that death: what was paged late, what is missing, and what came outside every death."""
    out: dict[str, list[str]] = {name: [] for name in deaths}
    for at, labels in topo.pager.since(0):
        if labels["alertname"] not in (*MEMBER_PAGES, *HOST_PAGES):
            continue
        before = [(start, name) for name, start in deaths.items() if start <= at]
        if before:
            start, name = max(before)
            out[name].append(f"{labels['alertname']} {labels.get('instance', '')} +{at - start:.1f}s")
    return out


# Each profile's sequence within the test's timeout: the standard profile's alerts take their shipped `for:`. Each on
# this host's Debian 12 binaries and on Debian 13's (ids `debian12-fast`, ..., `debian13-standard`).
@pytest.mark.parametrize(
    ("release", "profile"),
    [pytest.param(r, p, id=f"{r.name}-{p.name}") for r in RELEASES for p in (FAST, STANDARD)],
)
def test_each_ops_host_killed_whole_costs_the_survivors_nothing(
    tmp_path: Path, release: Release, profile: Profile
) -> None:
    with topology(tmp_path, profile, release) as topo:
        run = run_sequence(topo)
        out, dead, killed = run["measured"], run["dead"], run["bot_host_killed"]
        out["release"] = release.name
        out["pages"] = sorted(
            f"{labels['alertname']} {labels.get('instance', '')}" for _, labels in topo.pager.since(0)
        )
        # The pager's every notification, in seconds from the sequence's start (its first fault).
        out["pager_timeline"] = topo.pager.timeline(
            run["started"], {o.address: f"am-{o.name}" for o in topo.ops.values()}
        )
        print(json.dumps(out))
        # Each fault verified by a replica that was alive: ops-a's with ops-b dead, ops-b's with ops-a dead.
        assert run["verified_by"]["ops_b_dead"].startswith("ra"), run
        assert run["verified_by"]["ops_a_dead"].startswith("rb"), run
        # A dead member costs the survivors little once the topology settled on them: the live Prometheus's batches
        # wait for the dead Alertmanager up to the shipped `alertmanagers` timeout (2 s); the rest is a busy
        # machine's margin (before, a dead ops-a's database host cost each new ledger connection 5 s and the
        # survivor's webhooks timed out), and the phase of the fault in the profile's scrape and evaluation intervals
        # (1 s each at the fast profile, the 7 s of before; 5 s each as shipped, where the alert fired 16.0 s after one
        # fault and 20.1 s after the next in one run).
        margin = 5 + (profile.scrape_interval or 5) + (profile.evaluation_interval or 5)
        for stage in ("ops_b_dead", "ops_a_dead"):
            assert out[f"fault_to_verified_{stage}_seconds"] <= out["fault_to_verified_healthy_seconds"] + margin, out

        # The dead bot host's episode, run by the surviving replica: its order cancelled at the venue.
        def done() -> list[dict[str, object]]:
            return [
                e
                for e in topo.episodes("TradingBotHostDown")
                if wall(e["starts_at"]) >= run["bot_host_killed_at"] and e["state"] in CLOSED_STATES
            ]

        (episode,) = topo.wait("the host-down episode done", done, 90)
        steps = [s for a in episode["attempts"] for s in a["steps"]]
        cancel = next((s for s in steps if s["action"] == "venue"), None)
        assert cancel is not None and "none left open" in cancel["output"], episode
        assert episode["attempts"][-1]["owner"].startswith("rb"), episode

        # Long enough for a false page of the survivor: TradingOpsReconcilerDown's `for:` (6 s) and more.
        survivor = topo.ops["b"]
        up = f'min_over_time(up{{job="trading-ops-reconciler", instance="{survivor.address}:{RECONCILER_PORT}"}}[20s])'
        topo.wait("20 s of the surviving replica scraped", lambda: topo.scalar(up, survivor) == 1, 60)
        # The page the host's death owes reached the pager once (not once per Alertmanager, not twice); the account
        # being flat, no exposure page (its step skipped).
        assert len(topo.pager.since(killed, "TradingBotHostDown")) == 1, topo.pager.since(killed)
        assert topo.pager.since(killed, "TradingOpsBotHostDown") == [], topo.pager.since(killed)
        assert all(s["outcome"] == "skipped" for s in steps if s["action"] == "escalate"), episode
        for name in ("TradingBotDown", "TradingOpsRemediationFailed"):
            assert topo.pager.since(0, name) == [], topo.pager.since(0)
        # Each staged broker fault was healed and verified: none reached the pager (its route waits out the remedy).
        assert topo.pager.since(0, "TradingBotBrokerDisconnected") == [], topo.pager.since(0)
        wrong = false_pages(topo, dead, [(killed, float("inf"))])
        assert wrong == [], wrong

        # Then the hosts return, and die again: ops-a returns, the bot's host returns and dies again, and ops-b dies
        # while a bot fault is being healed.
        more = returns_and_deaths(topo, run)
        deaths = {
            "ops_b": more["dead"]["b"][0],
            "ops_a": more["dead"]["a"][0],
            "bot_host": more["bot_down"][0][0],
            "bot_host_again": more["bot_down"][1][0],
            "ops_b_again": more["dead"]["b2"][0],
        }
        more["measured"]["pages_by_death"] = pages_by_death(topo, deaths)
        senders = {o.address: f"am-{o.name}" for o in topo.ops.values()}
        # The pager's every notification and the sequence's steps, in seconds from the bot host's first death.
        steps = {**{f"{name}_killed": at for name, at in deaths.items()}, **more["events"]}
        steps.update(bot_host_returned=more["bot_down"][0][1], bot_host_returned_again=more["bot_down"][1][1])
        more["measured"]["steps"] = {
            k: round(v - deaths["bot_host"], 1) for k, v in sorted(steps.items(), key=lambda i: i[1])
        }
        more["measured"]["pager_timeline"] = topo.pager.timeline(deaths["bot_host"], senders)
        print(json.dumps(more["measured"]))
        # The returns page nothing; the bot host's second death pages once (its orders cancelled again); the fault
        # that lost ops-b on its way is healed by ops-a's replica, once.
        again = more["bot_down"][1][0]
        assert len(topo.pager.since(again, "TradingBotHostDown")) == 1, topo.pager.since(killed)
        episode = more["episode"]
        assert episode["state"] in ("recovered", "resolved"), episode
        # A step that ran after ops-b's death ran on ops-a's replica.
        late = [a for a in episode["attempts"] if a["finished_at"] and wall(a["finished_at"]) > more["ops_b_killed_at"]]
        assert all(a["owner"].startswith("ra") for a in late if a["steps"]), episode
        assert [a["outcome"] for a in episode["attempts"]].count("success") <= 1, episode
        for name in ("TradingBotDown", "TradingOpsRemediationFailed"):
            assert topo.pager.since(0, name) == [], topo.pager.since(0)
        wrong = false_pages(topo, more["dead"], more["bot_down"])
        assert wrong == [], wrong
