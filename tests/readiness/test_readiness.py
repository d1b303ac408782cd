"""`trading-ops readiness`: the verdict of bots whose days of history were backfilled into a real Prometheus
(`promtool tsdb create-blocks-from openmetrics`), with a real Alertmanager whose routing is judged. One history passes,
one per failing criterion fails naming exactly that criterion; missing data is `unknown`, never `ready`; bad input is
one line and exit 2. Needs Debian's `prometheus` (prometheus, promtool) and `prometheus-alertmanager`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from alertmanager_server import run_alertmanager
from ports import free_port
from readiness_history import DAY, History, backfill, openmetrics, started_prometheus
from reconciler_server import READ_AUTH, READ_TOKEN, make_config
from system_binaries import REPO_ROOT

from trading_ops.cli import main
from trading_ops.config import load_config, parse_config
from trading_ops.db import migrate
from trading_ops.durations import format_duration
from trading_ops.ops.backup import STATE_FILE
from trading_ops.ops.restore_drill import DRILL_STATE_FILE
from trading_ops.ops.state import OpsState
from trading_ops.readiness import routing
from trading_ops.readiness.criteria import CRITERIA, RULE_WINDOW
from trading_ops.reconciler.app import create_app

pytestmark = [pytest.mark.prometheus]

STEP = 300  # one sample every 5 minutes: days of history stay small
RULES = REPO_ROOT / "prometheus" / "rules"
READINESS_RULES = RULES / "tradingbot-readiness.yml"
BOT_JOBS = 'job=~"tradingbot|freqtrade"'
# One history per criterion the bot's own series decide, named after it; each fails that criterion alone (a crash is
# also a restart).
FAILING: dict[str, tuple[dict[str, Any], set[str]]] = {
    "uptime": ({"down": ((2 * DAY, 2 * DAY - 2 * 3600),)}, {"uptime"}),
    "restarts": ({"restarts_at": (2 * DAY,)}, {"restarts"}),
    "crashes": ({"crashes_at": (2 * DAY,)}, {"restarts", "crashes"}),
    "memory-peak": ({"memory_spike_mb": 450}, {"memory_peak"}),
    "memory-growth": ({"memory_growth_mb_per_day": 20}, {"memory_growth"}),
    "order-success": ({"acks_per_min": 9}, {"order_success"}),
    "order-rejection": ({"rejects_per_min": 1}, {"order_rejection"}),
    "api-errors": ({"errors_per_min": 1}, {"api_error_ratio"}),
    "api-latency": ({"request_seconds": "0.25"}, {"api_latency_p99"}),
    "stream-uptime": ({"connected_share": 0.95}, {"stream_uptime"}),
    "daily-loss": ({"daily_loss_breach_at": DAY}, {"daily_loss_breaches"}),
    "drawdown": ({"drawdown_breach_at": DAY}, {"drawdown_breaches"}),
    "critical-alert": ({"critical_alert": (2 * DAY, 2 * DAY - 600)}, {"critical_alerts"}),
    "switch-disarmed": ({"switch_armed": False}, {"dead_man_switch"}),
    "no-emergency-stop": ({"emergency_stop_at": None}, {"emergency_stop"}),
    "log-volume": ({"log_mb_per_day": 15}, {"log_size"}),
    "log-file": ({"log_file_mb": 12, "log_mb_per_day": 0.5}, {"log_size"}),
    "log-unrotated": ({"log_rotating": False}, {"log_rotation"}),
    # Not scraped at all for a day in the middle of the window: the gap counts as down, never as time up.
    "unscraped-day": ({"unscraped": ((3 * DAY, 2 * DAY),)}, {"uptime"}),
}
WINDOW_CRITERIA = {c.name for c in CRITERIA if c.window is None}
# Missing data: a bot two days old asked about five, a bot that exports no order series.
MISSING: dict[str, tuple[dict[str, Any], set[str]]] = {
    "young": ({"days": 2}, WINDOW_CRITERIA),
    "no-orders": ({"orders": False}, {"order_success", "order_rejection"}),
}
# Less history than the window asked about (`--window 61m`, a stage's window of 61m): about a quarter of an hour of a
# bot. The one-hour allowance there was (HISTORY_START_SLACK) passed such a bot: `PASS uptime 100% >= 99% over 1h1m`.
# Beside it, a bot with two hours of the same history: judged over 61 minutes. Both scraped every 15 s (a window of an
# hour counts a scrape for 36 s), backfilled apart from the 5-minute histories.
FINE_STEP = 15
# Each exercised its emergency stop 5 minutes ago (that criterion has its own window).
THIN = {"thin": {"days": 15 / 1440, "emergency_stop_at": 300}, "two-hours": {"days": 2 / 24, "emergency_stop_at": 300}}
# The local stack's standard profile (trading_ops.stack.app_config.ramp_window): its stages judged over 17 minutes,
# scraped every 5 s as that profile's Prometheus does. 20 minutes of history are judged; 15 are not enough.
STACK_STEP = 5
STANDARD_STACK = {
    "standard-20m": {"days": 20 / 1440, "emergency_stop_at": 300},
    "standard-15m": {"days": 15 / 1440, "emergency_stop_at": 300},
}
# No sample at all (`up` neither) for the last day of the window: scraped 4 of its 5 days. The share of the samples
# that exist said 100 %.
SILENT = {"silent-last-day": {"unscraped": ((DAY, 0),)}}
ALERTMANAGER = {
    "route": {"receiver": "team", "routes": [{"matchers": ['severity="info"'], "receiver": "null"}]},
    "receivers": [{"name": "team", "webhook_configs": [{"url": "http://127.0.0.1:9/"}]}, {"name": "null"}],
}


# Bots on Binance (`bots[].venue.exchange: binance`), which has no dead man's switch for spot orders: one exporting no
# switch series (as the runtime does there), one a disarmed switch's: `dead_man_switch` is n/a for both, never pass.
BINANCE = {"binance-no-switch": {"switch_armed": None}, "binance-disarmed": {"switch_armed": False}}
# A freqtrade on Kraken (`kind: freqtrade`): freqtrade arms no switch on any venue, its sidecar exports none.
FREQTRADE = {"freqtrade-kraken": {"switch_armed": None}}


# A healthy bot at an address with dots: in the selector of several bots (`instance=~"..."`) each is escaped twice,
# for the regular expression and for PromQL's string (a wrong escape is a query Prometheus refuses: `unknown`).
ADDRESSES = {"dotted": "10.0.0.7:9101"}


def instance(name: str) -> str:
    return ADDRESSES.get(name, f"{name}:9101")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A Prometheus holding 5.2 days of every history (the repository's rules loaded, evaluated hourly so that none
    fires during the test) and an Alertmanager routing every alert but `info` to a webhook."""
    tmp = tmp_path_factory.mktemp("readiness")
    histories = [History(instance("ready")), History(instance("dotted"))]
    histories += [History(instance(name), **knobs) for name, (knobs, _) in {**FAILING, **MISSING}.items()]
    histories += [History(instance(name), **knobs) for name, knobs in {**SILENT, **BINANCE, **FREQTRADE}.items()]
    now = time.time()
    backfill(openmetrics(histories, now, STEP), tmp / "data", tmp)
    fine = [History(instance(name), **knobs) for name, knobs in THIN.items()]
    backfill(openmetrics(fine, now, FINE_STEP), tmp / "data", tmp)
    scraped = [History(instance(name), **knobs) for name, knobs in STANDARD_STACK.items()]
    backfill(openmetrics(scraped, now, STACK_STEP), tmp / "data", tmp)
    (tmp / "am").mkdir()
    (tmp / "am" / "am.yml").write_text(yaml.safe_dump(ALERTMANAGER))
    am = run_alertmanager(tmp / "am" / "am.yml", tmp / "am" / "data", free_port(), tmp / "am" / "am.log")
    try:
        with started_prometheus(tmp, tmp / "data", free_port(), "30d", tuple(sorted(RULES.glob("*.yml")))) as url:
            # `backfilled_at`: the moment every history ends (a test may judge at it: the module's tests take minutes).
            yield {"prometheus": url, "alertmanager": am.url, "backfilled_at": repr(now)}
    finally:
        am.proc.terminate()
        am.proc.wait(timeout=30)


def write_config(tmp: Path, stack: dict[str, str], *, backup_age: float | None = DAY, **readiness: Any) -> Path:
    backups = tmp / "backups"
    if backup_age is not None:
        stamp = time.time() - backup_age
        OpsState(backups / STATE_FILE).update(lambda d: d.update(last_verify_success_timestamp_seconds=stamp))
        OpsState(backups / DRILL_STATE_FILE).update(lambda d: d.update(last_success_timestamp_seconds=stamp))
    names = ["ready", "dotted", *FAILING, *MISSING, *THIN, *STANDARD_STACK, *SILENT, *BINANCE, *FREQTRADE]
    bots: list[dict[str, Any]] = [{"name": n, "instance": instance(n), "url": f"http://{instance(n)}"} for n in names]
    for bot in bots:
        if bot["name"] in BINANCE:  # each on an account of its own: a key of its own
            bot["venue"] = {
                "exchange": "binance",
                "api_key_file": str(tmp / f"{bot['name']}-key"),
                "api_secret_file": str(tmp / f"{bot['name']}-secret"),
                "symbols": ["BTC-USD"],
            }
        if bot["name"] in FREQTRADE:  # freqtrade's orders carry no prefix: the venue step takes its account's
            bot["kind"] = "freqtrade"
            bot["venue"] = {
                "exchange": "kraken",
                "orders": "account",
                "api_key_file": str(tmp / f"{bot['name']}-key"),
                "api_secret_file": str(tmp / f"{bot['name']}-secret"),
                "symbols": ["BTC-USD"],
            }
    config = {
        "bots": bots,
        "reconciler": {"prometheus_url": stack["prometheus"], "alertmanager_url": stack["alertmanager"]},
        "backup": {"directory": str(backups)},
        "readiness": readiness,
    }
    path = tmp / "trading-ops.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def verdicts(config: Path, capsys: pytest.CaptureFixture[str], *bots: str, window: str = "5d") -> tuple[int, Any]:
    status = main(["--config", str(config), "readiness", *bots, "--window", window, "--json"])
    return status, {v["bot"]: v for v in json.loads(capsys.readouterr().out)}


def unsettled(verdict: dict[str, Any]) -> list[tuple[str, str, str]]:
    """A verdict's criteria that did not pass, with why: what a failed assertion shows (CI, stop 70: a failing
    history read `unknown`, nothing said which criterion, nor why)."""
    return [(r["name"], r["status"], r.get("detail", "")) for r in verdict["results"] if r["status"] != "pass"]


def test_a_healthy_history_is_ready_with_every_criterion_measured(
    stack: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, found = verdicts(write_config(tmp_path, stack), capsys, "ready")
    verdict = found["ready"]
    assert (status, verdict["verdict"], verdict["failing"], verdict["missing"]) == (0, "ready", [], [])
    results = {r["name"]: r for r in verdict["results"]}
    assert set(results) == {c.name for c in CRITERIA} | {
        "backup_verified",
        "restore_drill",
        "alerts_routed",
        "runbooks",
    }
    # Up all along but for the minutes since the history's last sample (a few before the module began): down, not left
    # out, though far under the 1 % the threshold allows.
    assert 0.995 <= results["uptime"]["value"] <= 1.0 and results["uptime"]["window"] == "5d"
    assert results["uptime"]["status"] == "pass"
    assert results["order_success"]["value"] == pytest.approx(1.0)
    assert results["api_latency_p99"]["value"] <= 0.01
    assert results["stream_uptime"]["value"] == pytest.approx(1.0, abs=0.005)
    assert results["memory_peak"]["value"] == pytest.approx(120e6)
    assert results["backup_verified"]["value"] == pytest.approx(1.0, abs=0.01)
    assert results["emergency_stop"]["window"] == "7d"
    assert "sum_over_time(last_over_time(up{" in results["uptime"]["source"]
    assert verdict["queries"] == len(CRITERIA) + 4  # history, rules, Alertmanager's status, retention


@pytest.mark.parametrize("name", sorted(FAILING))
def test_each_failing_history_names_exactly_its_criteria(
    name: str, stack: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, found = verdicts(write_config(tmp_path, stack), capsys, name)
    verdict = found[name]
    assert status == 1 and verdict["verdict"] == "not ready", unsettled(verdict)
    assert set(verdict["failing"]) == FAILING[name][1] and verdict["missing"] == [], unsettled(verdict)


@pytest.mark.parametrize("name", sorted(MISSING))
def test_missing_data_is_unknown_naming_it_never_ready(
    name: str, stack: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, found = verdicts(write_config(tmp_path, stack), capsys, name)
    verdict = found[name]
    assert (status, verdict["verdict"], verdict["failing"]) == (1, "unknown", [])
    assert set(verdict["missing"]) == MISSING[name][1]


@pytest.mark.parametrize("name", sorted(BINANCE))
def test_on_binance_the_dead_man_switch_is_not_applicable_never_pass(
    name: str, stack: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, found = verdicts(write_config(tmp_path, stack), capsys, name)
    verdict = found[name]
    assert (status, verdict["verdict"], verdict["failing"], verdict["missing"]) == (0, "ready", [], [])
    switch = next(r for r in verdict["results"] if r["name"] == "dead_man_switch")
    assert (switch["status"], switch["value"]) == ("n/a", None)
    assert switch["detail"].startswith("not applicable on this venue") and "venue step" in switch["detail"]
    assert main(["--config", str(write_config(tmp_path, stack)), "readiness", name, "--window", "5d"]) == 0
    assert re.search(r"N/A\s+dead_man_switch .*not applicable on this venue", capsys.readouterr().out)


def test_a_freqtrade_bot_reads_its_dead_man_switch_not_applicable_on_any_venue(
    stack: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, found = verdicts(write_config(tmp_path, stack), capsys, "freqtrade-kraken")
    verdict = found["freqtrade-kraken"]
    assert (status, verdict["verdict"], verdict["failing"], verdict["missing"]) == (0, "ready", [], [])
    switch = next(r for r in verdict["results"] if r["name"] == "dead_man_switch")
    assert (switch["status"], switch["value"]) == ("n/a", None)
    assert switch["detail"].startswith("not applicable to this bot: freqtrade arms no dead man's switch")
    assert "venue step" in switch["detail"]


def test_less_history_than_the_window_is_unknown_with_no_hidden_allowance(
    stack: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A quarter of an hour of a bot, asked about 61 minutes (the CLI, as a user runs it): every criterion over the
    window is unknown, none passes; the same bot over 5 days too. A bot with two hours of the same history is judged
    over the 61 minutes."""

    config = write_config(tmp_path, stack)
    status, found = verdicts(config, capsys, "two-hours", window="61m")
    judged = {r["name"]: r for r in found["two-hours"]["results"]}
    # Judged (its history ends when the module began: the minutes since count as down, so it may pass or fail).
    assert judged["uptime"]["status"] != "unknown" and judged["uptime"]["value"] >= 0.9, judged["uptime"]
    assert judged["order_success"]["status"] == "pass", judged["order_success"]
    for window in ("61m", "5d"):
        status, found = verdicts(config, capsys, "thin", window=window)
        verdict = found["thin"]
        assert (status, verdict["verdict"], verdict["failing"]) == (1, "unknown", []), verdict
        assert set(verdict["missing"]) == WINDOW_CRITERIA, verdict["missing"]
        uptime = next(r for r in verdict["results"] if r["name"] == "uptime")
        assert uptime["value"] is None and uptime["detail"].startswith("no history at the start of the"), uptime
    done = subprocess.run(
        [sys.executable, "-m", "trading_ops", "--config", str(config), "readiness", "thin", "--window", "61m"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done
    assert done.stdout.startswith("thin (thin:9101): UNKNOWN over 1h1m"), done.stdout
    assert "PASS    uptime" not in done.stdout and "UNKNOWN uptime" in done.stdout, done.stdout


def test_a_day_without_samples_counts_against_uptime(
    stack: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No sample at all on the last day of the window: up for 4 of its 5 days (and the 5 minutes a last scrape counts
    for), never 100 %."""
    status, found = verdicts(write_config(tmp_path, stack), capsys, "silent-last-day")
    verdict = found["silent-last-day"]
    uptime = next(r for r in verdict["results"] if r["name"] == "uptime")
    assert status == 1 and "uptime" in verdict["failing"], verdict
    assert uptime["status"] == "fail" and 0.79 <= uptime["value"] <= 0.805, uptime


def test_every_bot_in_one_run_costs_one_query_per_criterion(
    stack: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = ["ready", "dotted", *FAILING, *MISSING, *THIN, *SILENT]
    status, found = verdicts(write_config(tmp_path, stack), capsys, *names)
    assert status == 1 and set(found) == set(names)
    assert {n: set(v["failing"]) for n, v in found.items() if n in FAILING} == {n: f for n, (_, f) in FAILING.items()}
    assert found["ready"]["verdict"] == found["dotted"]["verdict"] == "ready"
    assert found["ready"]["queries"] == len(CRITERIA) + 4


def test_stale_operations_and_tighter_thresholds_fail_the_ready_bot(
    stack: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, stack, backup_age=8 * DAY, max_memory_peak_bytes=100_000_000)
    status, found = verdicts(config, capsys, "ready")
    assert status == 1 and set(found["ready"]["failing"]) == {"backup_verified", "restore_drill", "memory_peak"}


def test_no_backup_ever_verified_fails_rather_than_passes(
    stack: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, found = verdicts(write_config(tmp_path, stack, backup_age=None), capsys, "ready")
    assert set(found["ready"]["failing"]) == {"backup_verified", "restore_drill"}
    assert {r["detail"] for r in found["ready"]["results"] if r["name"] == "backup_verified"} == {"never"}


def test_a_text_verdict_names_the_failing_criteria_with_value_and_threshold(
    stack: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(write_config(tmp_path, stack)), "readiness", "order-success"]) == 1
    out = capsys.readouterr().out
    assert "order-success (order-success:9101): NOT READY over 5d" in out
    assert "failing: order_success" in out
    assert re.search(r"FAIL\s+order_success\s+90%\s+>= 95%", out), out


def live(config_path: Path, bot: str) -> Any:
    """The configuration of `config_path` as the live bot `bot` reads it: the venue switched, a ramp configured."""
    data = yaml.safe_load(config_path.read_text())
    stages = [{"name": "small", "max_position_notional": 5, "daily_loss_limit": 2}]
    data["bot"] = {
        "name": bot,
        "venue": "kraken",
        "data_dir": str(config_path.parent / "var"),
        "ramp": {"stages": stages},
    }
    return parse_config(data)


def test_record_asks_the_reconciler_with_a_persons_own_token_and_says_so_in_one_line(
    stack: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--record` asks the reconciler for a live start (tests/reconciler/test_reconciler_live_start.py runs it through);
    what it refuses before asking, and a reconciler that does not answer, are one line each."""
    from ports import free_port
    from secret_file import write_secret

    monkeypatch.delenv("TRADING_OPS_TOKEN_FILE", raising=False)
    monkeypatch.delenv("TRADING_OPS_TOKEN", raising=False)
    config = write_config(tmp_path, stack)
    base = ["--config", str(config), "readiness", "order-success"]
    refusals = {
        ("--record",): "readiness: --record needs --reason, a text of 500 characters at most",
        ("--record", "--reason", "ok"): "readiness: needs your own token of reconciler.api_tokens (--token-file FILE, "
        "$TRADING_OPS_TOKEN_FILE or $TRADING_OPS_TOKEN): the decision is recorded under that token's name",
        ("--reason", "ok"): "readiness: --reason goes with --record",
        ("--record", "--reason", "ok", "--decision-out", "f"): "readiness: --record asks for a live start, "
        "--decision-out fetches its decision: one at a time",
        ("ready", "--decision-out", "f"): "readiness: --decision-out FILE goes with one bot",
    }
    for args, message in refusals.items():
        assert main([*base, *args]) == 2, args
        assert capsys.readouterr().err.strip() == f"trading-ops: {message}"
    token = write_secret(tmp_path / "secrets" / "alice-token", "token-of-alice-0123456789abcdef")
    url = f"http://127.0.0.1:{free_port()}"
    for args in (("--record", "--reason", "ok"), ("--decision-out", str(tmp_path / "live.decision"))):
        assert main([*base, *args, "--token-file", str(token), "--url", url]) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"trading-ops: readiness: {args[0]}: the reconciler at "), lines
    assert not (tmp_path / "live.decision").exists()


def answer_json(handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
    """Send `body` (JSON) as the answer to the request `handler` is serving."""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class Served:
    """`handler` (a BaseHTTPRequestHandler, its access log quiet) served on 127.0.0.1 in a thread; `url`, `close()`."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        quiet = type("Quiet", (handler,), {"log_message": lambda self, *_args: None})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), quiet)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class StageAnswering(Served):
    """The bots' control APIs as far as a ramp request reads them: `status` answers the first stage."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the standard library's name
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer_json(
                    self,
                    200,
                    json.dumps({"ok": True, "state": "active", "ramp": {"stage": 1, "name": "small"}}).encode(),
                )

        super().__init__(Handler)


@contextlib.contextmanager
def reconciler_serving(config: Path) -> Iterator[str]:
    """The real reconciler app of `config`, served on its own event loop in a thread (the CLI under test calls it
    synchronously); its URL."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_app(load_config(config)))
    port = free_port()

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=60)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


def test_ramp_promote_asks_only_when_the_stages_criteria_pass_over_its_window(
    stack: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ramp promote` asks through the reconciler with the person's own token: the criteria of the stage before are
    judged there, and the request posted to Alertmanager names the token's principal."""
    data = yaml.safe_load(write_config(tmp_path, stack).read_text())
    first = {"name": "small", "max_position_notional": 5, "criteria": ["uptime", "order_success"], "window": "3d"}
    data["bot"] = {"ramp": {"stages": [first, {"name": "bigger", "max_position_notional": 7}]}}
    bots = StageAnswering()
    for token, value in (("webhook", "webhook-token-of-the-test"), ("alice", "alice-token-of-the-test")):
        (tmp_path / f"{token}-token").write_text(value)
        (tmp_path / f"{token}-token").chmod(0o600)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate.upgrade(url)
    for bot in data["bots"]:
        bot["url"] = bots.url
    data["database"] = {"url": url}
    data["reconciler"].update(
        token_file=str(tmp_path / "webhook-token"),
        api_tokens=[{"name": "alice", "scope": "approve", "token_file": str(tmp_path / "alice-token")}],
        check_silences=False,
        listen={"port": free_port()},
        spool_dir=str(tmp_path / "spool"),
    )
    config = tmp_path / "ramp.yaml"
    config.write_text(yaml.safe_dump(data))
    with reconciler_serving(config) as reconciler:

        def promote(bot: str, *more: str) -> int:
            argv = ["--config", str(config), "ramp", "promote", bot, "--by", "at the desk", *more]
            return main([*argv, "--token-file", str(tmp_path / "alice-token"), "--url", reconciler])

        def err() -> str:
            return [line for line in capsys.readouterr().err.splitlines() if line.startswith("trading-ops: ")][-1]

        try:
            assert promote("order-success", "--to", "bigger") == 1
            assert err() == "trading-ops: ramp: not asked: order-success stays at small: over 3d, order_success fail"
            assert promote("young", "--to", "bigger") == 1  # 2 days of history: not enough to judge 3 days
            assert "young stays at small: over 3d, uptime unknown, order_success unknown" in err()
            assert promote("ready", "--to", "bigger") == 0
            answer = json.loads(capsys.readouterr().out)
            assert {k: answer[k] for k in ("bot", "stage", "requested_by", "comment", "criteria")} == {
                "bot": "ready",
                "stage": "bigger",
                "requested_by": "alice",
                "comment": "at the desk",
                "criteria": ["uptime", "order_success"],
            }
            assert promote("ready", "--to", "bigger") == 1  # asked already: nothing more
            assert f"not asked: request {answer['request']} for ready to bigger by alice stands until" in err()
        finally:
            bots.close()
    with urllib.request.urlopen(
        f"{stack['alertmanager']}/api/v2/alerts?filter=alertname%3D%22TradingBotRampPromotionRequested%22"
    ) as resp:
        (held,) = json.load(resp)
    assert {k: held["labels"][k] for k in ("instance", "stage", "stage_number", "requested_by", "request")} == {
        "instance": instance("ready"),
        "stage": "bigger",
        "stage_number": "2",
        "requested_by": "alice",
        "request": str(answer["request"]),
    }
    for argv, message in (
        (["--to", "huge"], "trading-ops: ramp: unknown stage 'huge' (stages: small, bigger)"),
        (["--to", "small"], "trading-ops: ramp: 'small' is the first stage: a bot starts there, nothing to promote to"),
    ):
        assert main(["--config", str(config), "ramp", "promote", "ready", *argv]) == 2
        # The command's one line (the reconciler app in this process logs its requests to the same stderr).
        said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trading-ops: ")]
        assert said == [message], said
    # Without a token of one's own: exit 2, one line, nothing asked.
    assert main(["--config", str(config), "ramp", "promote", "ready", "--to", "bigger"]) == 2
    assert "needs your own token of reconciler.api_tokens" in capsys.readouterr().err


async def test_a_stage_s_window_on_less_history_is_unknown(stack: dict[str, str], tmp_path: Path) -> None:
    """What `ramp promote` judges before it asks: the stage's criteria over the stage's window (61 minutes here). A
    quarter of an hour of history leaves them unknown (the one-hour allowance passed them on 5 minutes); two hours are
    judged."""
    import aiohttp

    from trading_ops.clients.alertmanager import AlertmanagerClient
    from trading_ops.clients.prometheus import PrometheusClient
    from trading_ops.readiness.verdict import evaluate

    data = yaml.safe_load(write_config(tmp_path, stack).read_text())
    first = {"name": "small", "max_position_notional": 5, "criteria": ["uptime", "order_success"], "window": "61m"}
    data["bot"] = {"ramp": {"stages": [first, {"name": "bigger", "max_position_notional": 7}]}}
    config = parse_config(data, base_dir=tmp_path)
    stage = config.bot.ramp.stages[0]
    bots = [b for b in config.bots if b.name in ("thin", "two-hours")]
    async with aiohttp.ClientSession() as session:
        prometheus = PrometheusClient(session, config.reconciler.prometheus_urls)
        alertmanager = AlertmanagerClient(session, config.reconciler.alertmanager_urls)
        thin, judged = await evaluate(config, bots, stage.window, prometheus, alertmanager)
    results = {r.name: r for r in thin.results}
    assert [results[n].status for n in stage.criteria] == ["unknown", "unknown"], results
    results = {r.name: r for r in judged.results}
    assert results["order_success"].status == "pass" and results["uptime"].status != "unknown", results


async def test_the_standard_stacks_17_minute_stage_window_is_judged_on_its_5_s_scrapes(
    stack: dict[str, str], tmp_path: Path
) -> None:
    """`make run`'s stack at the standard profile gives the demo bot's stages a 17-minute window (its 1 % scrape
    tolerance holds two of the profile's 5 s scrapes): on real Prometheus, 20 minutes of 5 s scrapes judge each of the
    stages' criteria (a pass, as the healthy history is), and 15 minutes leave every one unknown."""
    import aiohttp

    from trading_ops.clients.alertmanager import AlertmanagerClient
    from trading_ops.clients.prometheus import PrometheusClient
    from trading_ops.readiness.verdict import evaluate
    from trading_ops.stack.app_config import STACK_RAMP_CRITERIA, ramp_window
    from trading_ops.stack.profiles import STANDARD

    window = format_duration(ramp_window(STANDARD))
    assert window == "17m"
    config = parse_config(yaml.safe_load(write_config(tmp_path, stack).read_text()), base_dir=tmp_path)
    bots = [b for b in config.bots if b.name in STANDARD_STACK]
    async with aiohttp.ClientSession() as session:
        prometheus = PrometheusClient(session, config.reconciler.prometheus_urls)
        alertmanager = AlertmanagerClient(session, config.reconciler.alertmanager_urls)
        # Judged when the histories end, as a promotion asked then would be (they end when the module's Prometheus
        # started; its tests take minutes, and a window ending later would hold a gap). Every query is evaluated at
        # that moment (before, only the operations' records were: Prometheus judged at its own now, minutes later in
        # a full run, and uptime failed on the gap).
        at = float(stack["backfilled_at"])
        judged, young = await evaluate(config, bots, window, prometheus, alertmanager, now=at)
        # Five minutes earlier, the longer history too is only 15 minutes old: unknown.
        (earlier,) = await evaluate(config, bots[:1], window, prometheus, alertmanager, now=at - 300)
    assert (judged.bot, young.bot, earlier.bot) == ("standard-20m", "standard-15m", "standard-20m")
    results = {r.name: r.status for r in earlier.results}
    assert {name: results[name] for name in STACK_RAMP_CRITERIA} == dict.fromkeys(STACK_RAMP_CRITERIA, "unknown")
    results = {r.name: r.status for r in judged.results}
    assert {name: results[name] for name in STACK_RAMP_CRITERIA} == dict.fromkeys(STACK_RAMP_CRITERIA, "pass"), results
    results = {r.name: r.status for r in young.results}
    assert {name: results[name] for name in STACK_RAMP_CRITERIA} == dict.fromkeys(STACK_RAMP_CRITERIA, "unknown")


class DroppingProxy(Served):
    """Prometheus's API in front of `upstream`, the first requests of each path in `drops` (path: how many) closed
    unanswered (a connection lost on a loaded host: CI, stop 73, a verdict read `unknown` for it), every other request
    passed on."""

    def __init__(self, upstream: str, drops: dict[str, int]) -> None:
        dropped = self.dropped = dict.fromkeys(drops, 0)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the standard library's name
                path = self.path.split("?")[0]
                if path in drops and dropped[path] < drops[path]:
                    dropped[path] += 1
                    self.close_connection = True
                    return  # nothing sent: the client sees the connection closed
                with urllib.request.urlopen(upstream + self.path, timeout=60) as answer:  # noqa: S310 - the test's own
                    answer_json(self, answer.status, answer.read())

        super().__init__(Handler)


def test_a_request_lost_is_asked_again_not_read_as_unknown(
    stack: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first query (the bots' history, which every criterion's verdict hangs on) is lost twice, the alerting
    rules' request once: each is asked again, and the healthy history is still `ready`, every criterion measured, in
    one request per criterion as counted."""
    drops = {"/api/v1/query": 2, "/api/v1/rules": 1}
    proxy = DroppingProxy(stack["prometheus"], drops)
    try:
        status, found = verdicts(write_config(tmp_path, {**stack, "prometheus": proxy.url}), capsys, "ready")
    finally:
        proxy.close()
    assert proxy.dropped == drops
    assert (status, found["ready"]["verdict"]) == (0, "ready"), unsettled(found["ready"])
    assert found["ready"]["queries"] == len(CRITERIA) + 4


def test_prometheus_unreachable_is_unknown_never_ready(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = {"prometheus": f"http://127.0.0.1:{free_port()}", "alertmanager": f"http://127.0.0.1:{free_port()}"}
    status, found = verdicts(write_config(tmp_path, dead), capsys, "ready")
    assert (status, found["ready"]["verdict"]) == (1, "unknown")
    assert set(found["ready"]["missing"]) >= WINDOW_CRITERIA | {"alerts_routed", "runbooks"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nobody"], "readiness: unknown bot 'nobody' (known: "),
        (["stop-drill", "ready"], "; stop-drill is an option: readiness BOT --stop-drill"),
        (["ready", "--window", "5 days"], "readiness: --window: "),
        (["ready", "--window", "30m"], "readiness: --window: must be longer than 1h"),
        (["ready", "--window", "45d"], "readiness: --window 45d is longer than Prometheus's retention (30d)"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    argv: list[str], message: str, stack: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(write_config(tmp_path, stack)), "readiness", *argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and captured.out == "", lines


def test_a_refusal_names_the_window_the_user_gave(stack: dict[str, str], tmp_path: Path) -> None:
    """Without --window the window is the configuration's (readiness.window): the refusal names that key, never a
    `--window` nobody typed (the CLI as a subprocess, one line, exit 2)."""

    config = write_config(tmp_path, stack, window="45d")
    cli = [sys.executable, "-m", "trading_ops", "--config", str(config), "readiness", "ready"]
    for argv, message in (
        ([], "trading-ops: readiness: readiness.window 45d is longer than Prometheus's retention (30d)"),
        (["--window", "40d"], "trading-ops: readiness: --window 40d is longer than Prometheus's retention (30d)"),
    ):
        done = subprocess.run([*cli, *argv], capture_output=True, text=True, timeout=120, check=False)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), (argv, done)
        assert done.stdout == ""


def test_a_configuration_without_bots_says_where_the_local_stack_s_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bare `readiness paper-1` beside `make run` reads trading-ops.yaml, which lists no bots: the refusal says which
    configuration the stack runs on (`up` writes var/stack/trading-ops.yaml)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "trading-ops.yaml").write_text("logging:\n  level: INFO\n")
    assert main(["readiness", "paper-1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "trading-ops: readiness: unknown bot 'paper-1' (known: none: the configuration has no bots: list)"
    )
    (tmp_path / "var" / "stack").mkdir(parents=True)
    (tmp_path / "var" / "stack" / "trading-ops.yaml").write_text("bots: []\n")
    assert main(["readiness", "paper-1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "trading-ops: readiness: unknown bot 'paper-1' (known: none: the configuration has no bots: list); the local "
        "stack's configuration, with its bots, is var/stack/trading-ops.yaml: pass --config var/stack/trading-ops.yaml"
    )


# -- the reconciler's API: GET /api/v1/readiness/{bot} (scope read) ------------------------------------------------


async def reconciler_client(
    stack: dict[str, str], tmp_path: Path, sqlite_url: str, aiohttp_client: Any, **readiness: Any
) -> Any:
    """A reconciler on a migrated SQLite ledger, configured with the readiness stack's bots and Prometheus."""
    migrate.upgrade(sqlite_url)
    data = yaml.safe_load(write_config(tmp_path, stack, **readiness).read_text())
    make_config(tmp_path, sqlite_url)  # writes the webhook and read tokens beside the configuration
    config = parse_config(
        {**data, "database": {"url": sqlite_url}, "reconciler": {**data["reconciler"], **reconciler_keys(tmp_path)}},
        base_dir=tmp_path,
    )
    return await aiohttp_client(create_app(config))


async def test_the_reconciler_serves_the_verdict_to_a_read_token(
    stack: dict[str, str], tmp_path: Path, sqlite_url: str, aiohttp_client: Any
) -> None:
    client = await reconciler_client(stack, tmp_path, sqlite_url, aiohttp_client)
    answer = await client.get("/api/v1/readiness/order-success", headers=READ_AUTH)
    assert answer.status == 200
    verdict = await answer.json()
    assert (verdict["verdict"], verdict["failing"], verdict["window"]) == ("not ready", ["order_success"], "5d")
    ready = await (await client.get("/api/v1/readiness/ready?window=4d", headers=READ_AUTH)).json()
    assert (ready["verdict"], ready["window"]) == ("ready", "4d")
    assert (await client.get("/api/v1/readiness/ready")).status == 401
    for path, status, error in (
        ("/api/v1/readiness/nobody", 404, "no bot 'nobody'"),
        ("/api/v1/readiness/ready?window=soon", 400, "window: "),
        ("/api/v1/readiness/ready?window=45d", 400, "longer than Prometheus's retention (30d)"),
    ):
        refused = await client.get(path, headers=READ_AUTH)
        assert refused.status == status and error in (await refused.json())["error"], path


async def test_the_console_shows_the_verdict_criterion_by_criterion(
    stack: dict[str, str], tmp_path: Path, sqlite_url: str, aiohttp_client: Any
) -> None:
    client = await reconciler_client(stack, tmp_path, sqlite_url, aiohttp_client)
    assert (await client.get("/ui/readiness/ready", allow_redirects=False)).headers["Location"] == "/ui/login"
    form = await (await client.get("/ui/login")).text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', form)
    assert csrf is not None
    login = await client.post("/ui/login", data={"csrf": csrf.group(1), "token": READ_TOKEN}, allow_redirects=False)
    assert login.status == 303
    index = await (await client.get("/ui/readiness")).text()
    assert 'href="/ui/readiness/order-success"' in index and "aria-current=page>Readiness<" in index
    page = await client.get("/ui/readiness/order-success")
    html = await page.text()
    assert page.status == 200 and '<span class="badge s-failure">not ready</span> over 5d' in html
    assert "Failing: order_success" in html
    row = re.search(r"<tr><td>(<span[^>]+>\w+</span>)</td><td><strong>order_success</strong>.*?</tr>", html, re.DOTALL)
    assert row is not None and "fail</span>" in row.group(1) and "<td>0.9</td><td>&gt;= 0.95 ratio</td>" in row.group(0)
    missing = await client.get("/ui/readiness/nobody")
    assert missing.status == 404 and "no bot &#x27;nobody&#x27;" in await missing.text()
    # The window field: a click judges again over the window typed (a GET), the configuration's when empty.
    assert '<input name="window" value="" placeholder="5d"' in html
    again = await client.get("/ui/readiness/order-success", params={"window": "4d"})
    html = await again.text()
    assert again.status == 200 and '<span class="badge s-failure">not ready</span> over 4d' in html
    assert '<input name="window" value="4d"' in html


async def test_a_default_window_prometheus_cannot_hold_is_explained_with_the_window_field(
    stack: dict[str, str], tmp_path: Path, sqlite_url: str, aiohttp_client: Any
) -> None:
    """readiness.window longer than Prometheus keeps: the API and the console name that key (no window was given),
    and the console's page keeps its window field, so one more click gives the verdict."""
    client = await reconciler_client(stack, tmp_path, sqlite_url, aiohttp_client, window="45d")
    refused = await client.get("/api/v1/readiness/ready", headers=READ_AUTH)
    error = (await refused.json())["error"]
    assert refused.status == 400 and error.startswith("readiness.window 45d is longer than Prometheus's retention")
    given = await client.get("/api/v1/readiness/ready?window=40d", headers=READ_AUTH)
    assert (await given.json())["error"].startswith("window 40d is longer than Prometheus's retention")
    form = await (await client.get("/ui/login")).text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', form)
    assert csrf is not None
    await client.post("/ui/login", data={"csrf": csrf.group(1), "token": READ_TOKEN}, allow_redirects=False)
    page = await client.get("/ui/readiness/ready")
    html = await page.text()
    assert page.status == 400 and "readiness.window 45d is longer than Prometheus&#x27;s retention" in html
    assert '<input name="window" value="" placeholder="45d"' in html
    judged = await client.get("/ui/readiness/ready", params={"window": "4d"})
    assert judged.status == 200 and '<span class="badge s-success">ready</span> over 4d' in await judged.text()


def reconciler_keys(tmp_path: Path) -> dict[str, Any]:
    """The webhook and read tokens of make_config, in files beside the configuration."""
    return {"token_file": str(tmp_path / "webhook-token"), "read_token_file": str(tmp_path / "read-token")}


# -- the routing tree, as Alertmanager walks it -----------------------------------------------------------------


def shipped_alerts() -> list[dict[str, Any]]:
    """The repository's alerting rules as Prometheus's rules API lists them."""
    return [
        {"type": "alerting", "name": r["alert"], "labels": r.get("labels", {}), "annotations": r["annotations"]}
        for path in sorted(RULES.glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for r in group["rules"]
        if "alert" in r
    ]


def test_the_shipped_alertmanager_routes_every_shipped_alert_and_each_has_its_runbook() -> None:
    config = routing.load((REPO_ROOT / "alertmanager" / "alertmanager.yml").read_text())
    alerts = shipped_alerts()
    assert routing.unrouted_alerts(config, alerts, {"instance": "paper-bot:9101"}) == []
    assert routing.alerts_without_runbook(alerts) == []
    # The walk itself: a critical bot alert pages and reaches the reconciler (continue), Watchdog the dead man.
    critical = {"alertname": "TradingBotDown", "severity": "critical", "service": "tradingbot"}
    assert routing.receivers_of(config, critical) == ["pager", "reconciler"]
    assert routing.receivers_of(config, {"alertname": "Watchdog", "severity": "none"}) == ["deadman", "reconciler"]


def test_an_alert_routed_to_a_receiver_that_notifies_nobody_fails() -> None:
    config = routing.load(yaml.safe_dump(ALERTMANAGER | {"route": {"receiver": "null"}}))
    alerts = [
        {"type": "alerting", "name": "TradingBotDown", "labels": {"severity": "critical"}, "annotations": {}},
        {"type": "alerting", "name": "TradingBotChatty", "labels": {"severity": "info"}, "annotations": {}},
    ]
    assert routing.unrouted_alerts(config, alerts, {}) == ["TradingBotDown"]
    assert routing.alerts_without_runbook(alerts) == ["TradingBotChatty", "TradingBotDown"]


# -- the recording rules are the verdict's expressions over a day ------------------------------------------------


def test_the_recording_rules_are_the_criteria_over_one_day() -> None:
    rules = {
        r["record"]: r["expr"].strip()
        for group in yaml.safe_load(READINESS_RULES.read_text())["groups"]
        for r in group["rules"]
    }
    expected = {c.record: c.expr(BOT_JOBS, RULE_WINDOW) for c in CRITERIA if c.record}
    assert rules == expected
