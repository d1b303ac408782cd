"""Reopening: an episode that ended recovered while its alert keeps firing is reopened when its condition returns.

Alertmanager notifies a firing alert once, then again only at its route's repeat_interval (an hour on the reconciler's
route), always with the same fingerprint and startsAt: the same episode, which one run handled. A loss limit's alert
fires the whole day; after its flatten is verified a position may come back (a fill nobody asked for, a person's
resume) while it still fires. So the reconciler looks itself, without waiting for a resend: every few seconds, at
each resend, for the recovered episodes of rules with `reopen_when` whose alert has not resolved, it asks Alertmanager
whether the alert still fires with the episode's startsAt and Prometheus whether the rule's condition holds; when both
do, the episode is reopened (pending, due now, its history saying why) and its steps run once more, asking again for
whatever approval they need: the same episode (fingerprint, startsAt), no second one of one alert. After a restart of
the stack the alert may fire on with a later startsAt that Alertmanager does not notify (it notified the group
already): then a new episode of that startsAt is opened, saying which one it reopens (a notification of it later is
its resend)."""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta
from typing import Any

from trading_ops.clients.alertmanager import AlertmanagerClient, AlertmanagerError
from trading_ops.clients.prometheus import PrometheusClient, PrometheusError
from trading_ops.db.base import utcnow
from trading_ops.reconciler.actions.base import TEMPLATE_RE, Refused, checked_label
from trading_ops.reconciler.intake import Rejected, parse_timestamp
from trading_ops.reconciler.ledger import LinkedAlert
from trading_ops.reconciler.playbook import Playbook
from trading_ops.reconciler.runs import ENGINE_LOGGER, RunHolder, RunPart

log = logging.getLogger(ENGINE_LOGGER)
# How often the recovered episodes are looked at (a resend of a known alert looks at once).
CHECK_SECONDS = 10.0
# Episodes that recovered longer ago than this are not looked at (a day: a loss limit's alert fires for the day).
WINDOW = timedelta(days=1)
# At most this many episodes per look (newest first).
BATCH = 50
# Alertmanager's API gives startsAt in milliseconds, webhooks in nanoseconds.
STARTS_AT_TOLERANCE = timedelta(milliseconds=1)
# Who the reopening's row in the episode's history names.
REOPENER = "reconciler"


class Reopener(RunPart):
    """Owns the look at recovered episodes whose alert keeps firing: reopened when the rule's `reopen_when` holds."""

    def __init__(
        self,
        holder: RunHolder,
        playbook: Playbook,
        alertmanager: AlertmanagerClient,
        prometheus: PrometheusClient,
        label_pattern: Any,
    ) -> None:
        super().__init__(holder)
        self.playbook = playbook
        self.alertmanager = alertmanager
        self.prometheus = prometheus
        self.label_pattern = label_pattern
        self.next_check = 0.0

    def poke(self) -> None:
        """Look at the next dispatch (a resend of an alert whose episode is stored came in)."""
        self.next_check = 0.0

    async def check(self) -> int:
        """Reopen what is due: the number of episodes reopened or opened (the engine then claims them)."""
        now = time.monotonic()
        if now < self.next_check:
            return 0
        self.next_check = now + CHECK_SECONDS
        rules = {r.name: r.reopen_when for r in self.playbook.rules if r.reopen_when}
        if not rules:
            return 0
        episodes = await self.db(self.ledger.recovered_unresolved, sorted(rules), utcnow() - WINDOW, BATCH)
        if not episodes:
            return 0
        # A target with an open episode is being handled (what TradingBotUnhandledExposure reads too): one question
        # at a time about one bot, not one per rule whose condition returned.
        busy = set(await self.db(self.ledger.open_episodes_by_target))
        looked: set[str] = set()
        reopened = 0
        for episode in episodes:  # newest first: an alert's latest episode is the one reopened
            if episode["fingerprint"] in looked or episode["target"] in busy:
                continue
            looked.add(episode["fingerprint"])
            labels: dict[str, str] = json.loads(episode["labels"])
            condition = self._render(rules[episode["rule"]], labels)
            held = None if condition is None else await self._held(episode, labels)
            if condition is None or held is None or not await self._returned(episode, condition):
                continue
            if await self._reopen(episode, held, condition):
                reopened += 1
                busy.add(episode["target"])
        return reopened

    async def _reopen(self, episode: dict[str, Any], held: LinkedAlert, condition: str) -> bool:
        """The episode reopened, or, when Alertmanager holds its alert with a later startsAt (it fired on across a
        restart of the stack: Prometheus gave it a new start, and Alertmanager, having notified the group, sends
        nothing new), a new episode of that startsAt that says which one it reopens. Whether one was."""
        why = f"its condition returned ({condition}) while its alert kept firing"
        if held.starts_at - episode["starts_at"] <= STARTS_AT_TOLERANCE:
            detail = f"reopened: {why} since it recovered; its steps run once more"
            if not await self.db(self.ledger.reopen, episode["id"], REOPENER, detail):
                return False
            name = f"episode {episode['id']}"
        else:
            detail = (
                f"reopens episode {episode['id']} (recovered at {episode['closed_at'].isoformat()}): {why}, "
                f"started again at {held.starts_at.isoformat()} (a restart) and not notified anew"
            )
            opened = await self.db(self.ledger.open_linked, episode, held, detail)
            if opened is None:
                return False
            name = f"episode {opened}"
        log.warning("%s (%s on %s): %s", name, episode["alertname"], episode["target"], detail)
        return True

    async def _returned(self, episode: dict[str, Any], condition: str) -> bool:
        try:
            return bool(await self.prometheus.query(condition))
        except PrometheusError as exc:
            log.warning("episode %s: cannot ask whether its condition returned: %s", episode["id"], exc)
            return False

    def _render(self, expr: str, labels: dict[str, str]) -> str | None:
        """`expr` with its ${label}s filled in with validated values; None when one is missing or refused."""
        try:
            return TEMPLATE_RE.sub(lambda m: checked_label(labels, m.group(1), self.label_pattern), expr)
        except Refused as exc:
            log.warning("reopen_when not checked: %s", exc)
            return None

    async def _held(self, episode: dict[str, Any], labels: dict[str, str]) -> LinkedAlert | None:
        """The episode's alert as Alertmanager holds it, active (not silenced or inhibited: someone else has it), with
        the episode's fingerprint and its startsAt or a later one; None when there is none, or Alertmanager does not
        answer (looked at again at the next check)."""
        try:
            alerts = await self.alertmanager.alerts_matching(labels)
        except AlertmanagerError as exc:
            log.info("episode %s: cannot ask Alertmanager whether it still fires: %s", episode["id"], exc)
            return None
        for alert in alerts:
            if alert.get("fingerprint") != episode["fingerprint"]:
                continue
            if (alert.get("status") or {}).get("state") not in ("active", None):
                continue
            try:
                started = parse_timestamp(alert.get("startsAt"), "startsAt")
            except Rejected:
                continue
            if started - episode["starts_at"] < -STARTS_AT_TOLERANCE:
                continue  # an older start than the episode's: not this alert's firing
            return LinkedAlert(
                starts_at=started,
                labels={str(k): str(v) for k, v in (alert.get("labels") or {}).items()},
                annotations={str(k): str(v) for k, v in (alert.get("annotations") or {}).items()},
                generator_url=str(alert.get("generatorURL") or ""),
            )
        return None
