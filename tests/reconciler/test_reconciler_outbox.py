"""A page is never lost when Alertmanager is down: the escalation outbox posts it once Alertmanager is back, once.

Real servers: Alertmanager (`prometheus-alertmanager`, started, stopped and paused by pid here), an SMTP server
(aiosmtpd) behind the apprise `mailto://` fallback, and reconciler processes killed with SIGKILL. Each Alertmanager
routes every alert to a webhook here that counts the notifications (the pages) it sends for each episode.

The outage lasts OUTAGE_SECONDS (TRADING_OPS_TEST_AM_OUTAGE_SECONDS, 3 s by default: the outbox's backoff is capped at
a second in these tests, so a short outage proves what a long one does), and REALISTIC_OUTAGE_SECONDS in the one
test of a realistic outage (TRADING_OPS_TEST_AM_REALISTIC_OUTAGE_SECONDS, 30 s by default: three of the posts' 10 s
timeouts). Each test prints the outbox's drain time after Alertmanager's return as a JSON line (`pytest -s`)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from alertmanager_server import Alertmanager, start_alertmanager
from polling import until_async
from ports import free_port
from reconciler_server import AUTH, READ_AUTH, TOKEN, make_config, write_playbook
from secret_file import write_secret
from server_process import stop, wait_http
from smtp_sink import SMTPServer, serve_smtp
from webhook_payloads import alert, payload

from trading_ops.clients.alertmanager import TIMEOUT as AM_CLIENT_TIMEOUT
from trading_ops.db.base import make_engine, utcnow
from trading_ops.reconciler import keys
from trading_ops.reconciler.actions.escalate import FAILED, escalation_alert
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.ledger import AlertIn, Ledger, NotificationIn
from trading_ops.reconciler.outbox import VIA_APPRISE, OutboxStore

pytestmark = [pytest.mark.alertmanager]

OUTAGE_SECONDS = float(os.environ.get("TRADING_OPS_TEST_AM_OUTAGE_SECONDS", "3"))
# Three times the Alertmanager client's timeout: the fallback pages (after 5 s and a timed-out post) and more posts
# time out, and queue unanswered on the frozen Alertmanager, before it thaws.
REALISTIC_OUTAGE_SECONDS = float(
    os.environ.get("TRADING_OPS_TEST_AM_REALISTIC_OUTAGE_SECONDS", str(3 * (AM_CLIENT_TIMEOUT.total or 0)))
)
PAGES = 6
# Fast enough for a test: the backoff doubles from 0.2 s to 1 s.
ESCALATION = {"retry_initial_seconds": 0.2, "retry_max_seconds": 1.0}
# Every step fails (exit status 3): with one attempt, each episode escalates at once.
RULE = {
    "name": "restart",
    "match": ['alertname=~"TradingBot.*"'],
    "cooldown": 0,
    "max_attempts": 1,
    "verify": False,
    "steps": [{"action": "exec", "argv": [sys.executable, "-c", "raise SystemExit(3)"], "timeout": "10s"}],
}


class Pages:
    """A webhook receiver of Alertmanager: every firing notification it sends, by the escalation's episode label."""

    def __init__(self) -> None:
        self.by_episode: dict[str, int] = {}
        self.url = ""

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.json()
        for a in body["alerts"]:
            if a["status"] == "firing" and "episode" in a["labels"]:
                self.by_episode[a["labels"]["episode"]] = self.by_episode.get(a["labels"]["episode"], 0) + 1
        return web.json_response({})


@pytest.fixture
def mail() -> Iterator[SMTPServer]:
    """The apprise fallback's real SMTP server (aiosmtpd, as tests/ops uses it), keeping what it receives."""
    with serve_smtp() as server:
        yield server


@pytest.fixture
async def pages(aiohttp_server: Any) -> Pages:
    receiver = Pages()
    app = web.Application()
    app.router.add_post("/", receiver.receive)
    server = await aiohttp_server(app)
    receiver.url = str(server.make_url("/"))
    return receiver


def instances(count: int) -> list[str]:
    run = uuid.uuid4().hex[:6]
    return [f"bot-{run}-{i}" for i in range(count)]


def held_pages(am: Alertmanager) -> dict[str, list[dict[str, Any]]]:
    """The escalations Alertmanager holds, by episode label."""
    found: dict[str, list[dict[str, Any]]] = {}
    for held in am.get("alerts"):
        if held["labels"].get("alertname") == FAILED and "episode" in held["labels"]:
            found.setdefault(held["labels"]["episode"], []).append(held)
    return found


def start_am(tmp: Path, pages: Pages, port: int | None = None) -> Alertmanager:
    # repeat_interval 1h: a second notification of one alert within a test would be a second page.
    return start_alertmanager(tmp, webhook_url=pages.url, port=port)


def assert_one_page_per_episode(
    am: Alertmanager, pages: Pages, ledger: Ledger, episodes: dict[int, str], original: str = "TradingBotStalled"
) -> None:
    """Alertmanager holds exactly one escalation per episode, naming its alert and target, with the outbox row's
    startsAt, and paged (notified its receiver) exactly once for it."""
    held = held_pages(am)
    store = OutboxStore(ledger)
    for episode_id, instance in episodes.items():
        alerts = held.get(str(episode_id), [])
        assert len(alerts) == 1, f"episode {episode_id}: {alerts}"
        labels = alerts[0]["labels"]
        assert (labels["original_alertname"], labels["instance"], labels["target"]) == (original, instance, instance)
        (row,) = store.of_episode(episode_id)
        started = datetime.fromisoformat(alerts[0]["startsAt"].replace("Z", "+00:00"))
        assert abs((started - row["starts_at"]).total_seconds()) < 0.001, (alerts[0]["startsAt"], row["starts_at"])
        assert row["posted_at"] is not None
    assert {int(k): v for k, v in pages.by_episode.items() if int(k) in episodes} == dict.fromkeys(episodes, 1)


def report(test: str, outage: float, drained: float, how: str) -> None:
    print(json.dumps({"test": test, "pages": PAGES, "outage_seconds": outage, "how": how, "drain_seconds": drained}))


# ---- one reconciler: Alertmanager stopped, then back ----------------------------------------------------------


@pytest.mark.parametrize("apprise", [False, True], ids=["no-apprise", "apprise"])
async def test_pages_owed_while_alertmanager_is_down_arrive_once_it_is_back(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, pages: Pages, mail: SMTPServer, apprise: bool
) -> None:
    am = await asyncio.to_thread(start_am, tmp_path / "am", pages)
    port = int(am.url.rsplit(":", 1)[1])
    await asyncio.to_thread(stop, am.proc)  # down (by pid) before any escalation falls due
    down = time.monotonic()
    try:
        config = make_config(
            tmp_path,
            migrated_sqlite,
            [mail.mailto()] if apprise else None,
            playbook=str(write_playbook(tmp_path, [RULE])),
            alertmanager_url=am.url,
            escalation={**ESCALATION, "fallback_after_seconds": 0.5 if apprise else 3600},
        )
        client = await aiohttp_client(create_app(config))
        bots = instances(PAGES)
        for bot in bots:
            body = payload(alert("TradingBotStalled", fingerprint=bot.replace("-", ""), instance=bot))
            assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200

        async def listed() -> list[dict[str, Any]]:
            return (await (await client.get("/api/v1/episodes", headers=READ_AUTH)).json())["episodes"]  # type: ignore[no-any-return]

        # Without apprise nobody has the page yet: escalating, never failed. With it, the mail is the page.
        waiting = "escalated" if apprise else "escalating"
        episodes = await until_async(f"{PAGES} episodes {waiting}", lambda: _with_states(listed, {waiting}, PAGES), 60)
        registry = client.app[keys.REGISTRY]
        assert registry.get_sample_value("tradingops_escalations_pending") == PAGES
        assert registry.get_sample_value("tradingops_episodes_total", {"outcome": "failed"}) == 0
        if apprise:
            mails = await mail.mailbox.await_messages(PAGES)
            assert sorted(str(m["Subject"]) for m in mails) == sorted(
                f"[trading-ops] {FAILED}: TradingBotStalled on {bot}" for bot in bots
            )
            assert all(e["detail"].endswith(VIA_APPRISE) for e in episodes)
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down)))
        am = await asyncio.to_thread(start_am, tmp_path / "am", pages, port)
        back = time.monotonic()
        await until_async("the outbox drained", lambda: _pending_is(registry, 0), 60)
        drained = time.monotonic() - back
        report("stopped", time.monotonic() - down - drained, drained, "apprise" if apprise else "alertmanager only")
        episodes = await until_async(
            f"{PAGES} episodes escalated", lambda: _with_states(listed, {"escalated"}, PAGES), 60
        )
        assert all(e["detail"].endswith(VIA_APPRISE) == apprise for e in episodes)
        ledger = client.app[keys.LEDGER]
        by_id = {e["id"]: e["target"] for e in episodes}
        await until_async("a page per episode", lambda: len(pages.by_episode) >= PAGES, 60, in_thread=True)
        await asyncio.to_thread(assert_one_page_per_episode, am, pages, ledger, by_id)
        assert len(mail.mailbox.messages) == (PAGES if apprise else 0)  # apprise sent each page once
        assert registry.get_sample_value("tradingops_escalation_oldest_pending_seconds") == 0
    finally:
        await asyncio.to_thread(stop, am.proc)


async def _with_states(listed: Callable[[], Awaitable[list[dict[str, Any]]]], states: set[str], count: int) -> Any:
    episodes = await listed()
    if len(episodes) == count and all(e["state"] in states for e in episodes):
        return episodes
    assert not [e for e in episodes if e["state"] == "failed"], episodes
    return None


async def _pending_is(registry: Any, value: float) -> bool:
    return bool(await asyncio.to_thread(registry.get_sample_value, "tradingops_escalations_pending") == value)


async def test_a_realistic_outage_alertmanager_frozen_by_sigstop(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str, pages: Pages, mail: SMTPServer
) -> None:
    """Alertmanager stopped with SIGSTOP for REALISTIC_OUTAGE_SECONDS: connections are accepted and never answered
    (the posts time out, and those it read before it froze are processed when it thaws); the apprise fallback pages
    meanwhile, and Alertmanager still holds one alert, and sends one page, per episode afterwards."""
    am = await asyncio.to_thread(start_am, tmp_path / "am", pages)
    os.kill(am.proc.pid, signal.SIGSTOP)
    down = time.monotonic()
    try:
        config = make_config(
            tmp_path,
            migrated_sqlite,
            [mail.mailto()],
            playbook=str(write_playbook(tmp_path, [RULE])),
            alertmanager_url=am.url,
            escalation={**ESCALATION, "fallback_after_seconds": 5},
        )
        client = await aiohttp_client(create_app(config))
        bots = instances(PAGES)
        for bot in bots:
            body = payload(alert("TradingBotStalled", fingerprint=bot.replace("-", ""), instance=bot))
            assert (await client.post("/api/v1/alertmanager", json=body, headers=AUTH)).status == 200
        await mail.mailbox.await_messages(PAGES, deadline=60)  # the fallback: after 5 s and a timed-out post
        registry = client.app[keys.REGISTRY]
        assert registry.get_sample_value("tradingops_escalations_pending") == PAGES
        await asyncio.sleep(max(0.0, REALISTIC_OUTAGE_SECONDS - (time.monotonic() - down)))
        os.kill(am.proc.pid, signal.SIGCONT)
        back = time.monotonic()
        await until_async("the outbox drained", lambda: _pending_is(registry, 0), 60)
        drained = time.monotonic() - back
        report("sigstop", back - down, drained, "apprise")
        ledger = client.app[keys.LEDGER]
        episodes = await asyncio.to_thread(ledger.list_episodes)
        assert {e["state"] for e in episodes} == {"escalated"} and len(episodes) == PAGES
        await until_async("a page per episode", lambda: len(pages.by_episode) >= PAGES, 60, in_thread=True)
        await asyncio.to_thread(
            assert_one_page_per_episode, am, pages, ledger, {e["id"]: e["target"] for e in episodes}
        )
        assert len(mail.mailbox.messages) == PAGES
    finally:
        with_cont(am.proc)
        await asyncio.to_thread(stop, am.proc)


def with_cont(proc: subprocess.Popen[bytes]) -> None:
    """A stopped process cannot act on SIGTERM: continue it first (a failed test must not leave it frozen)."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)


# ---- reconciler processes: one killed while it sends, another takes its pages over --------------------------------


def write_config(tmp_path: Path, name: str, db_url: str, am_url: str) -> tuple[Path, int]:
    port = free_port()
    write_secret(tmp_path / "webhook-token", TOKEN)
    data = {
        "database": {"url": db_url},
        "reconciler": {
            "listen": {"port": port},
            "instance": name,
            "token_file": str(tmp_path / "webhook-token"),
            "playbook": str(write_playbook(tmp_path, [RULE])),
            "poll_interval_seconds": 0.05,
            "lease_seconds": 30,
            "check_silences": False,
            "alertmanager_url": am_url,
            "watchdog": {"window_seconds": 0},
            "escalation": {**ESCALATION, "fallback_after_seconds": 3600},
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, port


def spawn(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "trading_ops", "-c", str(config), "reconciler"],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "ab"),  # noqa: SIM115
    )
    wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
    return proc


def post(port: int, body: dict[str, Any]) -> int:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/alertmanager",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **AUTH},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return int(resp.status)


@pytest.mark.parametrize("who", ["replica", "restarted"])
async def test_a_reconciler_killed_while_sending_leaves_its_pages_to_the_next(
    tmp_path: Path, migrated_sqlite: str, pages: Pages, who: str
) -> None:
    """Alertmanager frozen (SIGSTOP): the first reconciler's post of the pages hangs, the rows held under its lease;
    it is killed (SIGKILL) there. Another replica, or the same one restarted, takes the pages over at once (their
    holder is provably dead) and delivers them when Alertmanager thaws: one alert, one page per episode."""
    am = await asyncio.to_thread(start_am, tmp_path / "am", pages)
    os.kill(am.proc.pid, signal.SIGSTOP)
    down = time.monotonic()
    first_config, first_port = write_config(tmp_path, "first", migrated_sqlite, am.url)
    procs: list[subprocess.Popen[bytes]] = []
    ledger = Ledger(make_engine(migrated_sqlite))
    store = OutboxStore(ledger)
    try:
        procs.append(await asyncio.to_thread(spawn, first_config, first_port, tmp_path / "first.log"))
        bots = instances(PAGES)
        for bot in bots:
            body = payload(alert("TradingBotStalled", fingerprint=bot.replace("-", ""), instance=bot))
            assert await asyncio.to_thread(post, first_port, body) == 200

        def held_by_first() -> list[dict[str, Any]]:
            """Every page owed, and some held by the first reconciler (its post of them hangs)."""
            rows = [r for e in ledger.list_episodes() for r in store.of_episode(e["id"])]
            held = [r for r in rows if r["owner"] and r["posted_at"] is None]
            return held if len(rows) == PAGES and held else []

        held = await until_async("pages held by the first reconciler", held_by_first, 60, in_thread=True)
        assert all(r["owner"].startswith("first:") for r in held)
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait()
        if who == "replica":
            config, port = write_config(tmp_path, "second", migrated_sqlite, am.url)
        else:
            config, port = first_config, first_port
        procs.append(await asyncio.to_thread(spawn, config, port, tmp_path / f"{who}.log"))
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down)))
        os.kill(am.proc.pid, signal.SIGCONT)
        back = time.monotonic()

        def drained() -> bool:
            return store.stats().pending == 0

        await until_async("the outbox drained", drained, 60, in_thread=True)
        took = time.monotonic() - back
        report(f"sigkill-{who}", back - down, took, "alertmanager only")
        episodes = await asyncio.to_thread(ledger.list_episodes)
        assert sorted(e["state"] for e in episodes) == ["escalated"] * PAGES, episodes
        await until_async("a page per episode", lambda: len(pages.by_episode) >= PAGES, 60, in_thread=True)
        await asyncio.to_thread(
            assert_one_page_per_episode, am, pages, ledger, {e["id"]: e["target"] for e in episodes}
        )
    finally:
        ledger.engine.dispose()
        with_cont(am.proc)
        for proc in procs:
            await asyncio.to_thread(stop, proc)
        await asyncio.to_thread(stop, am.proc)


# ---- the outbox's claims, on both databases -----------------------------------------------------------------------


def owe_pages(ledger: Ledger, count: int) -> list[int]:
    """`count` episodes whose runs gave up: each an escalating episode with its page in the outbox."""
    store, run = OutboxStore(ledger), uuid.uuid4().hex[:6]
    ids = []
    for i in range(count):
        instance = f"bot-{run}-{i}"
        labels = {"alertname": "TradingBotStalled", "instance": instance}
        a = AlertIn("firing", f"{run}{i}", utcnow(), labels["alertname"], labels, {}, "", "restart", instance)
        ledger.store([NotificationIn("reconciler", "firing", "g", "{}", [a])])
        (episode_id,) = [e["id"] for e in ledger.list_episodes() if e["target"] == instance]
        assert ledger.claim(episode_id, instance, "run", utcnow(), 60) is not None
        page = escalation_alert(FAILED, labels, instance, "gave up", episode=episode_id)
        assert store.enqueue(episode_id, "run", page, "gave up", utcnow())
        ids.append(episode_id)
    return ids


def test_two_live_replicas_never_hold_one_page_and_a_dead_ones_pages_are_taken_at_once(database_url: str) -> None:
    from trading_ops.db import migrate

    migrate.upgrade(database_url)
    ledger = Ledger(make_engine(database_url))
    try:
        store = OutboxStore(ledger)
        episodes = owe_pages(ledger, 5)
        assert {e["state"] for e in ledger.list_episodes()} == {"escalating"}
        alive = lambda _owner: False  # noqa: E731 - both replicas live
        now = utcnow()
        first = store.claim_due("replica-a", now, 30, limit=3, is_dead=alive)
        second = store.claim_due("replica-b", now, 30, is_dead=alive)
        assert len(first) == 3 and len(second) == 2
        assert {p.episode_id for p in first} | {p.episode_id for p in second} == set(episodes)
        # Both hold theirs: nothing is left to claim, for either, while the leases run.
        assert store.claim_due("replica-a", now, 30, is_dead=alive) == []
        assert store.claim_due("replica-c", now, 30, is_dead=alive) == []
        # replica-a's process is gone (kill -9): its pages are taken at once, its lease notwithstanding ...
        taken = store.claim_due("replica-c", now, 60, is_dead=lambda owner: owner == "replica-a")
        assert sorted(p.id for p in taken) == sorted(p.id for p in first)
        # ... and replica-b's, alive, once its lease has lapsed (replica-c's, 60 s, still holds).
        later_on = now + timedelta(seconds=31)
        assert sorted(p.id for p in store.claim_due("replica-c", later_on, 30, is_dead=alive)) == sorted(
            p.id for p in second
        )
        # Alertmanager did not take them: each backs off ...
        store.retry_later([(p.id, later_on + timedelta(seconds=60)) for p in taken], "replica-c", "refused")
        assert store.claim_due("replica-c", later_on, 30, is_dead=alive) == []
        # ... until a post is taken again: then every page backing off, held by nobody, is due at once.
        assert store.hurry(later_on) == len(taken)
        retaken = store.claim_due("replica-c", later_on, 60, is_dead=alive)
        assert sorted(p.id for p in retaken) == sorted(p.id for p in taken) and {p.attempts for p in retaken} == {1}
        # What a holder that lost its pages writes changes nothing; the holder's own write delivers them.
        assert store.posted([p.id for p in first], "replica-a", utcnow()) == []
        assert sorted(store.posted([p.id for p in first + second], "replica-c", utcnow())) == sorted(episodes)
        assert {e["state"] for e in ledger.list_episodes()} == {"escalated"}
        assert store.stats().pending == 0
    finally:
        ledger.engine.dispose()
