"""The operator console (/ui/) driven in a real headless Chromium (Debian's, through Playwright; no browser is ever
downloaded): login, the fleet, an episode opened by a real alert, approving a flatten until the bot is flat, rejecting
one until the page is in Alertmanager, what a `read` token may not do, CSRF, maintenance windows, the emergency halt
and the phone-width layout. One reconciler, one Alertmanager, one bot and one browser for the module.

Screenshots of each main view go to the test's tmp dir; with UPDATE_SCREENSHOTS=1 they are also copied to
docs/img/console-*.png (the documentation's)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
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
from trading_ops.db.models import ConsoleSession
from trading_ops.reconciler import keys
from trading_ops.reconciler.actions.escalate import APPROVAL_REQUESTED, FAILED
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.console import CSRF_REFUSED
from trading_ops.webconfig import app_ssl_context

pytestmark = [pytest.mark.alertmanager]

REPO = Path(__file__).resolve().parent.parent
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
BOT = "bot-1"
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
                return 200, {
                    "state": self.state,
                    "state_reason": "",
                    "heartbeat_age_seconds": 0.4,
                    "positions": {"BTC/USD": self.position},
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


def poll(fetch: Callable[[], Any], check: Callable[[Any], bool], what: str, deadline: float = 20.0) -> Any:
    end = time.monotonic() + deadline
    while True:
        value = fetch()
        if check(value):
            return value
        assert time.monotonic() < end, f"{what} not reached within {deadline}s: {value}"
        time.sleep(0.05)


def write_config(tmp: Path, port: int, am_url: str, bot_url: str, **listen: str) -> None:
    """The reconciler's configuration (and its files) in `tmp`: tokens of each scope, the bot as its one target."""
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
            "lease_seconds": 3,
            "check_silences": False,
            "prometheus_url": "http://127.0.0.1:9",
            "alertmanager_url": am_url,
            "watchdog": {"window_seconds": 0},
            "targets": {
                BOT: {
                    "url": bot_url,
                    "token_file": str(tmp / "bot-operate"),
                    "destructive_token_file": str(tmp / "bot-destructive"),
                }
            },
        },
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


def screenshot(page: Any, stack: Stack, name: str) -> None:
    path = stack.shots / f"console-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("UPDATE_SCREENSHOTS"):
        shutil.copy(path, REPO / "docs" / "img" / path.name)


def fire(stack: Stack, **annotations: str) -> dict[str, Any]:
    """A firing TradingBotFlattenRequested held by Alertmanager, sent to the webhook as Alertmanager would."""
    labels = {"alertname": "TradingBotFlattenRequested", "instance": BOT, "run": uuid.uuid4().hex[:8]}
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
    card = page.locator(f"#bot-{BOT}")
    assert "running" in card.locator(".badge").inner_text()
    assert "0.4 s ago" in card.inner_text() and "BTC/USD 0.5" in card.inner_text()
    assert "Circuit" in card.inner_text() and "closed" in card.inner_text()
    cookie = next(c for c in page.context.cookies() if c["name"] == "tradingops_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    response = page.request.get(f"{stack.reconciler.url}/ui/")
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "frame-ancestors 'none'" in csp
    screenshot(page, stack, "fleet")
    page.context.close()


def test_an_alert_opens_an_episode_and_approving_it_flattens_the_bot(browser: Any, stack: Stack) -> None:
    fire(stack)
    first = pending(stack)[0]
    page = login(browser, stack, DESK_TOKEN)
    page.click(f"#bot-{BOT} >> text=1 open")  # the fleet counts the bot's open episode, and lists it
    assert page.locator("h1").inner_text() == f"Episodes of {BOT}"
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
    screenshot(page, stack, "approvals")
    assert stack.bot.commands() == []
    decide_in_page(page, first["id"], "approve", "desk agrees", "alice")
    assert f'approval {first["id"]} approved by "alice" with token desk' in page.locator(".done").inner_text()
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
    screenshot(page, stack, "episode")
    page.goto(f"{stack.reconciler.url}/ui/")
    assert "flat" in page.locator(f"#bot-{BOT} .positions").inner_text()
    decided = stack.reconciler.api(f"/api/v1/approvals/{first['id']}")
    assert (decided["decided_by"], decided["decided_token"], decided["reason"]) == ("alice", "desk", "desk agrees")
    page.context.close()


def test_rejecting_pages_a_human_with_a_link_to_the_episode(browser: Any, stack: Stack) -> None:
    fire(stack)
    asked = pending(stack)[0]
    page = login(browser, stack, DESK_TOKEN)
    page.goto(f"{stack.reconciler.url}/ui/episodes/{asked['episode_id']}")
    decide_in_page(page, asked["id"], "reject", "the position is hedged", "dana")
    assert 'rejected by "dana" with token desk' in page.locator(".done").inner_text()
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
    assert page.locator("a.button.danger").count() == 0  # no emergency halt
    page.goto(f"{stack.reconciler.url}/ui/approvals")
    card = page.locator(f"#approval-{asked['id']}")
    assert card.count() == 1 and card.locator("form").count() == 0
    assert "needs a token with the approve scope" in card.inner_text()
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
    halt = page.request.post(f"{stack.reconciler.url}/ui/bots/{BOT}/halt", form={"csrf": csrf, "reason": "x"})
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
    page.fill("textarea[name=matchers]", f"instance={BOT}")
    page.fill("input[name=by]", "erin")
    page.click("button:has-text('Start window')")
    assert f"paused {BOT}" in page.locator(".done").inner_text()
    assert stack.bot.state == "paused"
    item = page.locator(".list li").first
    assert "active" in item.inner_text() and "venue upgrade" in item.inner_text()
    assert 'console: "erin" with token oncall' in item.inner_text()
    silences = [s for s in stack.am.get("silences") if s["status"]["state"] == "active"]
    assert any({"name": "instance", "value": BOT}.items() <= m.items() for s in silences for m in s["matchers"])
    screenshot(page, stack, "maintenance")
    item.locator("button:has-text('End now')").click()
    page.wait_for_load_state()
    assert f"resumed {BOT}" in page.locator(".done").inner_text()
    assert stack.bot.state == "running" and "ended" in page.locator(".list li").first.inner_text()
    page.context.close()


def test_the_emergency_halt_asks_for_confirmation_first(browser: Any, stack: Stack) -> None:
    page = login(browser, stack, ONCALL_TOKEN)
    page.click(f"#bot-{BOT} a.button.danger")
    assert page.url.endswith(f"/ui/bots/{BOT}/halt") and "Halt" in page.locator("h1").inner_text()
    assert "halt" not in stack.bot.commands()  # asked, not done
    page.click("a.button:has-text('Cancel')")
    assert "halt" not in stack.bot.commands()
    page.click(f"#bot-{BOT} a.button.danger")
    page.fill("input[name=reason]", "runaway orders")
    page.click(f"button:has-text('Yes, halt {BOT}')")
    assert f'{BOT} halted by "console" with token oncall' in page.locator(".done").inner_text()
    assert stack.bot.state == "halted" and stack.bot.calls[-1] == ("halt", "destructive")
    assert "halted" in page.locator(f"#bot-{BOT} .badge").inner_text()
    page.context.close()


def test_the_phone_width_layout_has_no_horizontal_scroll(browser: Any, stack: Stack) -> None:
    page = login(browser, stack, DESK_TOKEN, viewport={"width": 375, "height": 740}, is_mobile=True)
    episode = stack.reconciler.api("/api/v1/episodes")["episodes"][-1]["id"]
    for path in ("/ui/", "/ui/episodes", f"/ui/episodes/{episode}", "/ui/approvals", "/ui/maintenance"):
        page.goto(f"{stack.reconciler.url}{path}")
        width = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert width[0] <= width[1], f"{path}: {width[0]} px wide in a {width[1]} px viewport"
    page.goto(f"{stack.reconciler.url}/ui/approvals")
    screenshot(page, stack, "phone")
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
