"""Fixtures of the reconciler tests: configurations, a tiny bot control API, real Prometheus and Alertmanager."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from ports import free_port  # noqa: F401 - re-exported: tests import it from here

from tests.system_binaries import require_binary
from trading_ops.config import Config, parse_config
from trading_ops.db import migrate

TOKEN = "webhook-token"
READ_TOKEN = "read-token"
BOT_TOKEN = "bot-token"
ALERTMANAGER_BIN = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
PROMETHEUS_BIN = shutil.which("prometheus")


def alertmanager_binary() -> str:
    """The Alertmanager server (Debian's name, or upstream's); a missing one fails the test, never skips it."""
    return ALERTMANAGER_BIN or require_binary("prometheus-alertmanager")


def prometheus_binary() -> str:
    """The Prometheus server; a missing one fails the test, never skips it."""
    return PROMETHEUS_BIN or require_binary("prometheus")


def dead_owner(instance: str) -> str:
    """The owner id a reconciler process had, after that process died (as after kill -9)."""
    import sys

    from trading_ops.reconciler.processes import ProcessId

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    identity = ProcessId.of(proc.pid)
    proc.kill()
    proc.wait()
    assert identity is not None
    return f"{instance}:{identity.token()}.deadbeef"


def wait_http(url: str, deadline: float = 20.0, proc: subprocess.Popen[Any] | None = None) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {deadline}s")


async def engine_settled(app: web.Application, passes: int = 3, deadline: float = 20.0) -> None:
    """Wait until the engine's loop has read the ledger `passes` more times and no run is in progress: whatever it
    would start from what is stored now has been started and has finished, so what a test then finds not done was
    not going to be done. (The first counted pass may have begun before the caller's last write: count more.)"""
    import asyncio

    from trading_ops.reconciler import keys

    engine = app[keys.ENGINE]
    done = 0
    passed = asyncio.Event()
    dispatch = engine.dispatch_once

    async def counted() -> None:
        nonlocal done
        await dispatch()
        done += 1
        passed.set()

    engine.dispatch_once = counted  # type: ignore[method-assign]
    try:
        async with asyncio.timeout(deadline):
            while done < passes or engine.runs:
                passed.clear()
                await passed.wait()
    except TimeoutError:
        raise AssertionError(f"the engine did not settle in {deadline}s: {done} passes, runs {sorted(engine.runs)}")
    finally:
        del engine.dispatch_once  # the class's method again


# When the test alerts started: a minute before the session, as Alertmanager would send it (an alert that started
# longer ago than the ledger's retention is not acted on). Later startsAt of the same alert: `starts(seconds)`.
STARTS_AT = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)


def starts(seconds: float = 0.0) -> str:
    """STARTS_AT plus `seconds`, as the webhook writes it."""
    return (STARTS_AT + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def alert(
    alertname: str = "TradingBotBrokerDisconnected",
    status: str = "firing",
    fingerprint: str = "f1",
    starts_at: str = starts(),
    generator_url: str = "",
    **labels: str,
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": alertname, "instance": "bot-1", **labels},
        "annotations": {"summary": "test alert."},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": generator_url,
        "fingerprint": fingerprint,
    }


def payload(*alerts: dict[str, Any], status: str | None = None) -> dict[str, Any]:
    status = status or ("firing" if any(a["status"] == "firing" for a in alerts) else "resolved")
    return {
        "version": "4",
        "groupKey": '{}:{alertname="x"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "reconciler",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager",
        "alerts": list(alerts),
    }


AUTH = {"Authorization": f"Bearer {TOKEN}"}
# The episode API's token (reconciler.read_token), not the webhook's.
READ_AUTH = {"Authorization": f"Bearer {READ_TOKEN}"}


def write_playbook(tmp_path: Path, rules: list[dict[str, Any]], defaults: dict[str, Any] | None = None) -> Path:
    path = tmp_path / "playbook.yml"
    path.write_text(yaml.safe_dump({"version": 1, "defaults": defaults or {}, "rules": rules}))
    return path


def make_config(tmp_path: Path, db_url: str, notify_urls: list[str] | None = None, **reconciler: Any) -> Config:
    """A configuration for tests: fast polling, silences not checked, tokens (and apprise URLs) in files."""
    (tmp_path / "webhook-token").write_text(TOKEN)
    (tmp_path / "read-token").write_text(READ_TOKEN)
    (tmp_path / "bot-token").write_text(BOT_TOKEN)
    rc: dict[str, Any] = {
        "token_file": str(tmp_path / "webhook-token"),
        "read_token_file": str(tmp_path / "read-token"),
        "poll_interval_seconds": 0.05,
        "check_silences": False,
        "prometheus_url": "http://127.0.0.1:9",
        "alertmanager_url": "http://127.0.0.1:9",
        "watchdog": {"window_seconds": 0},
    }
    rc.update(reconciler)
    data: dict[str, Any] = {"database": {"url": db_url}, "reconciler": rc}
    if notify_urls:
        (tmp_path / "apprise-urls").write_text("\n".join(notify_urls))
        data["notifications"] = {"urls_file": str(tmp_path / "apprise-urls")}
    return parse_config(data, base_dir=tmp_path)


@pytest.fixture
def migrated_sqlite(sqlite_url: str) -> str:
    migrate.upgrade(sqlite_url)
    return sqlite_url


@pytest.fixture
def migrated_db(database_url: str) -> str:
    migrate.upgrade(database_url)
    return database_url


@dataclass
class FakeBot:
    """A bot control API as the contract says (POST /control/{command}, bearer token, JSON)."""

    url: str = ""
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # command -> HTTP status to answer (default 200)
    status: dict[str, int] = field(default_factory=dict)
    delay: float = 0.0
    on_call: Callable[[str], None] | None = None

    def commands(self) -> list[str]:
        return [c for c, _ in self.calls]


COMMANDS = {
    "pause",
    "resume",
    "reduce_only",
    "cancel_all",
    "flatten",
    "reconnect",
    "resubscribe",
    "reconcile",
    "status",
    "halt",
}


@pytest.fixture
async def fake_bot(aiohttp_server: Any) -> FakeBot:
    import asyncio

    bot = FakeBot()

    async def control(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {BOT_TOKEN}":
            return web.json_response({"error": "unauthorized"}, status=401)
        command = request.match_info["command"]
        if command not in COMMANDS:
            return web.json_response({"error": "unknown command"}, status=404)
        body = await request.json() if request.can_read_body else {}
        bot.calls.append((command, body))
        if bot.on_call:
            bot.on_call(command)
        if bot.delay:
            await asyncio.sleep(bot.delay)
        status = bot.status.get(command, 200)
        return web.json_response({"ok": status == 200, "command": command}, status=status)

    app = web.Application()
    app.router.add_post("/control/{command}", control)
    server = await aiohttp_server(app)
    bot.url = str(server.make_url("")).rstrip("/")
    return bot


def bot_targets(bot: FakeBot, tmp_path: Path, *instances: str) -> dict[str, Any]:
    """reconciler.targets mapping these bot instances (default: bot-1) to the fake bot."""
    (tmp_path / "bot-token").write_text(BOT_TOKEN)
    return {i: {"url": bot.url, "token_file": str(tmp_path / "bot-token")} for i in instances or ("bot-1",)}


# ---- real servers ------------------------------------------------------------------------------------


@dataclass
class Alertmanager:
    url: str
    proc: subprocess.Popen[bytes]

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        req = urllib.request.Request(
            f"{self.url}/api/v2/alerts",
            data=json.dumps(alerts).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(req, timeout=5).close()

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}/api/v2/{path}", timeout=5) as resp:
            return json.loads(resp.read())

    def fire(self, labels: dict[str, str]) -> dict[str, Any]:
        """Post a firing alert (as Prometheus does) and return it as Alertmanager holds it (fingerprint,
        startsAt), to send the reconciler the webhook Alertmanager would."""
        self.post_alerts([{"labels": labels, "annotations": {"summary": "test alert."}}])
        for held in self.get("alerts"):
            if held["labels"] == labels:
                return held  # type: ignore[no-any-return]
        raise AssertionError(f"Alertmanager does not hold {labels}")

    def resolve(self, held: dict[str, Any]) -> None:
        """Resolve an alert as Prometheus does: the same labels with an end that has come."""
        ends = datetime.now(UTC).isoformat()
        self.post_alerts([{"labels": held["labels"], "startsAt": held["startsAt"], "endsAt": ends}])

    def silence(self, matchers: dict[str, str], seconds: float, created_by: str = "ops", comment: str = "test") -> str:
        now = datetime.now(UTC)
        body = {
            "matchers": [{"name": k, "value": v, "isRegex": False, "isEqual": True} for k, v in matchers.items()],
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(seconds=seconds)).isoformat(),
            "createdBy": created_by,
            "comment": comment,
        }
        req = urllib.request.Request(
            f"{self.url}/api/v2/silences",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return str(json.loads(resp.read())["silenceID"])

    def expire(self, silence_id: str) -> None:
        req = urllib.request.Request(f"{self.url}/api/v2/silence/{silence_id}", method="DELETE")
        urllib.request.urlopen(req, timeout=5).close()


def start_alertmanager(
    tmp: Path,
    webhook_url: str | None = None,
    cluster_port: int | None = None,
    peers: tuple[int, ...] = (),
    repeat_interval: str = "1h",
    max_alerts: int = 0,
    port: int | None = None,
) -> Alertmanager:
    """A real Alertmanager; `port` to start it again where a stopped one listened (its clients keep their URL)."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    receivers: list[dict[str, Any]] = [{"name": "null"}]
    route: dict[str, Any] = {
        "receiver": "null",
        "group_by": ["alertname", "instance"],
        "group_wait": "0s",
        "group_interval": "1s",
        "repeat_interval": repeat_interval,
    }
    if webhook_url:
        receivers.append(
            {
                "name": "reconciler",
                "webhook_configs": [
                    {
                        "url": webhook_url,
                        "send_resolved": True,
                        "max_alerts": max_alerts,
                        "http_config": {"authorization": {"type": "Bearer", "credentials": TOKEN}},
                    }
                ],
            }
        )
        route["receiver"] = "reconciler"
    (tmp / "am.yml").write_text(yaml.safe_dump({"route": route, "receivers": receivers}))
    args = [
        alertmanager_binary(),
        f"--config.file={tmp / 'am.yml'}",
        f"--storage.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    if cluster_port is None:
        args.append("--cluster.listen-address=")
    else:
        args += [
            f"--cluster.listen-address=127.0.0.1:{cluster_port}",
            f"--cluster.advertise-address=127.0.0.1:{cluster_port}",
            "--cluster.settle-timeout=1s",
            "--cluster.gossip-interval=50ms",
            "--cluster.pushpull-interval=1s",
        ]
        args += [f"--cluster.peer=127.0.0.1:{p}" for p in peers]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(tmp / "am.log", "wb"))  # noqa: SIM115
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", proc=proc)
    except Exception:
        proc.kill()
        raise
    return Alertmanager(f"http://127.0.0.1:{port}", proc)


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alertmanager]:
    """A real single Alertmanager (no webhook receiver) for the API v2 clients: silences, posted alerts."""
    am = start_alertmanager(tmp_path_factory.mktemp("alertmanager"))
    yield am
    stop(am.proc)


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus (no scrape targets: verification uses expressions of time())."""
    binary = prometheus_binary()
    tmp = tmp_path_factory.mktemp("prometheus")
    (tmp / "prometheus.yml").write_text("global:\n  scrape_interval: 15s\n")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "prometheus.log", "wb"),  # noqa: SIM115
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", proc=proc, deadline=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


class ThreadedServer:
    """The reconciler app served on a real port from a thread with its own event loop (for sync clients)."""

    def __init__(self, config: Config) -> None:
        import asyncio
        import threading

        from trading_ops.reconciler.app import create_app

        self.config = config
        self.port = free_port()
        self.app = create_app(config)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(30) or self.error:
            raise RuntimeError(f"reconciler did not start: {self.error}")
        self.url = f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        import asyncio

        asyncio.set_event_loop(self.loop)
        self.runner = web.AppRunner(self.app, access_log=None)
        try:
            self.loop.run_until_complete(self.runner.setup())
            self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        except BaseException as exc:  # reported to the starting test
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
        import urllib.error

        req = urllib.request.Request(
            f"{self.url}/api/v1/alertmanager",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", **(headers or AUTH)},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
