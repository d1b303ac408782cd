"""Hostile probe of a live reconciler and paper bot: every input and trust problem of issue 11, its answer, the ledger.

It starts its own stack on free loopback ports in a temporary directory: a paper bot and a reconciler
(`trading-ops paper-bot`, `trading-ops reconciler`), a real Prometheus (its rules API serves the expression of the
alert the verification probe sends), a real Alertmanager (silences and escalations), two HTTP receivers (the host
`reconciler.http_allowed_hosts` allows, and another one) and a playbook of probe rules. The ledger is SQLite in that
directory, or `--database-url` (an empty PostgreSQL database, say: migrated first).

Each probe must get its 4xx (or the 2xx of a notification whose valid alerts are stored), never a 5xx, and the ledger
(read through the episode API with the read token, or in the database for the 1,000-alert group) must hold exactly
what it should; refusals are counted by reason. Prints one JSON line per probe, then a summary line; exits 1 when
anything was wrong, 2 when the stack could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from sqlalchemy import func, select

from trading_ops.config import ReconcilerConfig
from trading_ops.db.base import make_engine, utcnow
from trading_ops.db.models import Episode
from trading_ops.reconciler.actions.escalate import CIRCUIT_OPEN
from trading_ops.reconciler.ledger import Ledger

REPO = Path(__file__).resolve().parents[2]
# The reconciler's own defaults (reconciler.max_body_bytes) and the bot's control API limit.
MAX_BODY_BYTES = ReconcilerConfig().max_body_bytes
BOT_MAX_BODY_BYTES = 64 * 1024
STARTUP_SECONDS = 90.0
LEDGER_DEADLINE_SECONDS = 30.0
POLL_SECONDS = 0.1
IO_TIMEOUT_SECONDS = 30.0
# Intake stays responsive while the engine checks a hostile silence: each webhook is acknowledged within this (a
# backtracking matcher took 2 s per check for (.*)*(.*)*(.*)*z on 25 characters, and hours on the 64 sent here).
RESPONSIVE_SECONDS = 2.0
HOSTILE_REGEX = "(.*)*(.*)*(.*)*z"
# What whoever holds the webhook token would make the verification query: always empty, so always "recovered".
ATTACKER_EXPR = 'count({__name__=~".+"}) > 1e12'
# The probe's alerting rule in Prometheus: its condition holds (always), so its episode must not be "recovered".
VERIFY_RULE_EXPR = "vector(1)"
# Counted refusals (tradingops_notifications_rejected_total{reason}) and the bot's unauthorized control calls.
REASONS = ("unauthorized", "too_large", "invalid_json", "invalid_payload", "unsupported_version")
ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")


def probe_playbook(allowed: str) -> dict[str, Any]:
    """The probe rules: one per trust probe, each acting at once (no cooldown), once, without retries."""
    once = {"max_attempts": 1, "cooldown": 0, "on_failure": "none"}
    true = [{"action": "exec", "argv": ["/bin/true"]}]
    return {
        "version": 1,
        "rules": [
            {
                "name": "probe-wait",
                "match": ['alertname="ProbeWaiting"'],
                "wait_for": "1h",
                "steps": [{"action": "bot", "command": "status"}],
            },
            {
                "name": "probe-shell",
                "match": ['alertname="ProbeShell"'],
                **once,
                "verify": False,
                "steps": [{"action": "exec", "argv": ["/bin/true"], "env": {"PROBE_INSTANCE": "instance"}}],
            },
            {"name": "probe-silenced", "match": ['alertname="ProbeSilenced"'], **once, "verify": False, "steps": true},
            {
                "name": "probe-http",
                "match": ['alertname="ProbeHttp"'],
                **once,
                "verify": False,
                "steps": [
                    {
                        "action": "http",
                        "url": f"http://{allowed}/hooks/${{instance}}/restart",
                        "json": {"instance": "${instance}", "alert": "${alertname}"},
                    }
                ],
            },
            {
                "name": "probe-http-redirect",
                "match": ['alertname="ProbeHttpRedirect"'],
                **once,
                "verify": False,
                "steps": [{"action": "http", "url": f"http://{allowed}/redirect/${{instance}}"}],
            },
            {
                "name": "probe-verify",
                "match": ['alertname="ProbeVerify"'],
                **once,
                "verify": {"deadline": 2, "interval": 0.5},
                "steps": true,
            },
            # on_failure escalate: whatever ends this rule's episodes must page.
            {"name": "probe-circuit", "match": ['alertname="ProbeCircuit"'], "max_attempts": 1, "steps": true},
        ],
    }


PROMETHEUS_RULES = {
    "groups": [
        {
            "name": "probe",
            "rules": [
                {
                    "alert": "ProbeVerify",
                    "expr": VERIFY_RULE_EXPR,
                    "labels": {"severity": "warning"},
                    "annotations": {"summary": "The probe's condition always holds."},
                }
            ],
        }
    ]
}


# ---- what the probes talk to ---------------------------------------------------------------------------------------


@dataclass
class Receiver:
    """An HTTP server that records what it is sent; `/redirect/...` answers a redirect to `redirect_to`."""

    url: str = ""
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, raw path, body
    redirect_to: str = ""
    runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def record(request: web.Request) -> web.Response:
            self.requests.append((request.method, request.raw_path, await request.text()))
            if request.path.startswith("/redirect/") and self.redirect_to:
                raise web.HTTPTemporaryRedirect(self.redirect_to)
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    @property
    def hostport(self) -> str:
        return self.url.removeprefix("http://")

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@dataclass
class Stack:
    """The live stack under probe, and its tokens."""

    reconciler: str
    bot: str
    alertmanager: str
    database_url: str
    webhook_token: str
    read_token: str
    control_token: str
    allowed: Receiver
    other: Receiver
    root: Path


@dataclass
class Outcome:
    name: str
    target: str
    status: int | None
    expected: list[int]
    check: str = ""
    ok: bool = True
    # The tradingops_notifications_rejected_total reason this probe's refusal must be counted under.
    reason: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "probe": self.name,
            "target": self.target,
            "status": self.status,
            "expected": self.expected,
            "check": self.check,
            "ok": self.ok,
        }


# ---- raw HTTP: header bytes no client would send, bodies of any size or encoding ----------------------------------


async def raw(
    url: str, method: str, path: str, headers: list[bytes], body: bytes = b"", chunked: bool = False
) -> tuple[int | None, bytes]:
    """One HTTP/1.1 request written byte for byte; (status, body). None when the server answered nothing."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = [f"{method} {path} HTTP/1.1".encode(), f"Host: {host}:{port}".encode(), b"Connection: close", *headers]
        head.append(b"Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}".encode())
        try:
            writer.write(b"\r\n".join(head) + b"\r\n\r\n")
            if chunked:
                step = 64 * 1024
                for i in range(0, len(body), step):
                    piece = body[i : i + step]
                    writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(body)
            await writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            pass  # the server answered (413) and closed before taking the whole body: read what it said
        try:
            answer = await asyncio.wait_for(reader.read(), IO_TIMEOUT_SECONDS)
        except ConnectionResetError:
            answer = b""
    finally:
        writer.close()
    if not answer.startswith(b"HTTP/"):
        return None, answer
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def bearer(token: str | bytes) -> bytes:
    return b"Authorization: Bearer " + (token.encode() if isinstance(token, str) else token)


JSON = b"Content-Type: application/json"


def alert(alertname: str, fingerprint: str, starts_at: str, **labels: str) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {"alertname": alertname, "instance": "probe-bot", **labels},
        "annotations": {"summary": "hostile probe."},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z",
        # Every probe alert carries the attacker's expression: none of them may be verified with it.
        "generatorURL": "http://prometheus/graph?" + urllib.parse.urlencode({"g0.expr": ATTACKER_EXPR}),
        "fingerprint": fingerprint,
    }


def notification(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "reconciler",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager",
        "alerts": list(alerts),
    }


def now_rfc3339() -> str:
    return (datetime.now(UTC) - timedelta(seconds=30)).isoformat().replace("+00:00", "Z")


async def send(s: Stack, body: dict[str, Any]) -> tuple[int | None, bytes]:
    """A notification as Alertmanager posts it, with the webhook token."""
    return await raw(s.reconciler, "POST", "/api/v1/alertmanager", [bearer(s.webhook_token), JSON], dumps(body))


def dumps(body: Any) -> bytes:
    return json.dumps(body).encode()


# ---- the ledger, the bot and Alertmanager, read back ---------------------------------------------------------------


class Reader:
    def __init__(self, session: aiohttp.ClientSession, stack: Stack) -> None:
        self.session = session
        self.stack = stack

    async def episodes(self) -> list[dict[str, Any]]:
        url = f"{self.stack.reconciler}/api/v1/episodes?limit=500"
        headers = {"Authorization": f"Bearer {self.stack.read_token}"}
        async with self.session.get(url, headers=headers) as resp:
            resp.raise_for_status()
            return list((await resp.json())["episodes"])

    async def by_fingerprint(self) -> dict[str, dict[str, Any]]:
        return {e["fingerprint"]: e for e in await self.episodes()}

    async def wait_episode(
        self, fingerprint: str, done: Callable[[dict[str, Any]], bool] = lambda e: bool(e["closed_at"])
    ) -> dict[str, Any] | None:
        """The episode once `done` (closed, by default), or as it is at the deadline (None: never stored)."""
        end = time.monotonic() + LEDGER_DEADLINE_SECONDS
        while True:
            episode = (await self.by_fingerprint()).get(fingerprint)
            if (episode is not None and done(episode)) or time.monotonic() > end:
                return episode
            await asyncio.sleep(POLL_SECONDS)

    async def bot_state(self) -> str:
        url = f"{self.stack.bot}/control/status"
        headers = {"Authorization": f"Bearer {self.stack.control_token}"}
        async with self.session.post(url, headers=headers) as resp:
            return str((await resp.json()).get("state"))

    async def metric(self, base: str, name: str, label: str = "") -> float:
        """The sum of the samples of `name` whose labels include `label` (`reason="unauthorized"`; "": all)."""
        async with self.session.get(f"{base}/metrics") as resp:
            text = await resp.text()
        total = 0.0
        for line in text.splitlines():
            if line.startswith((name + "{", name + " ")) and label in line.rsplit(" ", 1)[0]:
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def page(self, alertname: str, instance: str, original: str) -> dict[str, Any] | None:
        """The escalation Alertmanager holds for this target and original alert (None at the deadline)."""
        end = time.monotonic() + LEDGER_DEADLINE_SECONDS
        while True:
            async with self.session.get(f"{self.stack.alertmanager}/api/v2/alerts") as resp:
                for held in await resp.json():
                    labels = held["labels"]
                    if (labels["alertname"], labels.get("instance"), labels.get("original_alertname")) == (
                        alertname,
                        instance,
                        original,
                    ):
                        return dict(held)
            if time.monotonic() > end:
                return None
            await asyncio.sleep(POLL_SECONDS)


def steps_of(episode: dict[str, Any] | None) -> list[str]:
    return [s["outcome"] for a in (episode or {}).get("attempts", []) for s in a["steps"]]


# ---- input probes: each must get its 4xx and leave the ledger and the bot as they were -----------------------------

Probe = Callable[[Stack, Reader, str], Awaitable[Outcome]]


def webhook_probe(
    name: str, headers: list[bytes], body: bytes, expected: int, reason: str, chunked: bool = False
) -> Probe:
    """A webhook request that must be refused (counted under `reason`) and store nothing."""

    async def probe(s: Stack, reader: Reader, run: str) -> Outcome:
        fingerprint = f"p{run}{abs(hash(name)) % 10**6}"
        payload = body.replace(b"@FP@", fingerprint.encode())
        status, _ = await raw(s.reconciler, "POST", "/api/v1/alertmanager", headers, payload, chunked=chunked)
        stored = fingerprint in await reader.by_fingerprint()
        out = Outcome(name, "reconciler webhook", status, [expected], f"episode stored: {stored}", reason=reason)
        out.ok = status == expected and not stored
        return out

    return probe


async def poison(s: Stack, reader: Reader, run: str) -> Outcome:
    """A notification whose rule waits (wait_for): one alert starting 9999-12-31, one valid. Used to be 503 forever."""
    bad, good = f"bad{run}", f"good{run}"
    body = notification(
        alert("ProbeWaiting", bad, "9999-12-31T23:59:59.999Z"), alert("ProbeWaiting", good, now_rfc3339())
    )
    statuses = [(await send(s, body))[0] for _ in range(2)]  # Alertmanager's resend gets the same answer
    episodes = await reader.by_fingerprint()
    stored = {f: episodes[f]["state"] for f in (bad, good) if f in episodes}
    out = Outcome("absurd_starts_at_beside_a_valid_alert", "reconciler webhook", statuses[-1], [200])
    out.check = f"both sends {statuses}; episodes {stored} (only the valid one); the absurd one counted invalid twice"
    out.ok = statuses == [200, 200] and list(stored) == [good]
    return out


async def shell_labels(s: Stack, reader: Reader, run: str) -> Outcome:
    """Shell characters in a label: stored as sent, never executed (the exec step's label check refuses it)."""
    sentinel = s.root / f"probe-pwned-{run}"
    value = f"x; touch {sentinel} $(touch {sentinel}) `touch {sentinel}`"
    fingerprint = f"shell{run}"
    status, _ = await send(s, notification(alert("ProbeShell", fingerprint, now_rfc3339(), instance=value)))
    episode = await reader.wait_episode(fingerprint)
    out = Outcome("shell_characters_in_labels", "reconciler webhook", status, [200])
    kept = episode is not None and episode["labels"].get("instance") == value
    out.check = (
        f"episode {episode and episode['state']}, label stored as sent: {kept}, steps {steps_of(episode)}, "
        f"{sentinel.name} created: {sentinel.exists()}"
    )
    out.ok = status == 200 and kept and not sentinel.exists() and steps_of(episode) == ["refused"]
    return out


def read_probe(name: str, path: str, headers: list[bytes], expected: int) -> Probe:
    async def probe(s: Stack, reader: Reader, run: str) -> Outcome:
        status, body = await raw(s.reconciler, "GET", path, headers)
        leaked = b'"episodes"' in body or b'"fingerprint"' in body
        out = Outcome(name, "reconciler episode API", status, [expected], f"episode data in the answer: {leaked}")
        out.ok = status == expected and not leaked
        return out

    return probe


def control_probe(name: str, command: str, headers: list[bytes], body: bytes, expected: int) -> Probe:
    async def probe(s: Stack, reader: Reader, run: str) -> Outcome:
        before = await reader.bot_state()
        status, _ = await raw(s.bot, "POST", f"/control/{command}", headers, body)
        after = await reader.bot_state()
        out = Outcome(name, "bot control API", status, [expected], f"bot state {before} -> {after}")
        out.ok = status == expected and before == after
        return out

    return probe


# ---- trust probes: what a webhook says is never trusted further than it must be ------------------------------------


async def hostile_silence(s: Stack, reader: Reader, run: str) -> Outcome:
    """An Alertmanager silence `instance=~"(.*)*(.*)*(.*)*z"` (Alertmanager, RE2, takes it): the engine checks it
    before acting on each alert. Intake stays responsive, the silenced alert is parked, the other one acted on."""
    starts = datetime.now(UTC)
    silence = {
        "matchers": [{"name": "instance", "value": HOSTILE_REGEX, "isRegex": True, "isEqual": True}],
        "startsAt": starts.isoformat(),
        "endsAt": (starts + timedelta(hours=1)).isoformat(),
        "createdBy": "probe-attacker",
        "comment": "freezes a backtracking matcher",
    }
    async with reader.session.post(f"{s.alertmanager}/api/v2/silences", json=silence) as resp:
        silence_id = str((await resp.json())["silenceID"])
    acted, parked = f"acted{run}", f"parked{run}"
    body = notification(
        alert("ProbeSilenced", acted, now_rfc3339(), instance="a" * 64),
        alert("ProbeSilenced", parked, now_rfc3339(), instance="a" * 63 + "z"),
    )
    try:
        status, _ = await send(s, body)
        # While the engine checks the silence for both: webhooks keep being acknowledged, each timed.
        latencies: list[float] = []
        statuses: set[int | None] = set()
        end = time.monotonic() + LEDGER_DEADLINE_SECONDS
        settled: dict[str, dict[str, Any]] = {}
        while time.monotonic() < end:
            ping = notification(alert("ProbeUnmatched", f"ping{run}{len(latencies)}", now_rfc3339()))
            started = time.monotonic()
            statuses.add((await send(s, ping))[0])
            latencies.append(time.monotonic() - started)
            episodes = await reader.by_fingerprint()
            settled = {f: episodes[f] for f in (acted, parked) if f in episodes}
            if settled.get(acted, {}).get("closed_at") and settled.get(parked, {}).get("state") == "waiting":
                break
            await asyncio.sleep(POLL_SECONDS)
    finally:
        async with reader.session.delete(f"{s.alertmanager}/api/v2/silence/{silence_id}"):
            pass
    done, held = settled.get(acted, {}), settled.get(parked, {})
    out = Outcome("alertmanager_silence_with_a_backtracking_regex", "reconciler webhook + engine", status, [200])
    out.check = (
        f"silence {silence_id} {HOSTILE_REGEX}: {len(latencies)} webhooks acked meanwhile (statuses "
        f"{sorted(map(str, statuses))}), slowest {max(latencies, default=0) * 1000:.0f} ms (limit "
        f"{RESPONSIVE_SECONDS:g} s); a*64: {done.get('state')} (steps {steps_of(done or None)}); a*63+z: "
        f"{held.get('state')} ({str(held.get('detail'))[:90]})"
    )
    out.ok = (
        status == 200
        and statuses == {200}
        and max(latencies, default=RESPONSIVE_SECONDS) < RESPONSIVE_SECONDS
        and done.get("state") == "recovered"
        and held.get("state") == "waiting"
        and str(held.get("detail", "")).startswith(f"maintenance silence {silence_id}")
    )
    return out


async def http_label_chooses_no_host(s: Stack, reader: Reader, run: str) -> Outcome:
    """An `http` step's URL template with `${instance}` in its path, and `instance=user@127.0.0.1:OTHER`: the value
    goes URL-encoded to the allowed host; the other host sees nothing."""
    instance = f"user@{s.other.hostport}"
    fingerprint = f"http{run}"
    before = len(s.allowed.requests)
    status, _ = await send(s, notification(alert("ProbeHttp", fingerprint, now_rfc3339(), instance=instance)))
    episode = await reader.wait_episode(fingerprint)
    got = s.allowed.requests[before:]
    path = f"/hooks/{urllib.parse.quote(instance, safe='')}/restart"
    body = json.loads(got[0][2]) if got and got[0][2] else {}
    out = Outcome("http_step_label_chooses_no_host", "reconciler http action", status, [200])
    out.check = (
        f"allowed host got {[(m, p) for m, p, _ in got]}, body {body}; other host got {len(s.other.requests)}; "
        f"episode {episode and episode['state']}"
    )
    out.ok = (
        status == 200
        and [(m, p) for m, p, _ in got] == [("POST", path)]
        and body == {"instance": instance, "alert": "ProbeHttp"}
        and not s.other.requests
        and episode is not None
        and episode["state"] == "recovered"
    )
    return out


async def http_follows_no_redirect(s: Stack, reader: Reader, run: str) -> Outcome:
    """The allowed host answers a redirect to the other one: not followed (the step fails), the other sees nothing."""
    fingerprint = f"redirect{run}"
    status, _ = await send(s, notification(alert("ProbeHttpRedirect", fingerprint, now_rfc3339())))
    episode = await reader.wait_episode(fingerprint)
    out = Outcome("http_step_follows_no_redirect", "reconciler http action", status, [200])
    outputs = [st["output"][:40] for a in (episode or {}).get("attempts", []) for st in a["steps"]]
    out.check = f"episode {episode and episode['state']}, step {outputs}; other host got {len(s.other.requests)}"
    out.ok = (
        status == 200
        and episode is not None
        and episode["state"] == "failed"
        and any(o.startswith("HTTP 307") for o in outputs)
        and not s.other.requests
    )
    return out


async def verification_ignores_the_generator_url(s: Stack, reader: Reader, run: str) -> Outcome:
    """The alert's generatorURL carries an always-empty query: the episode must not be recovered by it. The
    expression comes from Prometheus's own rule ProbeVerify (whose condition still holds), and the detail says so."""
    fingerprint = f"verify{run}"
    body = notification(alert("ProbeVerify", fingerprint, now_rfc3339(), severity="warning"))
    status, _ = await send(s, body)
    episode = await reader.wait_episode(fingerprint)
    detail = str((episode or {}).get("detail"))
    out = Outcome("verification_with_a_hostile_generator_url", "reconciler verification", status, [200])
    out.check = f"episode {episode and episode['state']}: {detail[:160]}"
    out.ok = (
        status == 200
        and episode is not None
        and episode["state"] == "failed"
        and detail.endswith("[expression from prometheus_rules]")
        and VERIFY_RULE_EXPR in detail
        and "1e12" not in detail
    )
    return out


async def circuit_open_pages(s: Stack, reader: Reader, run: str) -> Outcome:
    """A target whose circuit is already open (another alert, or another replica, spent its budget): the episode
    ends escalated without acting, and its page arrives at Alertmanager."""
    target = f"probe-circuit-{run}"
    ledger = Ledger(make_engine(s.database_url))
    try:
        await asyncio.to_thread(ledger.open_circuit, target, utcnow() + timedelta(hours=1))
    finally:
        ledger.engine.dispose()
    fingerprint = f"circuit{run}"
    status, _ = await send(s, notification(alert("ProbeCircuit", fingerprint, now_rfc3339(), instance=target)))
    episode = await reader.wait_episode(fingerprint)
    held = await reader.page(CIRCUIT_OPEN, target, "ProbeCircuit")
    out = Outcome("circuit_already_open", "reconciler escalation", status, [200])
    out.check = (
        f"episode {episode and episode['state']} ({str((episode or {}).get('detail'))[:90]}), steps "
        f"{steps_of(episode)}; {CIRCUIT_OPEN} in Alertmanager: {held is not None}"
    )
    out.ok = (
        status == 200
        and episode is not None
        and episode["state"] == "escalated"
        and str(episode["detail"]).startswith(f"circuit of {target} open")
        and steps_of(episode) == []
        and held is not None
    )
    return out


def shipped_max_alerts() -> int:
    config = yaml.safe_load((REPO / "alertmanager" / "alertmanager.yml").read_text())
    (receiver,) = [r for r in config["receivers"] if r["name"] == "reconciler"]
    (hook,) = receiver["webhook_configs"]
    return int(hook["max_alerts"])


def largest_shipped_alert() -> dict[str, Any]:
    """The longest alert the shipped rules make, as Alertmanager posts it (templates left in: as long as what they
    render to), with a bot's target labels and its generatorURL."""
    alerts = []
    for path in sorted((REPO / "prometheus" / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" not in rule:
                    continue
                labels = {"alertname": rule["alert"], **{k: str(v) for k, v in (rule.get("labels") or {}).items()}}
                labels |= {"instance": "paper-bot:9101", "job": "tradingbot", "bot": "paper-1", "venue": "paper"}
                query = urllib.parse.urlencode({"g0.expr": rule["expr"], "g0.tab": "1"})
                alerts.append(
                    {
                        "status": "firing",
                        "labels": labels,
                        "annotations": {k: str(v) for k, v in (rule.get("annotations") or {}).items()},
                        "startsAt": now_rfc3339(),
                        "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": f"http://prometheus:9090/graph?{query}",
                    }
                )
    return max(alerts, key=lambda a: len(json.dumps(a)))


async def full_group(s: Stack, reader: Reader, run: str) -> Outcome:
    """One notification of the shipped receiver's max_alerts alerts, each as long as the longest the shipped rules
    make: under the body limit (Alertmanager does not resend a 413), and every alert stored."""
    count = shipped_max_alerts()
    largest = largest_shipped_alert()
    prefix = f"grp{run}"
    alerts = [
        {**largest, "labels": {**largest["labels"], "symbol": f"SYM{i:05d}-USD"}, "fingerprint": f"{prefix}{i:05d}"}
        for i in range(count)
    ]
    body = dumps(notification(*alerts))
    status, answer = await raw(s.reconciler, "POST", "/api/v1/alertmanager", [bearer(s.webhook_token), JSON], body)
    engine = make_engine(s.database_url)
    try:
        query = select(func.count()).select_from(Episode).where(Episode.fingerprint.like(f"{prefix}%"))
        with engine.connect() as conn:
            stored = conn.execute(query).scalar_one()
    finally:
        engine.dispose()
    acked = json.loads(answer or b"{}").get("alerts") if status == 200 else None
    out = Outcome(f"max_alerts_group_of_{count}", "reconciler webhook", status, [200])
    out.check = (
        f"{len(body):,} bytes (limit {MAX_BODY_BYTES:,}, alertmanager.yml max_alerts {count}); acked {acked}, "
        f"stored {stored} episodes"
    )
    out.ok = status == 200 and acked == count and stored == count
    return out


# ---- the list -------------------------------------------------------------------------------------------------------


def probes(s: Stack) -> list[Probe]:
    valid = dumps(notification(alert("ProbeUnmatched", "@FP@", now_rfc3339())))
    no_alertname = json.loads(valid)
    del no_alertname["alerts"][0]["labels"]["alertname"]
    surrogate = valid.replace(b'"probe-bot"', b'"probe-\\ud800"')
    oversized = valid[:-2] + b', "padding": "' + b"x" * MAX_BODY_BYTES + b'"}'
    version_3 = {**json.loads(valid), "version": "3"}
    hook = bearer(s.webhook_token)
    read = bearer(s.read_token)
    ok = [hook, JSON]
    control = bearer(s.control_token)
    absurd = dumps(notification(alert("ProbeWaiting", "@FP@", "9999-12-31T23:59:59.999Z")))
    unparseable = dumps(notification(alert("ProbeWaiting", "@FP@", "+10000-01-01T00:00:00Z")))
    return [
        webhook_probe("no_token", [JSON], valid, 401, "unauthorized"),
        webhook_probe("wrong_token", [bearer("wrong"), JSON], valid, 401, "unauthorized"),
        webhook_probe("read_token_on_the_webhook", [read, JSON], valid, 401, "unauthorized"),
        webhook_probe("non_ascii_token_latin1", [bearer(b"caf\xe9"), JSON], valid, 401, "unauthorized"),
        webhook_probe("non_ascii_token_not_utf8", [bearer(b"\xff\xfe"), JSON], valid, 401, "unauthorized"),
        webhook_probe("non_ascii_scheme", [b"Authorization: \xff\xfe", JSON], valid, 401, "unauthorized"),
        webhook_probe("not_json", ok, b"{not json", 400, "invalid_json"),
        webhook_probe("utf16_body", ok, valid.decode().encode("utf-16"), 400, "invalid_json"),
        webhook_probe("version_3", ok, dumps(version_3), 422, "unsupported_version"),
        webhook_probe("missing_alertname", ok, dumps(no_alertname), 422, "invalid_payload"),
        webhook_probe("lone_surrogate_in_a_label", ok, surrogate, 422, "invalid_payload"),
        webhook_probe("absurd_starts_at_alone", ok, absurd, 422, "invalid_payload"),
        webhook_probe("unparseable_starts_at_alone", ok, unparseable, 422, "invalid_payload"),
        webhook_probe("oversized_body", ok, oversized, 413, "too_large"),
        webhook_probe("oversized_body_chunked", ok, oversized, 413, "too_large", chunked=True),
        poison,
        shell_labels,
        read_probe("episodes_without_a_token", "/api/v1/episodes", [], 401),
        read_probe("episodes_with_the_webhook_token", "/api/v1/episodes", [hook], 401),
        read_probe("episodes_non_ascii_token", "/api/v1/episodes", [bearer(b"caf\xe9")], 401),
        read_probe("episode_id_past_64_bits", "/api/v1/episodes/99999999999999999999", [read], 404),
        read_probe("episode_id_not_a_number", "/api/v1/episodes/1e3", [read], 400),
        read_probe("episodes_state_nul", "/api/v1/episodes?state=%00", [read], 400),
        read_probe("episodes_limit_0", "/api/v1/episodes?limit=0", [read], 400),
        read_probe("episodes_limit_huge", "/api/v1/episodes?limit=99999999999999999999", [read], 400),
        control_probe("control_without_a_token", "pause", [], b"", 401),
        control_probe("control_wrong_token", "pause", [bearer("wrong")], b"", 401),
        control_probe("control_non_ascii_token_latin1", "pause", [bearer(b"caf\xe9")], b"", 401),
        control_probe("control_non_ascii_token_not_utf8", "pause", [bearer(b"\xff\xfe")], b"", 401),
        control_probe("control_not_json", "pause", [control, JSON], b"{not json", 400),
        control_probe("control_unknown_command", "rm%20-rf%20%2F", [control], b"", 404),
        control_probe("control_oversized_body", "pause", [control, JSON], b"{" + b" " * BOT_MAX_BODY_BYTES + b"}", 413),
        hostile_silence,
        http_label_chooses_no_host,
        http_follows_no_redirect,
        verification_ignores_the_generator_url,
        circuit_open_pages,
        # Last: its 1,000 episodes would push the others out of the episode API's newest 500.
        full_group,
    ]


async def counted(reader: Reader, s: Stack) -> dict[str, float]:
    """The refusal counters the probes must move: the webhook's by reason, invalid alerts, the bot's unauthorized."""
    rejected = "tradingops_notifications_rejected_total"
    values = {r: await reader.metric(s.reconciler, rejected, f'reason="{r}"') for r in REASONS}
    values["alerts_invalid"] = await reader.metric(s.reconciler, "tradingops_alerts_invalid_total")
    values["bot_unauthorized"] = await reader.metric(
        s.bot, "tradingbot_control_command_failures_total", 'reason="unauthorized"'
    )
    return values


async def run_probes(s: Stack, emit: Callable[[Outcome], None]) -> list[Outcome]:
    """Send every probe (each outcome to `emit` as it comes), then check that every refusal was counted by reason."""
    run = uuid.uuid4().hex[:8]
    outcomes: list[Outcome] = []
    timeout = aiohttp.ClientTimeout(total=IO_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        reader = Reader(session, s)
        before = await counted(reader, s)
        for probe in probes(s):
            try:
                outcome = await probe(s, reader, run)
            except Exception as exc:  # a probe that breaks is a failed probe, named, not a traceback
                outcome = Outcome(getattr(probe, "__name__", "probe"), "-", None, [], f"{type(exc).__name__}: {exc}")
                outcome.ok = False
            outcomes.append(outcome)
            emit(outcome)
        after = await counted(reader, s)
    expected = {r: sum(1 for o in outcomes if o.reason == r) for r in REASONS}
    expected["alerts_invalid"] = 2  # the absurd startsAt beside a valid alert, sent twice
    expected["bot_unauthorized"] = sum(1 for o in outcomes if o.target == "bot control API" and o.expected == [401])
    for name, want in expected.items():
        got = after[name] - before[name]
        where = "bot control API" if name.startswith("bot_") else "reconciler /metrics"
        check = Outcome(f"counted_{name}", where, None, [], f"{got:g} counted for {want} sent")
        check.ok = got == want
        outcomes.append(check)
        emit(check)
    return outcomes


# ---- a live stack of our own ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StackError(Exception):
    """The stack under probe could not start: one line saying which part and why."""


async def wait_up(session: aiohttp.ClientSession, url: str, procs: dict[str, subprocess.Popen[bytes]]) -> None:
    end = time.monotonic() + STARTUP_SECONDS
    while True:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise StackError(f"{name} exited with status {proc.returncode} (its log is in the probe's directory)")
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status == 200:
                    return
        except (aiohttp.ClientError, TimeoutError):
            pass
        if time.monotonic() > end:
            raise StackError(f"{url} did not answer within {STARTUP_SECONDS:g} s")
        await asyncio.sleep(POLL_SECONDS)


def binary(*names: str) -> str:
    for name in names:
        if path := shutil.which(name):
            return path
    raise StackError(f"{names[0]} is not on PATH (Debian: apt-get install {names[0]})")


def launch(name: str, argv: list[str], root: Path) -> subprocess.Popen[bytes]:
    with (root / f"{name}.log").open("wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


async def start_stack(root: Path, database_url: str, procs: dict[str, subprocess.Popen[bytes]]) -> Stack:
    """Start everything (into `procs`, which the caller stops whatever happens) and wait until it is healthy."""
    allowed, other = Receiver(), Receiver()
    await allowed.start()
    await other.start()
    allowed.redirect_to = f"{other.url}/stolen"
    tokens = {name: uuid.uuid4().hex for name in ("control", "webhook", "read")}
    for name, value in tokens.items():
        (root / f"{name}-token").write_text(value)
        (root / f"{name}-token").chmod(0o600)  # a secret: only its owner reads it (the services refuse more)
    bot_port, reconciler_port, prometheus_port, alertmanager_port = (free_port() for _ in range(4))
    prometheus_url, alertmanager_url = f"http://127.0.0.1:{prometheus_port}", f"http://127.0.0.1:{alertmanager_port}"
    (root / "playbook.yml").write_text(yaml.safe_dump(probe_playbook(allowed.hostport)))
    (root / "rules.yml").write_text(yaml.safe_dump(PROMETHEUS_RULES))
    (root / "prometheus.yml").write_text(
        yaml.safe_dump({"global": {"evaluation_interval": "1s"}, "rule_files": [str(root / "rules.yml")]})
    )
    (root / "alertmanager.yml").write_text(
        yaml.safe_dump({"route": {"receiver": "null"}, "receivers": [{"name": "null"}]})
    )
    config = {
        "database": {"url": database_url},
        "bot": {
            "listen": {"host": "127.0.0.1", "port": bot_port},
            "control_token_file": str(root / "control-token"),
            "data_dir": str(root / "bot"),
        },
        "reconciler": {
            "listen": {"host": "127.0.0.1", "port": reconciler_port},
            "token_file": str(root / "webhook-token"),
            "read_token_file": str(root / "read-token"),
            "playbook": str(root / "playbook.yml"),
            "prometheus_url": prometheus_url,
            "alertmanager_url": alertmanager_url,
            "check_silences": True,
            "http_allowed_hosts": [allowed.hostport],
            "poll_interval_seconds": 0.2,
            "watchdog": {"window_seconds": 0},
            "targets": {
                f"127.0.0.1:{bot_port}": {
                    "url": f"http://127.0.0.1:{bot_port}",
                    "token_file": str(root / "control-token"),
                }
            },
        },
        "scheduler": {"enabled": False},
        "logging": {"level": "WARNING"},
    }
    path = root / "trading-ops.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = [sys.executable, "-m", "trading_ops", "--config", str(path)]
    migrated = await asyncio.to_thread(
        subprocess.run, [*cli, "db", "upgrade"], capture_output=True, text=True, timeout=120, check=False
    )
    if migrated.returncode != 0:
        raise StackError(f"db upgrade failed: {(migrated.stderr.strip().splitlines() or ['?'])[-1]}")
    procs["prometheus"] = launch(
        "prometheus",
        [
            binary("prometheus"),
            f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={root / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
            "--log.level=warn",
        ],
        root,
    )
    procs["alertmanager"] = launch(
        "alertmanager",
        [
            binary(*ALERTMANAGER_BINARIES),
            f"--config.file={root / 'alertmanager.yml'}",
            f"--storage.path={root / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{alertmanager_port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
        root,
    )
    procs["paper-bot"] = launch("paper-bot", [*cli, "paper-bot"], root)
    procs["reconciler"] = launch("reconciler", [*cli, "reconciler"], root)
    async with aiohttp.ClientSession() as session:
        await wait_up(session, f"{prometheus_url}/-/ready", procs)
        await wait_up(session, f"{alertmanager_url}/-/ready", procs)
        await wait_up(session, f"http://127.0.0.1:{bot_port}/healthz", procs)
        await wait_up(session, f"http://127.0.0.1:{reconciler_port}/readyz", procs)
    return Stack(
        reconciler=f"http://127.0.0.1:{reconciler_port}",
        bot=f"http://127.0.0.1:{bot_port}",
        alertmanager=alertmanager_url,
        database_url=database_url,
        webhook_token=tokens["webhook"],
        read_token=tokens["read"],
        control_token=tokens["control"],
        allowed=allowed,
        other=other,
        root=root,
    )


def stop_all(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.terminate()
    for proc in procs.values():
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def emit_line(outcome: Outcome) -> None:
    print(json.dumps(outcome.as_json()), flush=True)


async def probe_once(root: Path, database_url: str) -> list[Outcome]:
    procs: dict[str, subprocess.Popen[bytes]] = {}
    stack: Stack | None = None
    try:
        stack = await start_stack(root, database_url, procs)
        return await run_probes(stack, emit_line)
    finally:
        await asyncio.to_thread(stop_all, procs)
        if stack is not None:
            await stack.allowed.stop()
            await stack.other.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        help="the ledger's database, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/probe (an empty database: it "
        "is migrated); default: SQLite in the probe's temporary directory",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, ledger) afterwards")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="probe-hostile-"))
    database_url = args.database_url or f"sqlite:///{root / 'trading-ops.db'}"
    started = time.monotonic()
    try:
        outcomes = asyncio.run(probe_once(root, database_url))
    except StackError as exc:
        kept = f" (logs in {root})" if args.keep else " (--keep keeps its logs)"
        print(json.dumps({"summary": {"error": f"the stack did not start: {exc}{kept}"}, "ok": False}))
        return 2
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    server_errors = [o.name for o in outcomes if o.status is not None and o.status >= 500]
    failed = [o.name for o in outcomes if not o.ok]
    summary = {
        "database": database_url.split(":", 1)[0].split("+", 1)[0],
        "probes": len(outcomes),
        "passed": len(outcomes) - len(failed),
        "server_errors": server_errors,
        "failed": failed,
        "seconds": round(time.monotonic() - started, 1),
    }
    if args.keep:
        summary["directory"] = str(root)
    print(json.dumps({"summary": summary, "ok": not server_errors and not failed}))
    return 0 if not server_errors and not failed else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
