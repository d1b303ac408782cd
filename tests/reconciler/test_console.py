"""The operator console (/ui/) driven in a real headless Chromium (Debian's, through Playwright; no browser is ever
downloaded): login, the fleet, an episode opened by a real alert, approving a flatten until the bot is flat, rejecting
one until the page is in Alertmanager, what a `read` token may not do, CSRF, maintenance windows, the emergency halt
and the phone-width layout. One reconciler, one Alertmanager, one bot and one browser for the module.

What is at stake on the pages is checked on what they render: the bot by its name, the firing alerts, the count of
approvals waiting, the loss and the positions with their value on an approval, the deadline as "in 10 min", outcomes in
words with their PromQL behind a <details>, one time format. The layout at a desktop's (1440 px) and a phone's (390 px)
width is measured in the page (element boxes): the navigation on one line apart from who is logged in, no title broken
inside a word, no sideways scroll. Screenshots of each main view at both widths go to the test's tmp dir; with
UPDATE_SCREENSHOTS=1 they are also copied to docs/img/console-*.png (the documentation's)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from alertmanager_server import Alertmanager, start_alertmanager
from ports import free_port
from reconciler_server import TOKEN
from server_process import stop
from sqlalchemy import update
from system_binaries import require_binary
from webhook_payloads import alert, payload

from trading_ops.config import load_config
from trading_ops.db import migrate
from trading_ops.db.base import utcnow
from trading_ops.db.models import ConsoleSession, Episode
from trading_ops.reconciler import keys
from trading_ops.reconciler.actions.escalate import APPROVAL_REQUESTED, FAILED
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.console import CSRF_REFUSED
from trading_ops.reconciler.verify import deadline_detail, with_source
from trading_ops.webconfig import app_ssl_context

pytestmark = [pytest.mark.alertmanager]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
READ_TOKEN = "console-read-token-0123456789"
DESK_TOKEN = "console-desk-approve-token-0123456789"
ONCALL_TOKEN = "console-oncall-destructive-token-0123456789"
BOT_OPERATE = "bot-operate-token"
BOT_DESTRUCTIVE = "bot-destructive-token"
# The bot as configuration `bots[]` names it; the console shows this name, never its instance (host:port) alone.
BOT_NAME = "paper-1"
# The console's one time format, and the relative time beside it.
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")
RELATIVE_RE = re.compile(r"^\((in \d.*|\d.* ago|just now)\)$")
WIDTHS = {"desktop": {"width": 1440, "height": 900}, "phone": {"width": 390, "height": 844}}
# The header's and the title's boxes, measured in the page: the navigation links' tops and bottoms (one line: every
# link's box overlaps every other's vertically), whether
# the navigation is scrolled (every link in view or not), whether who is logged in overlaps it, the page's own
# width, and each word of a title (h1, h2) whose text is drawn on more than one line (broken inside the word).
LAYOUT_JS = """() => {
  const box = (e) => e.getBoundingClientRect();
  const nav = document.querySelector("header nav");
  const account = box(document.querySelector("header .account"));
  const n = box(nav);
  const broken = [];
  for (const title of document.querySelectorAll("main h1, main h2")) {
    const walker = document.createTreeWalker(title, NodeFilter.SHOW_TEXT);
    for (let t = walker.nextNode(); t; t = walker.nextNode()) {
      for (const m of t.data.matchAll(/\\S+/g)) {
        const r = document.createRange();
        r.setStart(t, m.index);
        r.setEnd(t, m.index + m[0].length);
        if (new Set([...r.getClientRects()].map((x) => Math.round(x.top))).size > 1) broken.push(m[0]);
      }
    }
  }
  return {
    links: [...nav.querySelectorAll("a")].map((a) => [box(a).top, box(a).bottom]),
    navScroll: [nav.scrollWidth, nav.clientWidth],
    overlap: !(account.right <= n.left || account.left >= n.right ||
               account.bottom <= n.top || account.top >= n.bottom),
    page: [document.documentElement.scrollWidth, document.documentElement.clientWidth],
    broken: broken,
  };
}"""
FLATTEN = {
    "name": "flatten-on-request",
    "match": ['alertname="TradingBotFlattenRequested"'],
    "allow_destructive": True,
    "approval": "required",
    "approval_timeout": "10m",
    "max_attempts": 1,
    "cooldown": 0,
    "verify": False,
    "steps": [{"action": "bot", "command": "cancel_all"}, {"action": "bot", "command": "flatten"}],
}


# The ramp of the configuration (bot.ramp.stages) and the bot's own account of it (its status's `ramp`): back at the
# first stage after a channel stayed down.
RAMP_STAGES = [
    {"name": "small", "max_position_notional": 5, "symbols": ["BTC/USD"], "daily_loss_limit": 2},
    {"name": "bigger", "max_position_notional": 7, "symbols": ["BTC/USD"], "daily_loss_limit": 2},
]
RAMP_STATUS = {
    "stage": 1,
    "name": "small",
    "stages": ["small", "bigger"],
    "since": time.time() - 3600,
    "history": [
        {"at": time.time() - 86400, "from": "small", "to": "bigger", "by": "bob", "cause": "promotion", "why": "ok"},
        {
            "at": time.time() - 3600,
            "from": "bigger",
            "to": "small",
            "by": "risk",
            "cause": "stream_down",
            "why": "stream down: the orders channel to the venue has been down 601 s",
        },
    ],
}


# ---- a bot: its control API as the contract says, with a position to close -------------------------------------------


@dataclass
class Bot:
    url: str = ""
    state: str = "running"
    position: str = "0.5"
    # (command, which token it came with)
    calls: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def commands(self) -> list[str]:
        with self.lock:
            return [c for c, _ in self.calls if c != "status"]

    def handle(self, command: str, token: str) -> tuple[int, dict[str, Any]]:
        scope = {BOT_OPERATE: "operate", BOT_DESTRUCTIVE: "destructive"}.get(token)
        if scope is None:
            return 401, {"ok": False, "error": "unauthorized"}
        if command in ("cancel_all", "flatten", "halt") and scope != "destructive":
            return 403, {"ok": False, "error": f"{command} needs the 'destructive' scope"}
        with self.lock:
            if command != "status":
                self.calls.append((command, scope))
            if command == "status":
                flat = float(self.position) == 0
                return 200, {
                    "state": self.state,
                    "state_reason": "",
                    "heartbeat_age_seconds": 0.4,
                    "positions": {"BTC/USD": self.position, "ETH/USD": "0" if flat else "-0.4065", "SOL/USD": "0"},
                    "position_values": {
                        "BTC/USD": "0.00" if flat else "21000.00",
                        "ETH/USD": "0.00" if flat else "-1234.56",
                        "SOL/USD": "0.00",
                    },
                    "realized_pnl_today": "-1800.50",
                    "unrealized_pnl": "0.00" if flat else "-450.25",
                    "risk_limits": {"daily_loss": 2500.0},
                    "open_orders": 0 if flat else 3,
                    "ramp": RAMP_STATUS,
                }
            if command == "flatten":
                self.position = "0"
            elif command in ("halt", "pause"):
                self.state = {"halt": "halted", "pause": "paused"}[command]
            elif command == "resume":
                self.state = "running"
            return 200, {"ok": True, "state": self.state, "changed": True}


def serve_bot(bot: Bot) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            command = self.path.removeprefix("/control/")
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            status, body = bot.handle(command, token)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    bot.url = f"http://127.0.0.1:{server.server_address[1]}"
    return server


class Reconciler:
    """The reconciler app on a real port, in a thread with its own event loop."""

    def __init__(self, config_path: Path, port: int) -> None:
        self.port = port
        self.app = create_app(load_config(config_path))
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.started.wait(30) or self.error:
            raise RuntimeError(f"the reconciler did not start: {self.error}")
        self.url = f"{'https' if app_ssl_context(self.app) else 'http'}://127.0.0.1:{port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(self.app, access_log=None)
        try:
            self.loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=app_ssl_context(self.app))
            self.loop.run_until_complete(site.start())
        except BaseException as exc:  # reported to the fixture
            self.error = exc
            self.started.set()
            return
        self.started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())
        self.loop.close()

    def api(self, path: str, body: Any = None, token: str = READ_TOKEN) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method="GET" if data is None else "POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@dataclass
class Stack:
    reconciler: Reconciler
    am: Alertmanager
    bot: Bot
    shots: Path

    @property
    def instance(self) -> str:
        """The bot's instance (host:port of its scrape target): its alerts' `instance` label and the console's key."""
        return self.bot.url.removeprefix("http://")


def card(page: Any, stack: Stack) -> Any:
    """The bot's card on the fleet page."""
    return page.locator(f"[id='bot-{stack.instance}']")


def poll(fetch: Callable[[], Any], check: Callable[[Any], bool], what: str, deadline: float = 20.0) -> Any:
    end = time.monotonic() + deadline
    while True:
        value = fetch()
        if check(value):
            return value
        assert time.monotonic() < end, f"{what} not reached within {deadline}s: {value}"
        time.sleep(0.05)


def write_config(tmp: Path, port: int, am_url: str, bot_url: str, **listen: str) -> None:
    """The reconciler's configuration (and its files) in `tmp`: tokens of each scope, the bot as its one entry of
    `bots` (named BOT_NAME)."""
    for name, value in (
        ("webhook-token", TOKEN),
        ("read-token", READ_TOKEN),
        ("desk-token", DESK_TOKEN),
        ("oncall-token", ONCALL_TOKEN),
        ("bot-operate", BOT_OPERATE),
        ("bot-destructive", BOT_DESTRUCTIVE),
    ):
        (tmp / name).write_text(value)
    (tmp / "playbook.yml").write_text(yaml.safe_dump({"version": 1, "rules": [FLATTEN]}))
    db = f"sqlite:///{tmp / 'ledger.db'}"
    migrate.upgrade(db)
    data = {
        "database": {"url": db},
        "reconciler": {
            "token_file": str(tmp / "webhook-token"),
            "read_token_file": str(tmp / "read-token"),
            "api_tokens": [
                {"name": "desk", "scope": "approve", "token_file": str(tmp / "desk-token")},
                {"name": "oncall", "scope": "destructive", "token_file": str(tmp / "oncall-token")},
            ],
            "external_url": f"{'https' if listen else 'http'}://127.0.0.1:{port}",
            "listen": {"port": port, **listen},
            "playbook": str(tmp / "playbook.yml"),
            "poll_interval_seconds": 0.05,
            "lease_seconds": 10,  # half: the idle-in-transaction limit (1.5 s cut starved sessions)
            "check_silences": False,
            "prometheus_url": "http://127.0.0.1:9",
            "alertmanager_url": am_url,
            "watchdog": {"window_seconds": 0},
        },
        "bot": {"ramp": {"stages": RAMP_STAGES}},
        "bots": [
            {
                "name": BOT_NAME,
                "instance": bot_url.removeprefix("http://"),
                "url": bot_url,
                "token_file": str(tmp / "bot-operate"),
                "destructive_token_file": str(tmp / "bot-destructive"),
            }
        ],
    }
    (tmp / "trading-ops.yaml").write_text(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("console")
    am = start_alertmanager(tmp / "alertmanager")
    bot = Bot()
    bot_server = serve_bot(bot)
    reconciler = None
    try:
        port = free_port()
        write_config(tmp, port, am.url, bot.url)
        reconciler = Reconciler(tmp / "trading-ops.yaml", port)
        shots = tmp / "screenshots"
        shots.mkdir()
        yield Stack(reconciler, am, bot, shots)
    finally:
        if reconciler is not None:
            reconciler.stop()
        bot_server.shutdown()
        bot_server.server_close()
        stop(am.proc)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = require_binary("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def login(browser: Any, stack: Stack, token: str, **context: Any) -> Any:
    """A fresh browser context (its own cookies) logged in with `token`: its page, on the fleet."""
    page = browser.new_context(**context).new_page()
    page.goto(f"{stack.reconciler.url}/ui/")
    assert page.url.endswith("/ui/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{stack.reconciler.url}/ui/")
    return page


def screenshot(page: Any, stack: Stack, name: str, section: str | None = None) -> None:
    """The whole page, or only its element `section` (a CSS selector)."""
    path = stack.shots / f"console-{name}.png"
    if section is None:
        page.screenshot(path=str(path), full_page=True)
    else:
        page.locator(section).screenshot(path=str(path))
    if os.environ.get("UPDATE_SCREENSHOTS"):
        shutil.copy(path, REPO / "docs" / "img" / path.name)


def fire(stack: Stack, **annotations: str) -> dict[str, Any]:
    """A firing TradingBotFlattenRequested held by Alertmanager, sent to the webhook as Alertmanager would."""
    labels = {
        "alertname": "TradingBotFlattenRequested",
        "instance": stack.instance,
        "severity": "critical",
        "run": uuid.uuid4().hex[:8],
    }
    held = stack.am.fire(labels)
    fired = alert(fingerprint=held["fingerprint"], starts_at=held["startsAt"], **labels)
    fired["annotations"].update(annotations)
    body = json.dumps(payload(fired)).encode()
    req = urllib.request.Request(
        f"{stack.reconciler.url}/api/v1/alertmanager",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
    )
    urllib.request.urlopen(req, timeout=10).close()
    return labels


def pending(stack: Stack, count: int = 1, step: int | None = None) -> list[dict[str, Any]]:
    return list(
        poll(
            lambda: stack.reconciler.api("/api/v1/approvals?status=pending")["approvals"],
            lambda a: len(a) == count and (step is None or a[0]["step"] == step),
            f"{count} pending approval(s)",
        )
    )


def held_page(stack: Stack, alertname: str, **labels: str) -> dict[str, Any]:
    def find(held: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [a for a in held if a["labels"]["alertname"] == alertname and labels.items() <= a["labels"].items()]

    return find(poll(lambda: stack.am.get("alerts"), lambda h: bool(find(h)), f"a {alertname} page"))[0]


def decide_in_page(page: Any, approval_id: int, decision: str, reason: str, by: str) -> None:
    form = page.locator(f"#approval-{approval_id} form.decide")
    form.locator("input[name=reason]").fill(reason)
    form.locator("input[name=by]").fill(by)
    form.locator(f"button[name=decision][value={decision}]").click()
    page.wait_for_load_state()


def csrf_of(page: Any) -> str:
    return str(page.locator("input[name=csrf]").first.get_attribute("value"))


# ---- the cases -------------------------------------------------------------------------------------------------------


def test_login_shows_the_fleet_with_strict_headers(browser: Any, stack: Stack) -> None:
    page = browser.new_context().new_page()
    page.goto(f"{stack.reconciler.url}/ui/login")
    page.fill("#token", "not-a-token")
    page.click("button[type=submit]")
    assert "Unknown token." in page.locator(".problem").inner_text()
    page.context.close()
    page = login(browser, stack, ONCALL_TOKEN)
    bot = card(page, stack)
    assert "running" in bot.locator(".badge").inner_text()
    assert "0.4 s ago" in bot.inner_text() and "BTC/USD 0.5" in bot.inner_text()
    assert "Circuit" in bot.inner_text() and "closed" in bot.inner_text()
    cookie = next(c for c in page.context.cookies() if c["name"] == "tradingops_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    response = page.request.get(f"{stack.reconciler.url}/ui/")
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "frame-ancestors 'none'" in csp
    page.context.close()


def test_an_alert_opens_an_episode_and_approving_it_flattens_the_bot(browser: Any, stack: Stack) -> None:
    fire(stack)
    first = pending(stack)[0]
    page = login(browser, stack, DESK_TOKEN)
    card(page, stack).locator("text=1 open").click()  # the fleet counts the bot's open episode, and lists it
    assert page.locator("h1").inner_text() == f"Episodes of {BOT_NAME}"
    assert page.locator(".list li").count() == 1
    page.click("nav >> text=Episodes")
    page.click(f"a[href='/ui/episodes/{first['episode_id']}']")
    assert "TradingBotFlattenRequested" in page.locator("h1").inner_text()
    assert "waiting" in page.locator("main").inner_text()
    assert page.locator(f"#approval-{first['id']} form.decide button").count() == 2
    # The page Alertmanager holds links to the console's approval.
    asked = held_page(stack, APPROVAL_REQUESTED, approval=str(first["id"]))
    assert asked["annotations"]["console_url"] == f"{stack.reconciler.url}/ui/approvals#approval-{first['id']}"
    page.goto(f"{stack.reconciler.url}/ui/approvals")
    assert stack.bot.commands() == []
    decide_in_page(page, first["id"], "approve", "desk agrees", "alice")
    assert f'approval {first["id"]} approved by desk (as "alice")' in page.locator(".done").inner_text()
    assert page.locator("nav .count").count() == 0  # nothing waits any more: the navigation counts none
    # One decision covers both steps (cancel_all, then flatten): nothing more is asked.
    poll(lambda: stack.reconciler.api(f"/api/v1/episodes/{first['episode_id']}")["state"], "recovered".__eq__, "done")
    assert stack.bot.commands() == ["cancel_all", "flatten"]
    # Sent with the target's destructive token.
    assert all(scope == "destructive" for _, scope in stack.bot.calls)
    page.goto(f"{stack.reconciler.url}/ui/episodes/{first['episode_id']}")
    steps = page.locator(".timeline .step")
    assert [steps.nth(i).locator("strong").inner_text() for i in range(steps.count())][-2:] == [
        "1. bot command=cancel_all",
        "2. bot command=flatten",
    ]
    page.goto(f"{stack.reconciler.url}/ui/")
    assert "flat" in card(page, stack).locator(".positions").inner_text()
    decided = stack.reconciler.api(f"/api/v1/approvals/{first['id']}")
    assert (decided["decided_by"], decided["decided_token"], decided["reason"]) == ("alice", "desk", "desk agrees")
    page.context.close()


def test_rejecting_pages_a_human_with_a_link_to_the_episode(browser: Any, stack: Stack) -> None:
    fire(stack)
    asked = pending(stack)[0]
    page = login(browser, stack, DESK_TOKEN)
    page.goto(f"{stack.reconciler.url}/ui/episodes/{asked['episode_id']}")
    decide_in_page(page, asked["id"], "reject", "the position is hedged", "dana")
    assert 'rejected by desk (as "dana")' in page.locator(".done").inner_text()
    failed = held_page(stack, FAILED, episode=str(asked["episode_id"]))
    assert "the position is hedged" in failed["annotations"]["description"]
    assert failed["annotations"]["console_url"] == f"{stack.reconciler.url}/ui/episodes/{asked['episode_id']}"
    page.goto(failed["annotations"]["console_url"])
    assert "escalat" in page.locator("main").inner_text()
    assert stack.bot.commands() == ["cancel_all", "flatten"]
    page.context.close()


def test_a_read_token_sees_but_cannot_decide_nor_halt(browser: Any, stack: Stack) -> None:
    fire(stack)
    asked = pending(stack)[0]
    page = login(browser, stack, READ_TOKEN)
    assert page.locator("a.button.danger").count() == 0  # no emergency halt, and the card says why
    assert "Emergency halt: needs the destructive scope (yours: read)" in card(page, stack).inner_text()
    page.goto(f"{stack.reconciler.url}/ui/approvals")
    approval = page.locator(f"#approval-{asked['id']}")
    assert approval.count() == 1 and approval.locator("form").count() == 0
    assert "needs a token with the approve scope" in approval.inner_text()
    page.goto(f"{stack.reconciler.url}/ui/maintenance")
    assert page.locator("form[action='/ui/maintenance']").count() == 0
    # Forged POSTs with the read session and its own CSRF token (the logout form's): refused server-side.
    csrf = csrf_of(page)
    refused = page.request.post(
        f"{stack.reconciler.url}/ui/approvals/{asked['id']}",
        form={"csrf": csrf, "decision": "approve", "reason": "sneaky"},
    )
    assert refused.status == 403
    assert refused.text().strip() == (
        "refused: deciding an approval needs the 'approve' scope; token 'read_token' has 'read'"
    )
    halt = page.request.post(
        f"{stack.reconciler.url}/ui/bots/{stack.instance}/halt", form={"csrf": csrf, "reason": "x"}
    )
    assert halt.status == 403 and "needs the 'destructive' scope" in halt.text()
    assert stack.reconciler.api(f"/api/v1/approvals/{asked['id']}")["status"] == "pending"
    assert "halt" not in stack.bot.commands()
    page.context.close()


def test_a_post_without_the_csrf_token_is_refused(browser: Any, stack: Stack) -> None:
    asked = pending(stack)[0]  # the previous case's, still pending
    page = login(browser, stack, DESK_TOKEN)
    url = f"{stack.reconciler.url}/ui/approvals/{asked['id']}"
    for form in ({"decision": "approve", "reason": "forged"}, {"csrf": "guess", "decision": "approve", "reason": "x"}):
        refused = page.request.post(url, form=form)
        assert refused.status == 403 and refused.text().strip() == CSRF_REFUSED
    assert "default-src 'none'" in refused.headers["content-security-policy"]
    # Nor without a session, nor a login without its form's token.
    anonymous = browser.new_context()
    assert anonymous.request.post(url, form={"decision": "approve"}).status == 403
    forged_login = anonymous.request.post(f"{stack.reconciler.url}/ui/login", form={"token": DESK_TOKEN})
    assert forged_login.status == 403 and forged_login.text().strip() == CSRF_REFUSED
    anonymous.close()
    assert stack.reconciler.api(f"/api/v1/approvals/{asked['id']}")["status"] == "pending"
    page.context.close()


def test_maintenance_windows_start_and_end(browser: Any, stack: Stack) -> None:
    page = login(browser, stack, ONCALL_TOKEN)
    page.click("nav >> text=Maintenance")
    page.fill("input[name=duration]", "20m")
    page.fill("input[name=reason]", "venue upgrade")
    page.fill("textarea[name=matchers]", f"instance={stack.instance}")
    page.fill("input[name=by]", "erin")
    page.click("button:has-text('Start window')")
    assert f"paused {stack.instance}" in page.locator(".done").inner_text()
    assert stack.bot.state == "paused"
    item = page.locator(".list li").first
    assert "active" in item.inner_text() and "venue upgrade" in item.inner_text()
    assert 'console: oncall (as "erin")' in item.inner_text()
    silences = [s for s in stack.am.get("silences") if s["status"]["state"] == "active"]
    assert any(
        {"name": "instance", "value": stack.instance}.items() <= m.items() for s in silences for m in s["matchers"]
    )
    screenshot(page, stack, "maintenance")
    item.locator("button:has-text('End now')").click()
    page.wait_for_load_state()
    assert f"resumed {stack.instance}" in page.locator(".done").inner_text()
    assert stack.bot.state == "running" and "ended" in page.locator(".list li").first.inner_text()
    # Both decisions are audit entries under the session's token (the typed name is no principal), the chain whole.
    entries = stack.reconciler.api("/api/v1/audit")["entries"]
    started, ended = (next(e for e in entries if e["action"] == a) for a in ("maintenance_start", "maintenance_end"))
    assert (started["principal"], ended["principal"]) == ("oncall", "oncall")
    assert started["source"].startswith("console ") and started["after"]["matchers"] == {"instance": stack.instance}
    assert (ended["before"]["state"], ended["after"]["state"]) == ("active", "ended")
    page.context.close()


def test_the_emergency_halt_asks_for_confirmation_first(browser: Any, stack: Stack) -> None:
    page = login(browser, stack, ONCALL_TOKEN)
    card(page, stack).locator("a.button.danger").click()
    assert page.url.endswith(f"/ui/bots/{stack.instance}/halt")
    assert page.locator("h1").inner_text() == f"Halt {BOT_NAME}?"
    assert "halt" not in stack.bot.commands()  # asked, not done
    page.click("a.button:has-text('Cancel')")
    assert "halt" not in stack.bot.commands()
    card(page, stack).locator("a.button.danger").click()
    page.fill("input[name=reason]", "runaway orders")
    page.click(f"button:has-text('Yes, halt {BOT_NAME}')")
    assert f"{BOT_NAME} halted by oncall" in page.locator(".done").inner_text()
    assert stack.bot.state == "halted" and stack.bot.calls[-1] == ("halt", "destructive")
    assert "halted" in card(page, stack).locator("h2 .badge").inner_text()
    (entry,) = [e for e in stack.reconciler.api("/api/v1/audit")["entries"] if e["action"] == "halt"]
    assert (entry["principal"], entry["target"], entry["after"]) == ("oncall", stack.instance, {"state": "halted"})
    assert entry["comment"] == "emergency halt: runaway orders"
    page.context.close()


def test_what_an_alert_says_is_shown_as_text_never_as_markup(browser: Any, stack: Stack) -> None:
    hostile = '<img src=x id=injected><script>document.title="owned"</script>'
    fire(stack, description=hostile)
    asked = poll(
        lambda: stack.reconciler.api("/api/v1/approvals?status=pending")["approvals"],
        lambda a: len(a) == 2,
        "the new approval",
    )[0]
    page = login(browser, stack, READ_TOKEN)
    page.goto(f"{stack.reconciler.url}/ui/episodes/{asked['episode_id']}")
    page.click("summary:has-text('Labels and annotations')")
    assert hostile in page.locator("main details").first.inner_text()
    assert page.locator("#injected").count() == 0 and page.locator("main script").count() == 0
    assert "owned" not in page.title()
    page.context.close()


def self_signed(tmp: Path) -> None:
    """server.crt and server.key: a certificate for 127.0.0.1, signed by its own key."""
    import ipaddress
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    (tmp / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "server.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (tmp / "server.key").chmod(0o600)  # a private key its owner's alone, or the server refuses it


def test_over_tls_the_session_cookie_is_secure(stack: Stack, tmp_path: Path) -> None:
    import http.cookies
    import ssl

    self_signed(tmp_path)
    (tmp_path / "web.yml").write_text(
        yaml.safe_dump({"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"}})
    )
    port = free_port()
    write_config(tmp_path, port, stack.am.url, stack.bot.url, web_config_file=str(tmp_path / "web.yml"))
    served = Reconciler(tmp_path / "trading-ops.yaml", port)
    try:
        assert served.url.startswith("https://")
        tls = ssl.create_default_context(cafile=str(tmp_path / "server.crt"))
        with urllib.request.urlopen(f"{served.url}/ui/login", timeout=10, context=tls) as resp:
            login_cookie = http.cookies.SimpleCookie(resp.headers["Set-Cookie"])
            csrf = next(iter(login_cookie.values()))
        assert csrf["secure"] and csrf["httponly"] and csrf["samesite"] == "Strict"

        class Keep(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any) -> None:
                return None  # the 303 itself: its Set-Cookie is what is checked

        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=tls), Keep())
        form = f"csrf={csrf.value}&token={DESK_TOKEN}".encode()
        req = urllib.request.Request(
            f"{served.url}/ui/login", data=form, headers={"Cookie": f"{csrf.key}={csrf.value}"}, method="POST"
        )
        try:
            opener.open(req, timeout=10)
            raise AssertionError("the login did not redirect")
        except urllib.error.HTTPError as exc:
            assert exc.code == 303, exc.read()
            cookies = [c for c in exc.headers.get_all("Set-Cookie") if c.startswith("tradingops_console=")]
        session = http.cookies.SimpleCookie(cookies[0])["tradingops_console"]
        assert session["secure"] and session["httponly"] and session["samesite"] == "Strict"
        assert session["path"] == "/ui" and len(session.value) >= 40
    finally:
        served.stop()


def test_log_out_ends_the_session_and_sessions_expire(browser: Any, stack: Stack) -> None:
    page = login(browser, stack, READ_TOKEN)
    old = next(c for c in page.context.cookies() if c["name"] == "tradingops_console")
    page.click("button:has-text('Log out')")
    page.wait_for_url(f"{stack.reconciler.url}/ui/login")
    # The old session id, sent again, is no session: the server forgot it.
    page.context.add_cookies([old])
    page.goto(f"{stack.reconciler.url}/ui/approvals")
    assert page.url.endswith("/ui/login")
    page.context.close()
    # A session past its end (its login longer ago than SESSION_SECONDS) is refused too: log in again.
    page = login(browser, stack, READ_TOKEN)
    sid = next(c for c in page.context.cookies() if c["name"] == "tradingops_console")["value"]
    with stack.reconciler.app[keys.LEDGER].db.tx() as conn:
        conn.execute(
            update(ConsoleSession)
            .where(ConsoleSession.id_hash == hashlib.sha256(sid.encode()).hexdigest())
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    page.goto(f"{stack.reconciler.url}/ui/approvals")
    assert page.url.endswith("/ui/login")
    page.context.close()


# ---- what is at stake, and the layout at a desktop's and a phone's width ---------------------------------------------


def test_the_fleet_names_the_bot_lists_the_firing_alerts_and_counts_the_approvals_waiting(
    browser: Any, stack: Stack
) -> None:
    before = len(stack.reconciler.api("/api/v1/approvals?status=pending")["approvals"])
    fire(stack)
    waiting = pending(stack, before + 1)
    held_page(stack, APPROVAL_REQUESTED, approval=str(waiting[0]["id"]))
    page = login(browser, stack, ONCALL_TOKEN)
    bot = card(page, stack)
    # By its name (configuration bots[]), its instance beside it.
    assert bot.locator("h2").inner_text().startswith(f"{BOT_NAME} {stack.instance}")
    assert bot.locator("h2 .instance").inner_text() == stack.instance
    # The alerts Alertmanager holds, each with its severity, its bot by name and since when.
    rows = page.locator("#alerts li")
    flatten = rows.filter(has_text="TradingBotFlattenRequested").first
    assert flatten.locator(".sev").inner_text() == "critical"
    assert f"on {BOT_NAME} {stack.instance}" in flatten.inner_text() and "test alert." in flatten.inner_text()
    assert TIME_RE.match(flatten.locator("time").inner_text())
    assert rows.filter(has_text=APPROVAL_REQUESTED).count() >= 1  # the reconciler's own page, asking for a person
    assert "Watchdog" not in page.locator("#alerts").inner_text()
    assert re.fullmatch(r"Firing alerts \(\d+\)", page.locator("#alerts h2").inner_text())
    assert re.fullmatch(r"\d+ firing", bot.locator("a[href='#alerts']").inner_text())
    # The navigation counts what waits for a decision, on every page.
    for path in ("/ui/", "/ui/episodes", "/ui/maintenance"):
        page.goto(f"{stack.reconciler.url}{path}")
        count = len(stack.reconciler.api("/api/v1/approvals?status=pending")["approvals"])
        assert page.locator("nav a[href='/ui/approvals'] .count").inner_text() == str(count)
    page.context.close()


def test_an_approval_says_what_is_at_stake_and_when_it_runs_out(browser: Any, stack: Stack) -> None:
    stack.bot.position = "0.5"  # the bot holds a position again: what a flatten would close
    asked = stack.reconciler.api("/api/v1/approvals?status=pending")["approvals"][0]
    page = login(browser, stack, DESK_TOKEN)
    page.goto(f"{stack.reconciler.url}/ui/approvals")
    facts = page.locator(f"#approval-{asked['id']} dl")
    said = dict(zip(facts.locator("dt").all_inner_texts(), facts.locator("dd").all_inner_texts(), strict=True))
    assert said["Bot"] == f"{BOT_NAME} {stack.instance}"
    assert said["Asks for"] == "step 1: bot command=cancel_all, then bot command=flatten"
    # The day's loss (realized and unrealized) against the limit, and the position with its value at the mark.
    assert said["Loss today"] == "2,250.75 (limit 2,500.00)"
    assert said["Positions"] == "BTC/USD 0.5 (worth 21,000.00 USD)\nETH/USD -0.4065 (worth -1,234.56 USD)"
    assert said["Open orders"] == "3"
    # The deadline (the rule's approval_timeout, 10 min) as an absolute time and "in N min" beside it.
    deadline = re.fullmatch(r"(.+ UTC) \(in (\d+) min\), then escalate", said["Deadline"])
    assert deadline is not None, said["Deadline"]
    assert TIME_RE.match(deadline[1]) and int(deadline[2]) in (9, 10)
    page.context.close()


def test_outcomes_are_said_in_words_with_the_promql_behind_a_details(browser: Any, stack: Stack) -> None:
    """A verification's detail, as the reconciler writes it (verify's own formatters), on an ended episode."""
    query = f'tradingbot_flatten_requested{{instance="{stack.instance}"}} == 1'
    detail = with_source(deadline_detail(60, "1 series of this alert still match", query), "prometheus_rules")
    episodes = stack.reconciler.api("/api/v1/episodes")["episodes"]
    episode_id = next(e["id"] for e in episodes if e["state"] == "escalated")  # the rejected one
    with stack.reconciler.app[keys.LEDGER].db.tx() as conn:
        conn.execute(update(Episode).where(Episode.id == episode_id).values(detail=detail))
    page = login(browser, stack, READ_TOKEN)
    for path in ("/ui/episodes", f"/ui/episodes/{episode_id}"):
        page.goto(f"{stack.reconciler.url}{path}")
        where = page.locator(f"li:has(a[href='/ui/episodes/{episode_id}'])") if path.endswith("episodes") else page
        words = where.locator(".outcome, dd").filter(has_text="Not recovered").first
        assert "Not recovered: the alert's condition still held 1 min after the action" in words.inner_text()
        query_shown = where.locator("details.query pre").first
        assert not query_shown.is_visible()  # the PromQL is behind the details, not in the words
        where.locator("details.query summary").first.click()
        assert query_shown.is_visible() and query_shown.inner_text() == query
    page.context.close()


def test_one_time_format_on_every_page(browser: Any, stack: Stack) -> None:
    page = login(browser, stack, ONCALL_TOKEN)
    episode_id = stack.reconciler.api("/api/v1/episodes")["episodes"][0]["id"]  # the newest: still waiting
    for path in ("/ui/", "/ui/episodes", f"/ui/episodes/{episode_id}", "/ui/approvals", "/ui/maintenance"):
        page.goto(f"{stack.reconciler.url}{path}")
        times = page.locator("main time")
        assert times.count() > 0, path
        for i in range(times.count()):
            assert TIME_RE.match(times.nth(i).inner_text()), (path, times.nth(i).inner_text())
            assert RELATIVE_RE.match(times.nth(i).locator("xpath=following-sibling::span[1]").inner_text()), path
        text = page.locator("main").inner_text()
        assert not re.search(r"\d\dT\d\d:\d\d|\d\d:\d\d:\d\d(\.\d+)?Z|\+00:00", text), (path, text)
    page.context.close()


TOKENS = (ONCALL_TOKEN, DESK_TOKEN)


@pytest.mark.parametrize("width", ["desktop", "phone"])
def test_the_layout_at_a_desktop_and_a_phone_width(browser: Any, stack: Stack, width: str) -> None:
    """Measured in Chromium: the navigation is one line, every link in view, apart from who is logged in and Log out;
    no title breaks inside a word; nothing scrolls sideways. The screenshots the documentation shows."""
    # The desk answers the older requests (the same flatten, asked again): the newest one waits, as on a real night.
    for older in stack.reconciler.api("/api/v1/approvals?status=pending")["approvals"][1:]:
        decision = {"decision": "reject", "reason": "asked again since: deciding the newest", "by": "dana"}
        stack.reconciler.api(f"/api/v1/approvals/{older['id']}", decision, token=DESK_TOKEN)
    # The on-call engineer (destructive: the emergency halt) and the desk (approve: the decision forms).
    oncall, desk = (login(browser, stack, t, viewport=WIDTHS[width], is_mobile=width == "phone") for t in TOKENS)
    episodes = stack.reconciler.api("/api/v1/episodes")["episodes"]
    recovered = next(e["id"] for e in episodes if e["state"] == "recovered")
    shots = {"fleet": "/ui/", "approvals": "/ui/approvals", "episode": f"/ui/episodes/{recovered}"}
    for name, path in {**shots, "episodes": "/ui/episodes", "maintenance": "/ui/maintenance"}.items():
        page = desk if name == "approvals" else oncall
        page.goto(f"{stack.reconciler.url}{path}")
        box = page.evaluate(LAYOUT_JS)
        tops, bottoms = zip(*box["links"], strict=True)
        assert max(tops) < min(bottoms), f"{path}: the navigation wraps onto several lines ({box['links']})"
        assert box["navScroll"][0] <= box["navScroll"][1], f"{path}: links out of view {box['navScroll']}"
        assert not box["overlap"], f"{path}: who is logged in overlaps the navigation"
        assert box["page"][0] <= box["page"][1], f"{path}: {box['page'][0]} px wide in a {box['page'][1]} px viewport"
        assert box["broken"] == [], f"{path}: a title broken inside a word: {box['broken']}"
        if name in shots:
            screenshot(page, stack, name if width == "desktop" else f"{name}-phone")
    oncall.context.close()
    desk.context.close()


def test_a_halted_bot_holding_a_position_nothing_handles_asks_for_a_person(browser: Any, stack: Stack) -> None:
    stack.bot.state, stack.bot.position = "halted", "0.5"
    page = login(browser, stack, ONCALL_TOKEN)
    assert "1 waiting" in card(page, stack).inner_text()
    assert card(page, stack).locator(".problem").count() == 0  # an approval about it waits: it is being handled
    for asked in stack.reconciler.api("/api/v1/approvals?status=pending")["approvals"]:
        decision = {"decision": "reject", "reason": "not this way", "by": "dana"}
        stack.reconciler.api(f"/api/v1/approvals/{asked['id']}", decision, token=DESK_TOKEN)

    def looked() -> str:
        page.reload()
        return str(card(page, stack).inner_text())

    seen = poll(looked, lambda text: "0 open" in text and "none waiting" in text, "nothing handling the bot")
    assert "Kept from trading with a position open, and no episode or approval is handling it" in seen
    stack.bot.position = "0"  # flat: nothing at stake, nothing to ask
    page.reload()
    assert card(page, stack).locator(".problem").count() == 0
    page.context.close()


def test_a_bots_ramp_its_history_and_a_request_for_the_next_stage(browser: Any, stack: Stack) -> None:
    """The bot's page under Readiness: its stage and history as the bot tells them, its verdicts recorded in the
    ledger, and the form that asks for the next stage, which Alertmanager then holds for another person's approval."""
    from trading_ops.db import readiness_records as records

    engine = stack.reconciler.app[keys.LEDGER].engine
    records.write(
        engine,
        bot=BOT_NAME,
        instance=stack.instance,
        verdict="not ready",
        window="5d",
        failing=["api_error_ratio"],
        missing=[],
        recorded_by="alice",
        approved_by="carol",
        reason="the venue's outage",
        request_id=7,
    )
    page = login(browser, stack, ONCALL_TOKEN, viewport=WIDTHS["desktop"])
    page.goto(f"{stack.reconciler.url}/ui/readiness/{BOT_NAME}")
    assert page.locator("#ramp .stage").inner_text().startswith("Stage 1 of 2: small since 20")
    rows = page.locator("#ramp table.ramp-history tbody tr")
    assert rows.count() == 2
    newest = rows.nth(0).inner_text()
    assert "bigger → small" in newest and "stream_down" in newest and "down 601 s" in newest, newest
    assert "small → bigger" in rows.nth(1).inner_text() and "bob" in rows.nth(1).inner_text()
    recorded = page.locator("#records").inner_text()
    assert "not ready over 5d, live start asked by alice; approved by carol: the venue's outage" in recorded
    # The ramp's section: the criteria above it (a PromQL source each) make the whole page several screens long.
    screenshot(page, stack, "readiness-ramp", "#ramp")
    # On a phone too: the ramp's table and the form fit, the documentation's other screenshot.
    phone = login(browser, stack, ONCALL_TOKEN, viewport=WIDTHS["phone"], is_mobile=True)
    phone.goto(f"{stack.reconciler.url}/ui/readiness/{BOT_NAME}")
    box = phone.evaluate(LAYOUT_JS)
    assert box["page"][0] <= box["page"][1], f"{box['page'][0]} px wide in a {box['page'][1]} px viewport"
    assert box["broken"] == [], f"a title broken inside a word: {box['broken']}"
    screenshot(phone, stack, "readiness-ramp-phone", "#ramp")
    phone.context.close()
    page.locator("form.promote input[name=by]").fill("dave")
    page.locator("form.promote button[type=submit]").click()
    page.wait_for_load_state()
    done = page.locator("p.done").inner_text()
    assert done.startswith(f"stage bigger of {BOT_NAME} asked by") and "dave" in done, done
    held = held_page(stack, "TradingBotRampPromotionRequested", bot=BOT_NAME, stage="bigger")
    # The requester is the session's token (its principal), never the name typed beside it.
    assert held["labels"]["stage_number"] == "2" and held["labels"]["requested_by"] == "oncall", held["labels"]
    assert held["labels"]["request"].isdigit()
    # A read token sees the ramp, and no form to ask with.
    reader = login(browser, stack, READ_TOKEN)
    reader.goto(f"{stack.reconciler.url}/ui/readiness/{BOT_NAME}")
    assert reader.locator("form.promote").count() == 0
    assert "needs a token of the operate or approve scope" in reader.locator("#ramp").inner_text()
