"""Timing profiles of the local stack: `fast` for self-healing demos and the recovery goal, `standard` as shipped,
`floor` for measuring what detection can cost at the least (every alert's `for:` at one evaluation)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from trading_ops.durations import format_duration

# The fast profile's rule for alert `for:` durations, applied when the rule files are copied into the state dir:
# divide by FOR_DIVISOR, but never below FOR_FLOOR_SECONDS (two 1 s evaluations, so one odd sample never fires an
# alert) and never longer than the original. 10s -> 2s, 30s -> 6s, 2m -> 24s, 1h -> 12m; `for: 1s` stays 1s.
FOR_DIVISOR = 5
FOR_FLOOR_SECONDS = 2.0
# The fast profile's floor for an alert on failed scrapes (its expression reads `up`: TradingBotDown,
# TradingBotHostDown, the ops stack's *Down): a late scrape must not read as a dead process or host. A machine's stall
# does not shrink with the profile: at its 1 s scrapes with a 0.8 s timeout (Prometheus allows no timeout longer than
# the interval), `for: 2s` fired TradingBotHostDown for a live host whose bot and node exporter both answered late
# for 2 to 3 s under load averages of 30 to 60 (docs/deployment.md), while the standard profile's `for: 10s` over
# 5 s scrapes with a 4 s timeout needs 14 s of unanswered scrapes. The node exporter's scrape took up to 0.84 s at
# load averages up to 31 (2026-11-27, docs/local-stack.md): past the timeout. With 5 s, six evaluations in a row
# must find every scrape of both failed, each past its 0.8 s: about 6 s of stall, twice what was seen; a dead host
# pages 3 s later than with 2 s, still a third of the standard profile's time.
SCRAPE_FAILURE_FOR_FLOOR_SECONDS = 5.0
# The fast profile's floor for an alert its own expression mutes while the bot, or its venue, is cut off
# (`unless` over tradingbot_broker_connected or venue:tradingbot_bots_disconnected:ratio: TradingBotBrokerDisconnected,
# TradingBotStreamChannelStale). Each bot notices a venue outage at its own next call to the venue, so the venue-wide
# view forms only once the second bot has noticed: the first bot alone fired its per-bot alert at `for: 2s` (a
# fresh clone's CI, 2026-11-27: the first bot cut off 1.3 s after the outage, the second about 3 s after it; the
# reconciler then reconnected one bot on a dead venue). Twice that spread; the standard profile's 10 s is more.
DISCONNECT_RACE_FOR_FLOOR_SECONDS = 6.0
# The floor profile's `for:`: one 1 s evaluation (an alert fires on the second evaluation that finds it true).
FOR_MINIMUM_SECONDS = 1.0
# The timings of a clustered Alertmanager pair (`up --alertmanagers 2`) that the fast profile divides by FOR_DIVISOR
# (the standard profile keeps Alertmanager's defaults, these): how often members gossip and fully sync their state
# (notification log, silences), how long a member that starts waits for the gossip to settle before it notifies (the
# settle usually ends well before, once the member count holds for 3 polls of 10 gossip intervals), and how long the
# second member waits for the first to notify before it does (cluster position x peer-timeout: what a member killed
# while it was first costs until the other finds it dead). Failure detection (probe interval and timeout) is left as
# is: shorter, a loaded 2-core machine would see members flap.
ALERTMANAGER_CLUSTER_DEFAULTS = {
    "gossip-interval": 0.2,
    "pushpull-interval": 60.0,
    "settle-timeout": 60.0,
    "peer-timeout": 15.0,
}


# A route to people keeps its group_interval longer than the cluster's peer timeout by at least this (the fast profile
# divides the shipped one): the second member of a cluster takes its view of a group, waits the peer timeout, then
# checks the notification log, so a group interval under that wait let a view taken before an alert's end be checked
# after the first member had sent the end, and the second member paged the ended alert again (docs/deployment.md).
PEOPLE_GROUP_INTERVAL_MARGIN_SECONDS = 1.0


@dataclass(frozen=True)
class Profile:
    name: str
    # Prometheus global settings; None keeps the repo's prometheus.yml.
    scrape_interval: float | None
    evaluation_interval: float | None
    scrape_timeout: float | None
    # Prometheus --rules.alert.resend-delay (default 1m): how often firing alerts are sent again. Alerts that fire
    # before Prometheus has found Alertmanager (its first seconds) are dropped and wait this long.
    alert_resend_delay: float | None
    # Alertmanager settings on the routes whose receiver is the reconciler's webhook; None keeps the repo's.
    reconciler_group_wait: float | None
    reconciler_group_interval: float | None
    shorten_for: bool
    # The bot's `recovery:` settings the stack uses unless the configuration sets them (the fast profile reconciles
    # and takes over after a crash sooner; the standard profile keeps every default).
    recovery: tuple[tuple[str, float], ...] = ()
    # Every `for:` at its minimum (one evaluation) instead of divided: the floor of detection, for benchmarks.
    minimal_for: bool = False
    # A clustered Alertmanager pair's --cluster.<flag> timings (ALERTMANAGER_CLUSTER_DEFAULTS); empty keeps
    # Alertmanager's defaults.
    alertmanager_cluster: tuple[tuple[str, float], ...] = ()

    def cluster_flags(self) -> list[str]:
        """The Alertmanager flags of this profile's cluster timings (`--cluster.peer-timeout=3s`, ...)."""
        return [f"--cluster.{flag}={format_duration(value)}" for flag, value in self.alertmanager_cluster]

    def people_group_interval(self, seconds: float) -> float:
        """The group_interval this profile gives a route to people whose repo route says `seconds`: divided as `for:`
        is when the profile shortens the cluster's timings, never below its peer timeout plus
        PEOPLE_GROUP_INTERVAL_MARGIN_SECONDS and never longer than the repo's."""
        cluster = dict(self.alertmanager_cluster)
        if not self.shorten_for or "peer-timeout" not in cluster or seconds <= 0:
            return seconds
        floor = cluster["peer-timeout"] + PEOPLE_GROUP_INTERVAL_MARGIN_SECONDS
        return min(seconds, max(seconds / FOR_DIVISOR, floor))

    def alert_for(self, seconds: float, scrape_failure: bool = False, races_disconnect: bool = False) -> float:
        """The `for:` duration this profile gives an alert whose repo rule says `seconds`; `scrape_failure`: the
        alert is on failed scrapes (its expression reads `up`), never shortened below
        SCRAPE_FAILURE_FOR_FLOOR_SECONDS; `races_disconnect`: its expression mutes it while the bot or its venue is
        cut off, never below DISCONNECT_RACE_FOR_FLOOR_SECONDS (the floor profile's one evaluation aside: it
        measures detection's least)."""
        if not self.shorten_for or seconds <= 0:
            return seconds
        if self.minimal_for:
            return min(seconds, FOR_MINIMUM_SECONDS)
        floor = max(
            FOR_FLOOR_SECONDS,
            SCRAPE_FAILURE_FOR_FLOOR_SECONDS if scrape_failure else 0.0,
            DISCONNECT_RACE_FOR_FLOOR_SECONDS if races_disconnect else 0.0,
        )
        return min(seconds, max(seconds / FOR_DIVISOR, floor))

    def shortened(self, seconds: float, floor: float) -> float:
        """A service timing of the units (RestartSec, WatchdogSec, StartLimitIntervalSec) in this profile: divided as
        `for:` is, never below `floor` and never longer than the unit's."""
        if not self.shorten_for or seconds <= 0:
            return seconds
        return min(seconds, max(seconds / FOR_DIVISOR, floor))

    @property
    def summary(self) -> str:
        """One sentence for `up --help` and the README: what this profile changes."""
        if self == STANDARD:
            return "every timing exactly as in the repo's prometheus/ and alertmanager/ configurations."
        fmt = format_duration
        parts = []
        if self.scrape_interval is not None and self.evaluation_interval is not None:
            parts.append(
                f"Prometheus scrapes every {fmt(self.scrape_interval)} (timeout {fmt(self.scrape_timeout or 0)}) "
                f"and evaluates every {fmt(self.evaluation_interval)}"
            )
        if self.alert_resend_delay is not None:
            parts.append(f"resends firing alerts every {fmt(self.alert_resend_delay)}")
        if self.reconciler_group_wait is not None and self.reconciler_group_interval is not None:
            parts.append(
                f"the Alertmanager routes to the reconciler use group_wait {fmt(self.reconciler_group_wait)} "
                f"and group_interval {fmt(self.reconciler_group_interval)}"
            )
        if self.alertmanager_cluster:
            parts.append(
                "with --alertmanagers 2, the pair's "
                + ", ".join(f"--cluster.{flag} {fmt(value)}" for flag, value in self.alertmanager_cluster)
            )
            if self.shorten_for:
                parts.append(
                    f"the routes to people divide their own group_interval by {FOR_DIVISOR}, never below the peer "
                    f"timeout plus {fmt(PEOPLE_GROUP_INTERVAL_MARGIN_SECONDS)} (20s -> 4s; a route that waits out a "
                    "remedy keeps its own)"
                )
        if self.recovery:
            parts.append(
                "the bot's "
                + ", ".join(f"recovery.{key} {fmt(value)}" for key, value in self.recovery)
                + " unless the configuration sets them"
            )
        if self.minimal_for:
            parts.append(
                f"every alert `for:` is {fmt(FOR_MINIMUM_SECONDS)} (one evaluation; never longer than the repo's), "
                "and the systemd units' timings are shortened as in the fast profile"
            )
        elif self.shorten_for:
            parts.append(
                f"alert `for:` durations are divided by {FOR_DIVISOR}, at least {fmt(FOR_FLOOR_SECONDS)} "
                f"({fmt(SCRAPE_FAILURE_FOR_FLOOR_SECONDS)} for an alert on failed scrapes, so a late scrape never "
                f"reads as a dead bot or host; {fmt(DISCONNECT_RACE_FOR_FLOOR_SECONDS)} for one its expression mutes "
                "while the venue is cut off, so a venue outage is never one bot's) and never longer than the repo's "
                "(10s -> 2s, 2m -> 24s), and so are "
                "the systemd units' RestartSec, WatchdogSec and StartLimitIntervalSec the stack runs its children with"
            )
        return "; ".join(parts) + ". Everything else as in the repo."

    def settings(self) -> dict[str, Any]:
        """What the profile changes, as JSON-ready data (the benchmark prints it)."""

        def fmt(value: float | None) -> str:
            return "as in the repo" if value is None else format_duration(value)

        return {
            "profile": self.name,
            "prometheus_scrape_interval": fmt(self.scrape_interval),
            "prometheus_evaluation_interval": fmt(self.evaluation_interval),
            "prometheus_scrape_timeout": fmt(self.scrape_timeout),
            "prometheus_alert_resend_delay": fmt(self.alert_resend_delay),
            "alertmanager_reconciler_group_wait": fmt(self.reconciler_group_wait),
            "alertmanager_reconciler_group_interval": fmt(self.reconciler_group_interval),
            "bot_recovery": {key: format_duration(value) for key, value in self.recovery} or "as configured",
            "alertmanager_cluster": {flag: format_duration(value) for flag, value in self.alertmanager_cluster}
            or "Alertmanager's defaults",
            "alert_for": (
                f"{format_duration(FOR_MINIMUM_SECONDS)}, never longer than the repo's"
                if self.minimal_for
                else f"for / {FOR_DIVISOR}, at least {format_duration(FOR_FLOOR_SECONDS)} "
                f"({format_duration(SCRAPE_FAILURE_FOR_FLOOR_SECONDS)} on failed scrapes, "
                f"{format_duration(DISCONNECT_RACE_FOR_FLOOR_SECONDS)} muted by a disconnection), "
                "never longer than the repo's"
                if self.shorten_for
                else "as in the repo"
            ),
        }


FAST = Profile(
    name="fast",
    scrape_interval=1.0,
    evaluation_interval=1.0,
    # Below the interval so a slow scrape never overlaps the next one (the repo uses 4 s for 5 s).
    scrape_timeout=0.8,
    alert_resend_delay=5.0,
    reconciler_group_wait=0.0,
    # A fault that recurs while its alert group still exists (Prometheus re-sends a resolved alert for 15 minutes)
    # waits for the group's next tick: 1 s keeps that short. A resolved notification that beats the reconciler's
    # own verification poll is fine: it wakes the verification, whose last query still tells a recovery.
    reconciler_group_interval=1.0,
    shorten_for=True,
    # A scheduled reconciliation every 15 s (60 s by default) finds a drifted position sooner; a crashed bot's
    # restart waits until its last heartbeat is 3 s old (3 beats; 10 s by default) before it takes over.
    recovery=(("reconcile_interval_seconds", 15.0), ("crash_timeout_seconds", 3.0)),
    # Divided as `for:` is: gossip every 40ms, a full sync every 12s, settled within 12s, 3s between the members.
    alertmanager_cluster=tuple((flag, value / FOR_DIVISOR) for flag, value in ALERTMANAGER_CLUSTER_DEFAULTS.items()),
)
STANDARD = Profile(
    name="standard",
    scrape_interval=None,
    evaluation_interval=None,
    scrape_timeout=None,
    alert_resend_delay=None,
    reconciler_group_wait=None,
    reconciler_group_interval=None,
    shorten_for=False,
)
FLOOR = dataclasses.replace(FAST, name="floor", minimal_for=True)
PROFILES = {p.name: p for p in (FAST, STANDARD, FLOOR)}
