"""Hostile probe of a live reconciler and paper bot on loopback: every known bad input, its status, the ledger after.

By default it starts its own reconciler and paper bot (temporary directory, free loopback ports, a playbook with a
`wait_for` rule); `--reconciler-url`/`--bot-url` with the token files point it at running ones instead. Each probe
must get its 4xx (or the 2xx of a notification whose valid alerts are stored), never a 5xx, and the ledger must hold
exactly what it should (read through the episode API). Prints JSON; exits 1 when anything was wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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

# What the probes assume of the reconciler unless told otherwise (the defaults of reconciler.max_body_bytes and of
# the bot's control API).
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
BOT_MAX_BODY_BYTES = 64 * 1024
STARTUP_SECONDS = 60.0
LEDGER_DEADLINE_SECONDS = 20.0
POLL_SECONDS = 0.1
IO_TIMEOUT_SECONDS = 30.0
UNAUTHORIZED = 'reason="unauthorized"'
# A rule that waits (wait_for) for the poison probe, and one whose exec step receives a label as environment.
PROBE_PLAYBOOK = {
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
            "max_attempts": 1,
            "on_failure": "none",
            "verify": False,
            "steps": [{"action": "exec", "argv": ["/bin/true"], "env": {"PROBE_INSTANCE": "instance"}}],
        },
    ],
}


@dataclass
class Target:
    """Where the probes go and with which tokens."""

    reconciler: str
    bot: str
    webhook_token: str
    read_token: str
    control_token: str
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    bot_max_body_bytes: int = BOT_MAX_BODY_BYTES
    sentinel_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))


@dataclass
class Outcome:
    name: str
    target: str
    status: int | None
    expected: list[int]
    check: str = ""
    ok: bool = True

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
        "generatorURL": "http://prometheus/graph?g0.expr=" + urllib.parse.quote_plus('count({__name__=~".+"}) > 1e12'),
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


# ---- the ledger and the bot, read back -----------------------------------------------------------------------------


class Reader:
    def __init__(self, session: aiohttp.ClientSession, target: Target) -> None:
        self.session = session
        self.target = target

    async def episodes(self) -> list[dict[str, Any]]:
        url = f"{self.target.reconciler}/api/v1/episodes?limit=500"
        headers = {"Authorization": f"Bearer {self.target.read_token}"}
        async with self.session.get(url, headers=headers) as resp:
            resp.raise_for_status()
            return list((await resp.json())["episodes"])

    async def by_fingerprint(self) -> dict[str, dict[str, Any]]:
        return {e["fingerprint"]: e for e in await self.episodes()}

    async def wait_episode(self, fingerprint: str, closed: bool = False) -> dict[str, Any] | None:
        end = time.monotonic() + LEDGER_DEADLINE_SECONDS
        while True:
            episode = (await self.by_fingerprint()).get(fingerprint)
            if episode is not None and (not closed or episode["closed_at"]):
                return episode
            if time.monotonic() > end:
                return episode
            await asyncio.sleep(POLL_SECONDS)

    async def bot_state(self) -> str:
        url = f"{self.target.bot}/control/status"
        headers = {"Authorization": f"Bearer {self.target.control_token}"}
        async with self.session.post(url, headers=headers) as resp:
            return str((await resp.json()).get("state"))

    async def metric(self, base: str, name: str, label: str) -> float:
        """The sum of the samples of `name` whose labels include `label` (`reason="unauthorized"`)."""
        async with self.session.get(f"{base}/metrics") as resp:
            text = await resp.text()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") and label in line.split("}", 1)[0]:
                total += float(line.rsplit(" ", 1)[1])
        return total


# ---- the probes ---------------------------------------------------------------------------------------------------

Probe = Callable[[Target, Reader, str], Awaitable[Outcome]]


def webhook_probe(name: str, headers: list[bytes], body: bytes, expected: list[int], chunked: bool = False) -> Probe:
    """A webhook request that must be refused, and store nothing (its fingerprint never becomes an episode)."""

    async def probe(t: Target, reader: Reader, run: str) -> Outcome:
        fingerprint = f"p{run}{abs(hash(name)) % 10**6}"
        payload = body.replace(b"@FP@", fingerprint.encode())
        status, _ = await raw(t.reconciler, "POST", "/api/v1/alertmanager", headers, payload, chunked=chunked)
        stored = fingerprint in await reader.by_fingerprint()
        out = Outcome(name, "reconciler webhook", status, expected, f"episode {fingerprint} stored: {stored}")
        out.ok = status in expected and not stored
        return out

    return probe


def now_rfc3339() -> str:
    return (datetime.now(UTC) - timedelta(seconds=30)).isoformat().replace("+00:00", "Z")


async def poison(t: Target, reader: Reader, run: str) -> Outcome:
    """A notification whose rule waits (wait_for): one alert starting 9999-12-31, one valid. Used to be 503 forever."""
    bad, good = f"bad{run}", f"good{run}"
    body = notification(
        alert("ProbeWaiting", bad, "9999-12-31T23:59:59.999Z"), alert("ProbeWaiting", good, now_rfc3339())
    )
    statuses = []
    for _ in range(2):  # Alertmanager's resend gets the same answer: nothing loops
        status, _ = await raw(
            t.reconciler, "POST", "/api/v1/alertmanager", [bearer(t.webhook_token), JSON], json.dumps(body).encode()
        )
        statuses.append(status)
    episodes = await reader.by_fingerprint()
    stored = {f: episodes[f]["state"] for f in (bad, good) if f in episodes}
    out = Outcome("absurd_starts_at_beside_a_valid_alert", "reconciler webhook", statuses[-1], [200])
    out.check = f"both sends {statuses}; episodes {stored} (expected only {good})"
    out.ok = statuses == [200, 200] and list(stored) == [good]
    return out


async def shell_labels(t: Target, reader: Reader, run: str) -> Outcome:
    """Shell characters in a label: stored as sent, never executed (the exec step's label check refuses it)."""
    sentinel = t.sentinel_dir / f"probe-pwned-{run}"
    value = f"x; touch {sentinel} $(touch {sentinel}) `touch {sentinel}`"
    fingerprint = f"shell{run}"
    body = notification(alert("ProbeShell", fingerprint, now_rfc3339(), instance=value))
    status, _ = await raw(
        t.reconciler, "POST", "/api/v1/alertmanager", [bearer(t.webhook_token), JSON], json.dumps(body).encode()
    )
    episode = await reader.wait_episode(fingerprint, closed=True)
    steps = [s["outcome"] for a in (episode or {}).get("attempts", []) for s in a["steps"]]
    out = Outcome("shell_characters_in_labels", "reconciler webhook", status, [200])
    labels_kept = episode is not None and episode["labels"].get("instance") == value
    out.check = (
        f"episode {episode and episode['state']}, label stored as sent: {labels_kept}, steps {steps}, "
        f"{sentinel.name} created: {sentinel.exists()}"
    )
    out.ok = status == 200 and labels_kept and not sentinel.exists() and "success" not in steps
    return out


def read_probe(name: str, path: str, headers: list[bytes], expected: list[int]) -> Probe:
    async def probe(t: Target, reader: Reader, run: str) -> Outcome:
        status, body = await raw(t.reconciler, "GET", path, headers)
        leaked = b'"episodes"' in body or b'"fingerprint"' in body
        out = Outcome(name, "reconciler episode API", status, expected, f"episode data in the answer: {leaked}")
        out.ok = status in expected and not leaked
        return out

    return probe


def control_probe(name: str, command: str, headers: list[bytes], body: bytes, expected: list[int]) -> Probe:
    async def probe(t: Target, reader: Reader, run: str) -> Outcome:
        before = await reader.bot_state()
        status, _ = await raw(t.bot, "POST", f"/control/{command}", headers, body)
        after = await reader.bot_state()
        out = Outcome(name, "bot control API", status, expected, f"bot state {before} -> {after}")
        out.ok = status in expected and before == after
        return out

    return probe


def probes(t: Target) -> list[tuple[str, Probe]]:
    valid = json.dumps(notification(alert("ProbeUnmatched", "@FP@", now_rfc3339()))).encode()
    no_alertname = json.loads(valid)
    del no_alertname["alerts"][0]["labels"]["alertname"]
    surrogate = valid.replace(b'"probe-bot"', b'"probe-\\ud800"')
    oversized = valid[:-2] + b', "padding": "' + b"x" * t.max_body_bytes + b'"}'
    hook = bearer(t.webhook_token)
    ok = [hook, JSON]
    rejected_401 = [401]
    return [
        ("webhook", webhook_probe("no_token", [JSON], valid, rejected_401)),
        ("webhook", webhook_probe("wrong_token", [bearer("wrong"), JSON], valid, rejected_401)),
        ("webhook", webhook_probe("read_token_on_the_webhook", [bearer(t.read_token), JSON], valid, rejected_401)),
        ("webhook", webhook_probe("non_ascii_token_latin1", [bearer(b"caf\xe9"), JSON], valid, rejected_401)),
        ("webhook", webhook_probe("non_ascii_token_not_utf8", [bearer(b"\xff\xfe"), JSON], valid, rejected_401)),
        ("webhook", webhook_probe("non_ascii_scheme", [b"Authorization: \xff\xfe", JSON], valid, rejected_401)),
        ("webhook", webhook_probe("not_json", ok, b"{not json", [400])),
        ("webhook", webhook_probe("utf16_body", ok, valid.decode().encode("utf-16"), [400])),
        ("webhook", webhook_probe("missing_alertname", ok, json.dumps(no_alertname).encode(), [422])),
        ("webhook", webhook_probe("lone_surrogate_in_a_label", ok, surrogate, [422])),
        (
            "webhook",
            webhook_probe(
                "absurd_starts_at_alone",
                ok,
                json.dumps(notification(alert("ProbeWaiting", "@FP@", "9999-12-31T23:59:59.999Z"))).encode(),
                [422],
            ),
        ),
        (
            "webhook",
            webhook_probe(
                "unparseable_starts_at_alone",
                ok,
                json.dumps(notification(alert("ProbeWaiting", "@FP@", "+10000-01-01T00:00:00Z"))).encode(),
                [422],
            ),
        ),
        ("webhook", webhook_probe("oversized_body", ok, oversized, [413])),
        ("webhook", webhook_probe("oversized_body_chunked", ok, oversized, [413], chunked=True)),
        ("webhook", poison),
        ("webhook", shell_labels),
        ("episodes", read_probe("episodes_without_a_token", "/api/v1/episodes", [], rejected_401)),
        ("episodes", read_probe("episodes_with_the_webhook_token", "/api/v1/episodes", [hook], rejected_401)),
        ("episodes", read_probe("episodes_non_ascii_token", "/api/v1/episodes", [bearer(b"caf\xe9")], rejected_401)),
        (
            "episodes",
            read_probe(
                "episode_id_past_64_bits", "/api/v1/episodes/99999999999999999999", [bearer(t.read_token)], [404]
            ),
        ),
        ("episodes", read_probe("episode_id_not_a_number", "/api/v1/episodes/1e3", [bearer(t.read_token)], [400])),
        ("episodes", read_probe("episodes_state_nul", "/api/v1/episodes?state=%00", [bearer(t.read_token)], [400])),
        ("episodes", read_probe("episodes_limit_0", "/api/v1/episodes?limit=0", [bearer(t.read_token)], [400])),
        (
            "episodes",
            read_probe(
                "episodes_limit_huge", "/api/v1/episodes?limit=99999999999999999999", [bearer(t.read_token)], [400]
            ),
        ),
        ("bot", control_probe("control_without_a_token", "pause", [], b"", rejected_401)),
        ("bot", control_probe("control_wrong_token", "pause", [bearer("wrong")], b"", rejected_401)),
        ("bot", control_probe("control_non_ascii_token_latin1", "pause", [bearer(b"caf\xe9")], b"", rejected_401)),
        ("bot", control_probe("control_non_ascii_token_not_utf8", "pause", [bearer(b"\xff\xfe")], b"", rejected_401)),
        ("bot", control_probe("control_not_json", "pause", [bearer(t.control_token), JSON], b"{not json", [400])),
        ("bot", control_probe("control_unknown_command", "rm%20-rf%20%2F", [bearer(t.control_token)], b"", [404])),
        (
            "bot",
            control_probe(
                "control_oversized_body",
                "pause",
                [bearer(t.control_token), JSON],
                b"{" + b" " * t.bot_max_body_bytes + b"}",
                [413],
            ),
        ),
    ]


async def run_probes(t: Target) -> dict[str, Any]:
    """Send every probe; the outcomes, the counters read back, and whether all was as it must be."""
    run = uuid.uuid4().hex[:8]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=IO_TIMEOUT_SECONDS)) as session:
        reader = Reader(session, t)
        counters = (
            ("reconciler webhook", t.reconciler, "tradingops_notifications_rejected_total"),
            ("bot control API", t.bot, "tradingbot_control_command_failures_total"),
        )
        before = [await reader.metric(base, name, UNAUTHORIZED) for _, base, name in counters]
        outcomes = []
        for _, probe in probes(t):
            outcomes.append(await probe(t, reader, run))
        for (where, base, name), start in zip(counters, before, strict=True):
            counted = await reader.metric(base, name, UNAUTHORIZED) - start
            refused = sum(1 for o in outcomes if o.target == where and o.expected == [401])
            check = Outcome(
                f"unauthorized_counted ({where})", f"{name}", None, [], f"{counted:g} for {refused} refused"
            )
            check.ok = counted == refused
            outcomes.append(check)
    server_errors = [o.name for o in outcomes if o.status is not None and o.status >= 500]
    failed = [o.name for o in outcomes if not o.ok]
    return {
        "probes": [o.as_json() for o in outcomes],
        "server_errors": server_errors,
        "failed": failed,
        "ok": not server_errors and not failed,
    }


# ---- a live reconciler and paper bot of our own ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, procs: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    import urllib.request

    end = time.monotonic() + STARTUP_SECONDS
    while True:
        for proc, log in zip(procs, logs, strict=True):
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > end:
            raise RuntimeError(f"{url} did not answer within {STARTUP_SECONDS:g}s")
        time.sleep(POLL_SECONDS)


def start_stack(root: Path) -> tuple[Target, list[subprocess.Popen[bytes]]]:
    tokens = {name: uuid.uuid4().hex for name in ("control", "webhook", "read")}
    for name, value in tokens.items():
        (root / f"{name}-token").write_text(value)
    bot_port, reconciler_port = free_port(), free_port()
    nowhere = f"http://127.0.0.1:{free_port()}"  # no Prometheus or Alertmanager: the reconciler copes
    (root / "playbook.yml").write_text(yaml.safe_dump(PROBE_PLAYBOOK))
    config = {
        "database": {"url": f"sqlite:///{root / 'trading-ops.db'}"},
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
            "prometheus_url": nowhere,
            "alertmanager_url": nowhere,
            "check_silences": False,
            "watchdog": {"window_seconds": 0},
            "targets": {
                f"127.0.0.1:{bot_port}": {
                    "url": f"http://127.0.0.1:{bot_port}",
                    "token_file": str(root / "control-token"),
                }
            },
        },
        "logging": {"level": "WARNING"},
    }
    path = root / "trading-ops.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = [sys.executable, "-m", "trading_ops", "--config", str(path)]
    subprocess.run([*cli, "db", "upgrade"], check=True, capture_output=True, timeout=120)
    logs = [root / "paper-bot.log", root / "reconciler.log"]
    procs = [
        subprocess.Popen([*cli, "paper-bot"], stdout=logs[0].open("wb"), stderr=subprocess.STDOUT),
        subprocess.Popen([*cli, "reconciler"], stdout=logs[1].open("wb"), stderr=subprocess.STDOUT),
    ]
    try:
        wait_up(f"http://127.0.0.1:{bot_port}/healthz", procs, logs)
        wait_up(f"http://127.0.0.1:{reconciler_port}/readyz", procs, logs)
    except Exception:
        stop_stack(procs)
        raise
    target = Target(
        reconciler=f"http://127.0.0.1:{reconciler_port}",
        bot=f"http://127.0.0.1:{bot_port}",
        webhook_token=tokens["webhook"],
        read_token=tokens["read"],
        control_token=tokens["control"],
        sentinel_dir=root,
    )
    return target, procs


def stop_stack(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def secret(path: str | None, what: str) -> str:
    if not path:
        raise SystemExit(f"probe_hostile: {what} is needed with --reconciler-url/--bot-url")
    return Path(path).read_text(encoding="utf-8").strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reconciler-url", help="a running reconciler (default: start one)")
    parser.add_argument("--bot-url", help="a running bot's HTTP server (default: start a paper bot)")
    parser.add_argument("--webhook-token-file")
    parser.add_argument("--read-token-file")
    parser.add_argument("--control-token-file")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="reconciler.max_body_bytes")
    args = parser.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="probe-hostile-") as tmp:
        try:
            if args.reconciler_url or args.bot_url:
                if not (args.reconciler_url and args.bot_url):
                    raise SystemExit("probe_hostile: give both --reconciler-url and --bot-url")
                target = Target(
                    reconciler=args.reconciler_url.rstrip("/"),
                    bot=args.bot_url.rstrip("/"),
                    webhook_token=secret(args.webhook_token_file, "--webhook-token-file"),
                    read_token=secret(args.read_token_file, "--read-token-file"),
                    control_token=secret(args.control_token_file, "--control-token-file"),
                    max_body_bytes=args.max_body_bytes,
                    sentinel_dir=Path(tmp),
                )
            else:
                target, procs = start_stack(Path(tmp))
            report = asyncio.run(run_probes(target))
        finally:
            stop_stack(procs)
    # One probe per line: the report reads as a table.
    lines = ",\n    ".join(json.dumps(p) for p in report["probes"])
    rest = json.dumps({k: v for k, v in report.items() if k != "probes"})[1:]
    print(f'{{"probes": [\n    {lines}\n  ],\n  {rest}')
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
