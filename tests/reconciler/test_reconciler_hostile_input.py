"""The reconciler and its console under a hostile client with a token (issue 37): bodies over their limit whatever
their framing, JSON nested too deep, numbers no field can hold, console sessions and logins, an attribution a typed
name cannot forge, maintenance windows over the pipeline's own pages, a bot answering nonsense to `status`. Every
answer a 4xx or what a person expects, never a 5xx, and every answer with the security headers. Each test starts the
real reconciler on a real port (aiohttp's test server) on SQLite; raw sockets for what no HTTP client sends. No other
server is needed."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient
from console_client import CSRF, log_in, page
from fake_bot import FakeBot
from polling import until_async
from raw_http import chunked_request
from reconciler_server import AUTH, BOT_TOKEN, READ_AUTH, READ_TOKEN, make_config
from secret_file import write_secret
from sqlalchemy import func, select
from webhook_payloads import alert, payload

from trading_ops.cli import main
from trading_ops.config import Config
from trading_ops.db.models import ConsoleSession, MaintenanceWindow, Notification
from trading_ops.reconciler import keys
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.console import COOKIE, LOGIN_COOKIE, MAX_FORM_BYTES, MAX_SESSIONS_PER_TOKEN
from trading_ops.reconciler.login_throttle import ALL_BURST, CLIENT_BURST, FLOOD_CLIENT_BURST

OPERATE_TOKEN = "console-operate-token-0123456789"
DESK_TOKEN = "console-desk-approve-token-0123456789"
ONCALL_TOKEN = "console-oncall-destructive-token-0123456789"
# What every answer of the console carries (trading_ops.reconciler.console.SECURITY_HEADERS), and every API answer.
CONSOLE_HEADERS = ("Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy")
API_HEADERS = ("X-Content-Type-Options", "X-Frame-Options", "Content-Security-Policy")
THOUSANDS_OF_DIGITS = "9" * 5000
FLATTEN = {
    "name": "flatten-on-request",
    "match": ['alertname="TradingBotFlattenRequested"'],
    "allow_destructive": True,
    "approval": "required",
    "approval_timeout": "10m",
    "max_attempts": 1,
    "cooldown": 0,
    "verify": False,
    "steps": [{"action": "bot", "command": "flatten"}],
}


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """main() points logging at this test's captured stderr; later tests must not write to it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def config_of(tmp_path: Path, db_url: str, **reconciler: Any) -> Config:
    tokens = []
    for name, scope, value in (
        ("operator", "operate", OPERATE_TOKEN),
        ("desk", "approve", DESK_TOKEN),
        ("oncall", "destructive", ONCALL_TOKEN),
    ):
        write_secret(tmp_path / f"{name}-token", value)
        tokens.append({"name": name, "scope": scope, "token_file": str(tmp_path / f"{name}-token")})
    return make_config(tmp_path, db_url, api_tokens=tokens, **reconciler)


async def started(aiohttp_client: Any, config: Config, app: web.Application | None = None) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await aiohttp_client(app or create_app(config))
    return client


async def post(client: TestClient[Any, Any], path: str, sid: str, **form: str) -> aiohttp.ClientResponse:
    return await client.post(path, data=form, headers={"Cookie": f"{COOKIE}={sid}"}, allow_redirects=False)


async def csrf_of(client: TestClient[Any, Any], sid: str) -> str:
    status, text = await page(client, "/ui/maintenance", sid)
    assert status == 200, text
    found = CSRF.search(text)
    assert found is not None
    return found.group(1)


def count(client: TestClient[Any, Any], model: Any) -> int:
    with client.app[keys.LEDGER].engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


# ---- 1. one way to read a body ----------------------------------------------------------------------------------


async def test_a_chunked_form_is_refused_at_the_forms_limit_not_the_apis(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str
) -> None:
    client = await started(aiohttp_client, config_of(tmp_path, migrated_sqlite))
    port = client.server.port
    assert port is not None
    # A form of 40 KiB, chunked (no Content-Length to refuse it by): the console reads 16 KiB of it, then answers.
    chunk = b"csrf=x&token=" + b"a" * 4096
    status, headers, body = await chunked_request(
        port, "POST", "/ui/login", [b"Content-Type: application/x-www-form-urlencoded"], [chunk] * 10
    )
    assert status == 413, body
    assert f"{MAX_FORM_BYTES}-byte limit".encode() in body
    assert all(name.lower() in headers for name in CONSOLE_HEADERS), headers
    # A form under the limit, chunked too, is read as a form (here: a login without its form's token).
    status, _headers, body = await chunked_request(
        port, "POST", "/ui/login", [b"Content-Type: application/x-www-form-urlencoded"], [b"csrf=x&", b"token=y"]
    )
    assert status == 403 and b"CSRF" in body


async def test_deeply_nested_json_is_a_400_in_the_approvals_api(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str
) -> None:
    client = await started(aiohttp_client, config_of(tmp_path, migrated_sqlite))
    desk = {"Authorization": f"Bearer {DESK_TOKEN}", "Content-Type": "application/json"}
    for body in ("[" * 100_000 + "]" * 100_000, '{"a":' * 50 + "1" + "}" * 50, '{"decision": 1e999}', "NaN"):
        resp = await client.post("/api/v1/approvals/1", data=body, headers=desk)
        assert resp.status == 400, (body[:20], await resp.text())
        assert "JSON" in (await resp.json())["error"]
        assert all(name in resp.headers for name in API_HEADERS)
    # The webhook too (it already answered 400 for the deepest; numbers now have their bound as well).
    resp = await client.post("/api/v1/alertmanager", data="[" * 100_000 + "]" * 100_000, headers=AUTH)
    assert resp.status == 400


# ---- 2. ids, limits and durations -------------------------------------------------------------------------------


async def test_thousands_of_digits_are_a_4xx_everywhere(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str
) -> None:
    client = await started(aiohttp_client, config_of(tmp_path, migrated_sqlite))
    desk = {"Authorization": f"Bearer {DESK_TOKEN}"}
    for path in (
        f"/api/v1/episodes?limit={THOUSANDS_OF_DIGITS}",
        f"/api/v1/approvals?limit={THOUSANDS_OF_DIGITS}",
        f"/api/v1/episodes/{THOUSANDS_OF_DIGITS}",
        f"/api/v1/approvals/{THOUSANDS_OF_DIGITS}",
        "/api/v1/episodes?limit=%D9%A3",
    ):
        resp = await client.get(path, headers=desk)
        assert resp.status in (400, 404), (path[:40], resp.status)
    resp = await client.post(f"/api/v1/approvals/{THOUSANDS_OF_DIGITS}", json={"decision": "approve"}, headers=desk)
    assert resp.status == 404
    oncall, approver = await log_in(client, ONCALL_TOKEN), await log_in(client, DESK_TOKEN)
    status, text = await page(client, f"/ui/episodes/{THOUSANDS_OF_DIGITS}", oncall)
    assert status == 404 and "No such episode" in text
    for sid, path in (
        (approver, f"/ui/approvals/{THOUSANDS_OF_DIGITS}"),
        (oncall, f"/ui/maintenance/9{THOUSANDS_OF_DIGITS}/end"),
    ):
        resp = await post(client, path, sid, csrf=await csrf_of(client, sid), decision="approve", reason="r")
        assert resp.status == 404, (path[:30], await resp.text())
        assert all(name in resp.headers for name in CONSOLE_HEADERS)


async def test_a_maintenance_duration_of_hundreds_of_nines_is_refused_on_the_form(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str
) -> None:
    client = await started(aiohttp_client, config_of(tmp_path, migrated_sqlite))
    sid = await log_in(client, ONCALL_TOKEN)
    for duration in ("1h" + "9" * 300 + "s", "9" * 400, "1h" + "9" * 300):
        resp = await post(
            client, "/ui/maintenance", sid, csrf=await csrf_of(client, sid), duration=duration, reason="r"
        )
        assert resp.status == 303, await resp.text()
        status, text = await page(client, "/ui/maintenance", sid)
        assert status == 200 and 'class="problem"' in text and "expected a duration" in text
    assert count(client, MaintenanceWindow) == 0


async def test_a_truncated_alerts_count_too_big_for_a_float_is_answered_before_anything_is_stored(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str
) -> None:
    client = await started(aiohttp_client, config_of(tmp_path, migrated_sqlite))
    # Alertmanager resends what got a 5xx: a notification stored and then answered 500 multiplied its rows.
    body = json.dumps(payload(alert())).replace('"truncatedAlerts": 0', f'"truncatedAlerts": {10**400}')
    assert str(10**400) in body
    for _resend in range(3):
        resp = await client.post("/api/v1/alertmanager", data=body, headers=AUTH)
        assert resp.status == 400, await resp.text()
    assert count(client, Notification) == 0
    # A count no Alertmanager sends but a float holds: stored, acknowledged, not counted as truncated alerts.
    body = json.dumps({**payload(alert()), "truncatedAlerts": 2**70})
    resp = await client.post("/api/v1/alertmanager", data=body, headers=AUTH)
    assert resp.status == 200 and count(client, Notification) == 1
    assert client.app[keys.REGISTRY].get_sample_value("tradingops_alerts_truncated_total") == 0


# ---- 3. security headers on every answer ------------------------------------------------------------------------


async def test_every_answer_carries_the_security_headers_500s_included(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str
) -> None:
    app = create_app(config_of(tmp_path, migrated_sqlite))

    async def broken(_request: web.Request) -> web.Response:
        raise RuntimeError("a defect of a handler")

    # A handler that raises stands for any defect left: its 500 is the guard's, with the headers.
    app.router.add_get("/ui/broken", broken)
    app.router.add_get("/api/v1/broken", broken)
    client = await started(aiohttp_client, config_of(tmp_path, migrated_sqlite), app)
    resp = await client.get("/ui/broken")
    assert resp.status == 500 and "a defect" not in await resp.text()
    assert all(name in resp.headers for name in CONSOLE_HEADERS), resp.headers
    resp = await client.get("/api/v1/broken")
    assert resp.status == 500 and (await resp.json())["error"] == "internal error (logged)"
    assert all(name in resp.headers for name in API_HEADERS), resp.headers
    for path in ("/api/v1/nothing-here", "/healthz", "/metrics", "/ui/login", "/ui/nothing-here"):
        resp = await client.get(path)
        assert all(name in resp.headers for name in API_HEADERS), (path, resp.headers)


# ---- 4. sessions, logins, tokens, https -----------------------------------------------------------------------


async def test_a_tokens_logins_end_its_own_oldest_session_never_another_tokens(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str
) -> None:
    client = await started(aiohttp_client, config_of(tmp_path, migrated_sqlite))
    approver = await log_in(client, DESK_TOKEN)
    # Any token (read's included) logging in over and over: its own sessions go, the desk's stays.
    read = [await log_in(client, READ_TOKEN) for _ in range(MAX_SESSIONS_PER_TOKEN + 2)]
    assert (await page(client, "/ui/approvals", approver))[0] == 200
    assert [(await page(client, "/ui/", sid))[0] for sid in read] == [303, 303] + [200] * MAX_SESSIONS_PER_TOKEN
    assert count(client, ConsoleSession) == MAX_SESSIONS_PER_TOKEN + 1


async def test_logins_are_throttled_per_client_and_in_all_with_retry_after(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str
) -> None:
    client = await started(aiohttp_client, config_of(tmp_path, migrated_sqlite))
    # A clock that stands still: no attempt comes back while the test runs, however slow the machine.
    throttle = client.app[keys.LOGIN_THROTTLE]
    stopped = time.monotonic()
    throttle.clock = lambda: stopped
    url = str(client.make_url("/ui/login"))

    async def attempt(source: str) -> aiohttp.ClientResponse:
        connector = aiohttp.TCPConnector(local_addr=(source, 0))
        # unsafe: the jar keeps cookies of an address (127.0.0.1) as a browser does.
        async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            form = await session.get(url)
            nonce = CSRF.search(await form.text())
            assert nonce is not None
            resp = await session.post(url, data={"csrf": nonce.group(1), "token": "a guess"}, allow_redirects=False)
            await resp.read()
            return resp

    guesses = [(await attempt("127.0.0.1")).status for _ in range(CLIENT_BURST + 1)]
    assert guesses == [401] * CLIENT_BURST + [429]
    refused = await attempt("127.0.0.1")
    assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
    assert all(name in refused.headers for name in CONSOLE_HEADERS)
    # Another address is not this one's limit...
    assert (await attempt("127.0.0.2")).status == 401
    # ... but everyone's together is: past the bound for all (a flood) every address has a few failed tries left
    # (tests/reconciler/test_reconciler_login_flood.py floods it while a valid token gets in).
    spread = [(await attempt(f"127.0.0.{3 + i // CLIENT_BURST}")).status for i in range(ALL_BURST)]
    # 39 left of everyone's 60, the failure that starts the flood, then the last address's few tries.
    assert spread.count(401) == ALL_BURST - CLIENT_BURST + FLOOD_CLIENT_BURST and spread[-1] == 429
    tries = [(await attempt("127.0.0.99")).status for _ in range(FLOOD_CLIENT_BURST + 1)]
    assert tries == [401] * FLOOD_CLIENT_BURST + [429]


async def test_behind_a_tls_proxy_the_cookie_is_secure_and_hsts_is_sent(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str
) -> None:
    config = config_of(tmp_path, migrated_sqlite, external_url="https://reconciler.example.org")
    client = await started(aiohttp_client, config)
    form = await client.get("/ui/login")
    assert "Secure" in form.headers["Set-Cookie"]
    assert form.headers["Strict-Transport-Security"].startswith("max-age=")
    nonce = CSRF.search(await form.text())
    assert nonce is not None
    # The client's jar keeps a Secure cookie for https only, as a browser would: this test is the browser on https.
    done = await client.post(
        "/ui/login",
        data={"csrf": nonce.group(1), "token": ONCALL_TOKEN},
        headers={"Cookie": f"{LOGIN_COOKIE}={form.cookies[LOGIN_COOKIE].value}"},
        allow_redirects=False,
    )
    assert done.status == 303
    cookie = next(v for v in done.headers.getall("Set-Cookie") if v.startswith(f"{COOKIE}="))
    assert "Secure" in cookie and "HttpOnly" in cookie


def test_config_check_refuses_a_short_console_token_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRADING_OPS_CONTROL_TOKEN", "a-control-token-long-enough")
    monkeypatch.setenv("TRADING_OPS_RECONCILER_TOKEN", "a-webhook-token-long-enough")
    write_secret(tmp_path / "short", "letmein")
    write_secret(tmp_path / "long", DESK_TOKEN)
    path = tmp_path / "c.yaml"
    for token_file, expected in (("short", 2), ("long", 0)):
        tokens = [{"name": "desk", "scope": "approve", "token_file": str(tmp_path / token_file)}]
        path.write_text(yaml.safe_dump({"reconciler": {"api_tokens": tokens}}))
        assert main(["--config", str(path), "config", "check"]) == expected
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reconciler.api_tokens[0].token: 7 characters: a token has at least 16" in err[0], err
    assert "letmein" not in err[0]
    # The bots' tokens as well (the control API's, here from its environment variable).
    monkeypatch.setenv("TRADING_OPS_CONTROL_TOKEN", "hunter2")
    assert main(["--config", str(path), "config", "check", "--service", "bot"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bot.control_token: 7 characters" in err[0] and "hunter2" not in err[0], err


# ---- 5. attribution -------------------------------------------------------------------------------------------


async def test_a_typed_name_cannot_read_like_another_tokens_attribution(
    aiohttp_client: Any,
    tmp_path: Path,
    migrated_sqlite: str,
    fake_bot: FakeBot,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_secret(tmp_path / "bot-token", BOT_TOKEN)
    (tmp_path / "playbook.yml").write_text(yaml.safe_dump({"version": 1, "rules": [FLATTEN]}))
    config = config_of(
        tmp_path,
        migrated_sqlite,
        playbook=str(tmp_path / "playbook.yml"),
        targets={"bot-1": {"url": fake_bot.url, "token_file": str(tmp_path / "bot-token")}},
    )
    client = await started(aiohttp_client, config)
    resp = await client.post("/api/v1/alertmanager", json=payload(alert("TradingBotFlattenRequested")), headers=AUTH)
    assert resp.status == 200

    async def pending() -> list[dict[str, Any]]:
        resp = await client.get("/api/v1/approvals?status=pending", headers=READ_AUTH)
        return list((await resp.json())["approvals"])

    asked = await until_async("an approval pending", pending)
    forged = "bob (token oncall)"
    resp = await client.post(
        f"/api/v1/approvals/{asked[0]['id']}",
        json={"decision": "reject", "reason": "not now", "by": forged},
        headers={"Authorization": f"Bearer {DESK_TOKEN}"},
    )
    assert resp.status == 200, await resp.text()
    decided = await resp.json()
    assert (decided["decided_by"], decided["decided_token"]) == (forged, "desk")
    # The console: the token (the principal) in an element of its own first, the typed name after it as quoted text.
    sid = await log_in(client, READ_TOKEN)
    status, text = await page(client, "/ui/approvals", sid)
    assert status == 200
    assert '<span class="token">desk</span> (as <q class="decider">bob (token oncall)</q>)' in text
    # The CLI: the token first, the name quoted after it as a comment.
    path = tmp_path / "trading-ops.yaml"
    path.write_text(yaml.safe_dump({"database": {"url": migrated_sqlite}}))
    assert main(["--config", str(path), "reconciler", "approvals"]) == 0
    assert 'by desk (as "bob (token oncall)"): not now' in capsys.readouterr().out

    def history() -> str:
        assert main(["--config", str(path), "reconciler", "history", str(asked[0]["episode_id"])]) == 0
        out = capsys.readouterr().out
        return out if "rejected by" in out else ""

    shown = await until_async("the decision in the episode's history", history, in_thread=True)
    assert 'rejected by desk (as "bob (token oncall)")' in shown


# ---- 6. maintenance windows over the pipeline's own pages --------------------------------------------------------


async def test_a_window_over_the_reconcilers_own_pages_needs_the_destructive_scope(
    aiohttp_client: Any, tmp_path: Path, migrated_sqlite: str
) -> None:
    client = await started(aiohttp_client, config_of(tmp_path, migrated_sqlite))
    operator = await log_in(client, OPERATE_TOKEN)
    status, text = await page(client, "/ui/maintenance", operator)
    assert "needs the destructive scope" in text and "service=trading-ops" in text
    for matchers in ("service=trading-ops", "alertname=TradingOpsRemediationFailed", "alertname=Watchdog"):
        csrf = await csrf_of(client, operator)
        resp = await post(client, "/ui/maintenance", operator, csrf=csrf, duration="7d", reason="r", matchers=matchers)
        assert resp.status == 303
        status, text = await page(client, "/ui/maintenance", operator)
        assert "would silence" in text and "needs the &#x27;destructive&#x27; scope" in text, matchers
    assert count(client, MaintenanceWindow) == 0
    # The bots' own alerts are the operate scope's to silence; the pipeline's, a destructive token's.
    csrf = await csrf_of(client, operator)
    resp = await post(client, "/ui/maintenance", operator, csrf=csrf, duration="10m", reason="r", matchers="")
    assert resp.status == 303 and count(client, MaintenanceWindow) == 1
    oncall = await log_in(client, ONCALL_TOKEN)
    csrf = await csrf_of(client, oncall)
    matchers = "service=trading-ops"
    resp = await post(client, "/ui/maintenance", oncall, csrf=csrf, duration="10m", reason="r", matchers=matchers)
    assert resp.status == 303 and count(client, MaintenanceWindow) == 2


# ---- 7. the fleet, whatever a bot answers -----------------------------------------------------------------------


async def test_the_fleet_draws_every_bot_and_marks_one_answering_nonsense_unknown(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, migrated_sqlite: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the bots answer is the test, not how fast: the console's 3 s for a status, in one event loop with the
    # bots' server on a loaded machine, ran out once (a `no answer` card).
    from trading_ops.reconciler import console

    monkeypatch.setattr(console, "STATUS_TIMEOUT", aiohttp.ClientTimeout(total=30))
    answers: dict[str, Any] = {
        "sane": {"state": "running", "heartbeat_age_seconds": 0.5, "positions": {"BTC/USD": "0.1"}},
        "ancient": {"state": "running", "heartbeat_age_seconds": 10**400},
        "garbage": {"state": ["halted"], "heartbeat_age_seconds": "soon", "positions": [1, 2]},
        "negative": {"state": "running", "heartbeat_age_seconds": -1e308},
        # Sizes, values and P&L that are not numbers: shown as the bot gave them (escaped), or left out.
        "wordy": {
            "state": "halted",
            "positions": {"BTC/USD": "<b>a lot</b>", "ETH/USD": 1e400},
            "position_values": {"BTC/USD": "NaN"},
            "realized_pnl_today": "Infinity",
            "unrealized_pnl": [],
            "risk_limits": "none",
            "open_orders": True,
        },
    }

    async def status(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(answers[request.match_info["bot"]]), content_type="application/json")

    bots = web.Application()
    bots.router.add_post("/{bot}/control/status", status)
    server = await aiohttp_server(bots)
    write_secret(tmp_path / "bot-token", BOT_TOKEN)
    targets = {b: {"url": str(server.make_url(f"/{b}")), "token_file": str(tmp_path / "bot-token")} for b in answers}
    client = await started(aiohttp_client, config_of(tmp_path, migrated_sqlite, targets=targets))
    sid = await log_in(client, ONCALL_TOKEN)
    status_code, text = await page(client, "/ui/", sid)
    assert status_code == 200, text
    cards = dict(re.findall(r'<section class="card bot" id="bot-([^"]+)">(.*?)</section>', text))
    assert set(cards) == set(answers)
    assert "s-running" in cards["sane"] and "0.5 s ago" in cards["sane"]
    assert "s-halted" in cards["wordy"] and "BTC/USD &lt;b&gt;a lot&lt;/b&gt;<br>ETH/USD inf" in cards["wordy"]
    assert "worth" not in cards["wordy"] and "Loss today" not in cards["wordy"] and "Open orders" not in cards["wordy"]
    for bot in ("ancient", "garbage", "negative"):
        assert "s-unknown" in cards[bot] and "not a status" in cards[bot], bot
    assert all("Emergency halt" in card for card in cards.values())
