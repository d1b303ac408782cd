"""TLS everywhere a token travels: `web_config_file` (the exporter-toolkit web configuration) on our servers, the
reconciler's client TLS (`reconciler.tls`), and one-line errors for a bad file.

Integration tests need the `prometheus` and `prometheus-alertmanager` binaries (Debian packages of those names); they
start a paper bot, a reconciler, Prometheus and Alertmanager themselves, talking over mutual TLS with certificates this
module generates (the `cryptography` package), never committed.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from alertmanager_server import alertmanager_argv
from cryptography import x509
from polling import until
from ports import free_port
from secret_file import write_secret
from system_binaries import require_binary
from web_pki import Pki, make_pki, web_config

TRADING_OPS = [sys.executable, "-m", "trading_ops"]
CONTROL_TOKEN = "tls-test-control-token"
WEBHOOK_TOKEN = "tls-test-webhook-token"
READ_TOKEN = "tls-test-read-token"
SCRAPE_USER, SCRAPE_PASSWORD = "prometheus", "tls-test-scrape-password"
ALERTNAME = "TradingOpsTLSTestPause"
PAPER = {"seed": 7, "tick_interval_seconds": 0.05, "loop_interval_seconds": 0.1, "reject_probability": 0.0}
STARTUP_SECONDS = 60.0
STOP_SECONDS = 20


# ---- processes ------------------------------------------------------------------------------------------------------


def start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_SECONDS)


def tails(logs: list[Path]) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in logs if log.exists())


def get_json(url: str, context: ssl.SSLContext | None = None, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5, context=context) as response:
        return json.loads(response.read())


def request(
    url: str,
    context: ssl.SSLContext | None,
    *,
    method: str = "GET",
    bearer: str = "",
    basic: tuple[str, str] | None = None,
) -> tuple[int, str, dict[str, str]]:
    """(status, body, headers) of one request; HTTP errors are answers too."""
    headers = {}
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    if basic:
        headers["Authorization"] = "Basic " + b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
    data = b"{}" if method == "POST" else None
    req = urllib.request.Request(url, method=method, headers=headers, data=data)
    try:
        with urllib.request.urlopen(req, timeout=5, context=context) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


@dataclass
class Stack:
    pki: Pki
    bot: str  # https://127.0.0.1:PORT
    bot_instance: str
    reconciler: str
    prometheus: str
    alertmanager: str
    logs: list[Path]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = get_json(f"{self.prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
        return data["data"]["result"]  # type: ignore[no-any-return]

    def target(self, job: str) -> dict[str, Any] | None:
        """The job's target once a scrape of it reached the bot: one made before the bot listened (connection
        refused, a loaded machine's slow start) says nothing of how the bot answers."""
        for target in get_json(f"{self.prometheus}/api/v1/targets")["data"]["activeTargets"]:
            if target["labels"]["job"] == job and target["health"] != "unknown":
                if "connection refused" in target["lastError"]:
                    return None
                return target  # type: ignore[no-any-return]
        return None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A paper bot serving mutual TLS + basic auth; a reconciler serving mutual TLS and calling the bot with its client
    certificate; Prometheus scraping the bot three ways; Alertmanager posting the webhook to the reconciler over TLS."""
    prometheus_binary = require_binary("prometheus")
    tmp = tmp_path_factory.mktemp("tls-stack")
    pki = make_pki(tmp / "pki")
    bot_port, reconciler_port, prometheus_port, alertmanager_port = (free_port() for _ in range(4))
    bot_instance = f"127.0.0.1:{bot_port}"
    for name, secret in (
        ("control-token", CONTROL_TOKEN),
        ("webhook-token", WEBHOOK_TOKEN),
        ("read-token", READ_TOKEN),
    ):
        write_secret(tmp / name, secret + "\n")
    write_secret(tmp / "scrape-password", SCRAPE_PASSWORD)
    (tmp / "bot-web.yml").write_text(yaml.safe_dump(web_config(pki, users={SCRAPE_USER: SCRAPE_PASSWORD})))
    (tmp / "reconciler-web.yml").write_text(yaml.safe_dump(web_config(pki)))
    playbook = {
        "version": 1,
        "rules": [
            {
                "name": "tls-pause",
                "match": [f'alertname="{ALERTNAME}"'],
                "steps": [{"action": "bot", "command": "pause"}],
                # Healed when Prometheus still scrapes the bot over mutual TLS (the query returns nothing then).
                "verify": {"expr": 'up{job="bot-mtls"} == 0', "deadline": "30s", "interval": "1s"},
            }
        ],
    }
    (tmp / "playbook.yml").write_text(yaml.safe_dump(playbook))
    config = {
        "database": {"url": f"sqlite:///{tmp / 'trading-ops.db'}"},
        "bot": {
            "name": "tls",
            "listen": {"host": "127.0.0.1", "port": bot_port, "web_config_file": "bot-web.yml"},
            "control_token_file": "control-token",
            "data_dir": str(tmp / "bot-data"),
        },
        "paper": PAPER,
        "reconciler": {
            "listen": {"host": "127.0.0.1", "port": reconciler_port, "web_config_file": "reconciler-web.yml"},
            "token_file": "webhook-token",
            "read_token_file": "read-token",
            "playbook": str(tmp / "playbook.yml"),
            "prometheus_url": f"http://127.0.0.1:{prometheus_port}",
            "alertmanager_url": f"http://127.0.0.1:{alertmanager_port}",
            "check_silences": False,
            "poll_interval_seconds": 0.1,
            "watchdog": {"window_seconds": 0},
            "tls": {
                "ca_file": pki.path("ca.crt"),
                "cert_file": pki.path("client.crt"),
                "key_file": pki.path("client.key"),
            },
            "targets": {bot_instance: {"url": f"https://{bot_instance}", "token_file": "control-token"}},
        },
        "logging": {"level": "INFO"},
    }
    config_file = tmp / "trading-ops.yaml"
    config_file.write_text(yaml.safe_dump(config))
    tls_client = {
        "ca_file": pki.path("ca.crt"),
        "cert_file": pki.path("client.crt"),
        "key_file": pki.path("client.key"),
    }
    basic = {"username": SCRAPE_USER, "password_file": str(tmp / "scrape-password")}

    def job(name: str, **extra: Any) -> dict[str, Any]:
        return {"job_name": name, "scheme": "https", "static_configs": [{"targets": [bot_instance]}], **extra}

    (tmp / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                "scrape_configs": [
                    job("bot-mtls", tls_config=tls_client, basic_auth=basic),
                    job("bot-no-client-cert", tls_config={"ca_file": pki.path("ca.crt")}, basic_auth=basic),
                    job("bot-no-password", tls_config=tls_client),
                ],
            }
        )
    )
    (tmp / "alertmanager.yml").write_text(
        yaml.safe_dump(
            {
                "route": {
                    "receiver": "reconciler",
                    "group_by": ["alertname", "instance"],
                    "group_wait": "0s",
                    "group_interval": "1s",
                    "repeat_interval": "1h",
                },
                "receivers": [
                    {
                        "name": "reconciler",
                        "webhook_configs": [
                            {
                                "url": f"https://127.0.0.1:{reconciler_port}/api/v1/alertmanager",
                                "send_resolved": True,
                                "http_config": {
                                    "authorization": {"type": "Bearer", "credentials": WEBHOOK_TOKEN},
                                    "tls_config": tls_client,
                                },
                            }
                        ],
                    }
                ],
            }
        )
    )
    trading_ops = [*TRADING_OPS, "--config", str(config_file)]
    migrate = subprocess.run([*trading_ops, "db", "upgrade"], capture_output=True, text=True, timeout=120, check=False)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    logs = [tmp / n for n in ("paper-bot.log", "reconciler.log", "prometheus.log", "alertmanager.log")]
    processes = [
        start([*trading_ops, "paper-bot"], logs[0]),
        start([*trading_ops, "reconciler"], logs[1]),
        start(
            [
                prometheus_binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
            logs[2],
        ),
        start(alertmanager_argv(tmp / "alertmanager.yml", tmp / "alertmanager-data", alertmanager_port), logs[3]),
    ]
    found = Stack(
        pki,
        f"https://{bot_instance}",
        bot_instance,
        f"https://127.0.0.1:{reconciler_port}",
        f"http://127.0.0.1:{prometheus_port}",
        f"http://127.0.0.1:{alertmanager_port}",
        logs,
    )
    client = pki.client_context()
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            exited = [p.args[-1] for p in processes if p.poll() is not None]
            try:
                bot_up = request(f"{found.bot}/healthz", client, basic=(SCRAPE_USER, SCRAPE_PASSWORD))[0] == 200
                reconciler_up = request(f"{found.reconciler}/healthz", client)[0] == 200
                others_up = _ready(found)
            except (OSError, http.client.HTTPException, ValueError):
                bot_up = reconciler_up = others_up = False
            if bot_up and reconciler_up and others_up:
                break
            if exited or time.monotonic() > deadline:
                pytest.fail(f"the TLS stack did not come up (exited: {exited})\n{tails(logs)}", pytrace=False)
            time.sleep(0.2)
        yield found
    finally:
        stop(processes)


def _ready(stack: Stack) -> bool:
    for url in (stack.prometheus, stack.alertmanager):
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
            if response.status != 200:
                return False
    return True


def failed(stack: Stack, what: str) -> str:
    return f"{what}\n{tails(stack.logs)}"


# ---- Prometheus scraping the bot -------------------------------------------------------------------------------------


def test_prometheus_scrapes_the_bot_over_mutual_tls_with_basic_auth(stack: Stack) -> None:
    """scheme: https + tls_config (CA, client certificate) + basic_auth: the bot's series arrive, up == 1."""
    until(
        failed(stack, "up{job='bot-mtls'} == 1"),
        lambda: [r for r in stack.query('up{job="bot-mtls"} == 1')],
        deadline=60,
    )
    series = stack.query('tradingbot_ready{job="bot-mtls"}')
    assert series and series[0]["metric"]["instance"] == stack.bot_instance


def test_prometheus_without_a_client_certificate_is_refused(stack: Stack) -> None:
    """The same scrape without a client certificate fails in the TLS handshake: up == 0, the error names it."""
    target = until(failed(stack, "the no-certificate job scraped"), lambda: stack.target("bot-no-client-cert"))
    assert target["health"] == "down"
    assert "certificate" in target["lastError"], target["lastError"]
    assert [float(r["value"][1]) for r in stack.query('up{job="bot-no-client-cert"}')] == [0.0]


def test_prometheus_without_the_password_gets_401(stack: Stack) -> None:
    """Mutual TLS passes but basic_auth_users asks for the password: the scrape fails with 401, up == 0."""
    target = until(failed(stack, "the no-password job scraped"), lambda: stack.target("bot-no-password"))
    assert target["health"] == "down"
    assert "401" in target["lastError"], target["lastError"]
    assert [float(r["value"][1]) for r in stack.query('up{job="bot-no-password"}')] == [0.0]


# ---- what a client sees ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["bot", "reconciler"])
def test_plain_http_and_foreign_certificates_are_refused_where_tls_is_configured(stack: Stack, server: str) -> None:
    """http:// to a TLS port gets no HTTP answer; a client certificate of another CA, or none, fails the handshake;
    the test CA's client certificate gets in (the same request, so the refusals are TLS's, not the route's)."""
    base = getattr(stack, server)
    plain = base.replace("https://", "http://")
    with pytest.raises((OSError, http.client.HTTPException)):
        request(f"{plain}/healthz", None, basic=(SCRAPE_USER, SCRAPE_PASSWORD))
    for context in (stack.pki.client_context(rogue=True), stack.pki.client_context(with_certificate=False)):
        with pytest.raises((ssl.SSLError, OSError)):
            request(f"{base}/healthz", context, basic=(SCRAPE_USER, SCRAPE_PASSWORD))
    status, _, _ = request(f"{base}/healthz", stack.pki.client_context(), basic=(SCRAPE_USER, SCRAPE_PASSWORD))
    assert status == 200


def test_basic_auth_covers_reads_and_the_control_api_keeps_its_bearer_token(stack: Stack) -> None:
    """basic_auth_users guards /metrics and /healthz as the exporter-toolkit does; /control still answers to its bearer
    token alone (basic auth does not replace it, and is not asked for there: both take the Authorization header)."""
    client = stack.pki.client_context()
    status, _, headers = request(f"{stack.bot}/metrics", client)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert request(f"{stack.bot}/metrics", client, basic=(SCRAPE_USER, "wrong"))[0] == 401
    assert request(f"{stack.bot}/metrics", client, bearer=CONTROL_TOKEN)[0] == 401
    status, body, _ = request(f"{stack.bot}/metrics", client, basic=(SCRAPE_USER, SCRAPE_PASSWORD))
    assert status == 200 and "tradingbot_ready" in body
    status, _, headers = request(
        f"{stack.bot}/control/status", client, method="POST", basic=(SCRAPE_USER, SCRAPE_PASSWORD)
    )
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    status, body, _ = request(f"{stack.bot}/control/status", client, method="POST", bearer=CONTROL_TOKEN)
    assert status == 200 and json.loads(body)["ok"] is True


# ---- Alertmanager -> reconciler -> bot ------------------------------------------------------------------------------


def test_alertmanager_posts_over_tls_and_the_reconciler_pauses_the_bot_over_tls(stack: Stack) -> None:
    """Alertmanager's webhook (http_config.tls_config, mutual TLS) reaches the reconciler, which calls the bot's
    control API over mutual TLS with reconciler.tls: the bot is paused and the episode verified (recovered)."""
    client = stack.pki.client_context()
    labels = {"alertname": ALERTNAME, "instance": stack.bot_instance, "severity": "warning"}
    body = json.dumps([{"labels": labels, "annotations": {"summary": "TLS test."}}]).encode()
    post = urllib.request.Request(
        f"{stack.alertmanager}/api/v2/alerts", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    urllib.request.urlopen(post, timeout=5).close()
    read = {"Authorization": f"Bearer {READ_TOKEN}"}

    def episode() -> dict[str, Any] | None:
        for item in get_json(f"{stack.reconciler}/api/v1/episodes", client, read)["episodes"]:
            if item["alertname"] == ALERTNAME and item["state"] in ("recovered", "failed", "escalated"):
                return item  # type: ignore[no-any-return]
        return None

    done = until(failed(stack, "the episode closed"), episode, deadline=60)
    assert done["state"] == "recovered", failed(stack, json.dumps(done))
    assert [a["action"] for a in done["attempts"]][:1] and all(a["outcome"] for a in done["attempts"])
    status, answer, _ = request(f"{stack.bot}/control/status", client, method="POST", bearer=CONTROL_TOKEN)
    assert status == 200 and json.loads(answer)["state"] == "paused", answer


# ---- a bad web configuration ----------------------------------------------------------------------------------------


BAD_CONFIGS = [
    ("unknown top-level key", {"tls_server_config": {}, "tls_config": {}}, "tls_config: unknown key"),
    ("unknown TLS key", {"tls_server_config": {"certfile": "x"}}, "tls_server_config.certfile: unknown key"),
    ("no key file", {"tls_server_config": {"cert_file": "server.crt"}}, "tls_server_config.key_file: missing"),
    (
        "bad client_auth_type",
        {"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key", "client_auth_type": "Always"}},
        "tls_server_config.client_auth_type: expected one of NoClientCert",
    ),
    (
        "verification without a CA",
        {
            "tls_server_config": {
                "cert_file": "server.crt",
                "key_file": "server.key",
                "client_auth_type": "RequireAndVerifyClientCert",
            }
        },
        "tls_server_config.client_ca_file: missing",
    ),
    (
        "a CA without client auth",
        {"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key", "client_ca_file": "ca.crt"}},
        "tls_server_config.client_ca_file: a client CA without client_auth_type",
    ),
    (
        "TLS 1.0",
        {"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key", "min_version": "TLS10"}},
        "tls_server_config.min_version: expected TLS12 or TLS13",
    ),
    (
        "min above max",
        {
            "tls_server_config": {
                "cert_file": "server.crt",
                "key_file": "server.key",
                "min_version": "TLS13",
                "max_version": "TLS12",
            }
        },
        "tls_server_config.min_version: is above max_version",
    ),
    (
        "a missing certificate file",
        {"tls_server_config": {"cert_file": "nowhere.crt", "key_file": "server.key"}},
        "tls_server_config.cert_file: cannot read",
    ),
    (
        "a key of another certificate",
        {"tls_server_config": {"cert_file": "server.crt", "key_file": "client.key"}},
        "tls_server_config.cert_file: cannot load the certificate and key",
    ),
    ("a password, not a hash", {"basic_auth_users": {"alice": "secret"}}, "basic_auth_users.alice: expected a bcrypt"),
    ("not YAML", "tls_server_config: [", "not valid YAML"),
    ("not text", b"tls_server_config: \xff\n", "not UTF-8 text"),
]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# Each server we ship -> the key of its listen section.
SERVERS = {
    "paper-bot": "bot.listen",
    "reconciler": "reconciler.listen",
    "freqtrade": "freqtrade.targets.ft.listen",
    "paper-gateway": "gateway.listen",
}


def _config_with(tmp_path: Path, pki: Pki, web: Any, server: str) -> Path:
    """A configuration whose `server`'s listen section names a web configuration `web` (a mapping, or raw text)
    written beside the test's certificates (relative paths in it resolve there). The freqtrade sidecar watches a
    freqtrade that is not there (it serves regardless: /healthz says so)."""
    web_file = pki.dir / f"web-{tmp_path.name}.yml"
    if isinstance(web, bytes):
        web_file.write_bytes(web)
    else:
        web_file.write_text(web if isinstance(web, str) else yaml.safe_dump(web))
    token = str(tmp_path / "token")
    write_secret(tmp_path / "token", f"{CONTROL_TOKEN}\n")
    write_secret(tmp_path / "gateway-secret", b64encode(b"gateway-test-secret").decode())
    listen = {"host": "127.0.0.1", "port": free_port(), "web_config_file": str(web_file)}
    data: dict[str, Any] = {
        "database": {"url": f"sqlite:///{tmp_path / 'db.sqlite'}"},
        "bot": {"control_token_file": token, "data_dir": str(tmp_path / "data")},
        "reconciler": {"token_file": token},
        "freqtrade": {
            "control_token_file": token,
            "targets": {"ft": {"url": f"http://127.0.0.1:{free_port()}", "password_file": token}},
        },
        "gateway": {
            "control_token_file": token,
            "api_key_file": token,
            "api_secret_file": str(tmp_path / "gateway-secret"),
        },
    }
    section = data
    for part in SERVERS[server].split(".")[:-1]:
        section = section[part]
    section["listen"] = listen
    path = tmp_path / "trading-ops.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TRADING_OPS, *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.parametrize(("case", "web", "expected"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_config_check_names_the_problem_of_a_bad_web_config_in_one_line(
    tmp_path: Path, pki: Pki, case: str, web: Any, expected: str
) -> None:
    config = _config_with(tmp_path, pki, web, "paper-bot")
    result = _run("--config", str(config), "config", "check")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "bot.listen.web_config_file" in lines[0] and expected in lines[0], lines[0]


def test_config_check_accepts_mutual_tls_basic_auth_and_the_reconcilers_client_tls(tmp_path: Path, pki: Pki) -> None:
    web = web_config(pki, users={"alice": "pw"})
    web["http_server_config"] = {"http2": False, "headers": {"X-Frame-Options": "deny"}}
    config = _config_with(tmp_path, pki, web, "reconciler")
    data = yaml.safe_load(config.read_text())
    data["reconciler"]["tls"] = {
        "ca_file": pki.path("ca.crt"),
        "cert_file": pki.path("client.crt"),
        "key_file": pki.path("client.key"),
    }
    config.write_text(yaml.safe_dump(data))
    result = _run("--config", str(config), "config", "check")
    assert result.returncode == 0, result.stderr
    data["reconciler"]["tls"] = {"ca_file": pki.path("ca.crt"), "cert_file": pki.path("client.crt")}
    config.write_text(yaml.safe_dump(data))
    result = _run("--config", str(config), "config", "check")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "reconciler.tls.key_file" in result.stderr


@pytest.mark.parametrize("server", list(SERVERS))
def test_a_server_with_a_bad_web_config_exits_2_with_one_line_at_start(tmp_path: Path, pki: Pki, server: str) -> None:
    bad = {"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key", "client_auth_type": "Always"}}
    config = _config_with(tmp_path, pki, bad, server)
    assert _run("--config", str(config), "db", "upgrade", timeout=120).returncode == 0
    result = _run("--config", str(config), server, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{SERVERS[server]}.web_config_file" in lines[0] and "client_auth_type" in lines[0], lines[0]


@pytest.mark.parametrize(
    ("server", "read", "bearer"),
    [("freqtrade", "/metrics", "/control/status"), ("paper-gateway", "/0/public/Time", "/chaos")],
)
def test_the_sidecar_and_the_gateway_serve_mutual_tls_and_basic_auth(
    tmp_path: Path, pki: Pki, server: str, read: str, bearer: str
) -> None:
    """The freqtrade sidecar and the paper gateway started from the configuration serve their web config: plain HTTP
    refused, a read needs the client certificate and the password, the bearer-token route its token only."""
    config = _config_with(tmp_path, pki, web_config(pki, users={SCRAPE_USER: SCRAPE_PASSWORD}), server)
    if server == "freqtrade":  # the sidecar journals its commands in database.url: migrated first, as a bot's
        from trading_ops.db import migrate

        migrate.upgrade(yaml.safe_load(config.read_text())["database"]["url"])
    listen = yaml.safe_load(config.read_text())
    for part in SERVERS[server].split("."):
        listen = listen[part]
    base = f"https://127.0.0.1:{listen['port']}"
    log = tmp_path / f"{server}.log"
    process = start([*TRADING_OPS, "--config", str(config), server], log)
    client = pki.client_context()
    try:
        until(
            f"{server} serving TLS\n{tails([log])}",
            lambda: request(f"{base}{read}", client, basic=(SCRAPE_USER, SCRAPE_PASSWORD))[0] == 200,
            deadline=60,
            tolerate=(OSError, http.client.HTTPException),
        )
        assert request(f"{base}{read}", client)[0] == 401
        with pytest.raises((OSError, http.client.HTTPException)):
            request(f"{base.replace('https', 'http')}{read}", None, basic=(SCRAPE_USER, SCRAPE_PASSWORD))
        with pytest.raises((ssl.SSLError, OSError)):
            request(f"{base}{read}", pki.client_context(with_certificate=False), basic=(SCRAPE_USER, SCRAPE_PASSWORD))
        method = "POST" if server == "freqtrade" else "GET"
        assert request(f"{base}{bearer}", client, method=method, basic=(SCRAPE_USER, SCRAPE_PASSWORD))[0] == 401
        status, body, _ = request(f"{base}{bearer}", client, method=method, bearer=CONTROL_TOKEN)
        assert status == 200, body
    finally:
        stop([process])


# ---- two hosts: network namespaces ----------------------------------------------------------------------------------


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        pytest.fail(f"ip {' '.join(args)}: {result.stderr.strip()} (network namespaces need root)", pytrace=False)


def _in_namespace_json(namespace: str, url: str) -> Any:
    """GET `url` from inside `namespace` (the test itself runs in another)."""
    code = (
        "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    )
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", code, url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        raise OSError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed")
    return json.loads(result.stdout)


def test_prometheus_scrapes_a_bot_on_another_host_over_mutual_tls(tmp_path: Path) -> None:
    """Two hosts: the paper bot in one network namespace (10.231.0.1), Prometheus in another (10.231.0.2), joined by a
    veth pair: the scrape crosses a real network stack, over mutual TLS (up == 1), and without a client certificate it
    is refused (up == 0, "certificate"). Needs root (ip netns) and the `prometheus` binary."""
    prometheus_binary = require_binary("prometheus")
    bot_host, prometheus_host = "10.231.0.1", "10.231.0.2"
    tag = f"{time.monotonic_ns() % 100000}"
    ns_bot, ns_prometheus = f"tlsbot{tag}", f"tlsprom{tag}"
    pki = make_pki(tmp_path / "pki", bot_host)
    bot_port, prometheus_port = free_port(), free_port()
    write_secret(tmp_path / "token", CONTROL_TOKEN)
    (tmp_path / "web.yml").write_text(yaml.safe_dump(web_config(pki)))
    config = {
        "database": {"url": f"sqlite:///{tmp_path / 'db.sqlite'}"},
        "bot": {
            "name": "netns",
            "listen": {"host": bot_host, "port": bot_port, "web_config_file": "web.yml"},
            "control_token_file": "token",
            "data_dir": str(tmp_path / "data"),
        },
        "paper": PAPER,
    }
    (tmp_path / "trading-ops.yaml").write_text(yaml.safe_dump(config))
    tls_client = {
        "ca_file": pki.path("ca.crt"),
        "cert_file": pki.path("client.crt"),
        "key_file": pki.path("client.key"),
    }
    target = f"{bot_host}:{bot_port}"
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "mtls",
                        "scheme": "https",
                        "tls_config": tls_client,
                        "static_configs": [{"targets": [target]}],
                    },
                    {
                        "job_name": "no-cert",
                        "scheme": "https",
                        "tls_config": {"ca_file": pki.path("ca.crt")},
                        "static_configs": [{"targets": [target]}],
                    },
                ],
            }
        )
    )
    trading_ops = [*TRADING_OPS, "--config", str(tmp_path / "trading-ops.yaml")]
    assert (
        subprocess.run([*trading_ops, "db", "upgrade"], capture_output=True, timeout=120, check=False).returncode == 0
    )
    processes: list[subprocess.Popen[bytes]] = []
    logs = [tmp_path / "paper-bot.log", tmp_path / "prometheus.log"]
    created: list[str] = []
    try:
        for ns in (ns_bot, ns_prometheus):
            _ip("netns", "add", ns)
            created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip(
            "link",
            "add",
            f"v{tag}a",
            "netns",
            ns_bot,
            "type",
            "veth",
            "peer",
            "name",
            f"v{tag}b",
            "netns",
            ns_prometheus,
        )
        _ip("-n", ns_bot, "addr", "add", f"{bot_host}/24", "dev", f"v{tag}a")
        _ip("-n", ns_prometheus, "addr", "add", f"{prometheus_host}/24", "dev", f"v{tag}b")
        _ip("-n", ns_bot, "link", "set", f"v{tag}a", "up")
        _ip("-n", ns_prometheus, "link", "set", f"v{tag}b", "up")
        processes.append(start(["ip", "netns", "exec", ns_bot, *trading_ops, "paper-bot"], logs[0]))
        processes.append(
            start(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns_prometheus,
                    prometheus_binary,
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                ],
                logs[1],
            )
        )
        api = f"http://127.0.0.1:{prometheus_port}/api/v1"

        def targets() -> dict[str, dict[str, Any]] | None:
            found = {
                t["labels"]["job"]: t
                for t in _in_namespace_json(ns_prometheus, f"{api}/targets")["data"]["activeTargets"]
                if t["health"] != "unknown"
            }
            return found if found.get("mtls", {}).get("health") == "up" and "no-cert" in found else None

        seen = until(f"Prometheus scraping {target} across the namespaces\n{tails(logs)}", targets, deadline=90)
        assert seen["mtls"]["scrapeUrl"] == f"https://{target}/metrics"
        assert seen["no-cert"]["health"] == "down" and "certificate" in seen["no-cert"]["lastError"], seen["no-cert"]
        # The bot is not reachable from this (the root) namespace at all: the scrape did cross the veth pair.
        with pytest.raises(OSError):
            request(f"https://{target}/healthz", pki.client_context())
    finally:
        stop(processes)
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30, check=False)


# ---- the rest of the format: allowed SANs, headers, rate limit ------------------------------------------------------


async def test_allowed_sans_headers_and_rate_limit_apply_to_every_route(tmp_path: Path, pki: Pki) -> None:
    """client_allowed_sans refuses a verified certificate without an allowed SAN (403), http_server_config.headers are
    on every answer, and rate_limit answers 429 past its burst, bearer routes included (as in the exporter-toolkit),
    with Retry-After."""
    import aiohttp
    from aiohttp import web

    from trading_ops.webconfig import load_web_config, secure_app

    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    def serve(data: dict[str, Any]) -> tuple[web.Application, Any]:
        path = tmp_path / f"web-{len(list(tmp_path.iterdir()))}.yml"
        path.write_text(yaml.safe_dump(data))
        config = load_web_config(path)
        app = web.Application()
        app.router.add_get("/metrics", ok)
        app.router.add_get("/control/status", ok)
        secure_app(app, config, ("/control/",))
        return app, config.ssl_context

    async def statuses(
        app: web.Application, context: Any, path: str, times: int, header: str = "X-Frame-Options"
    ) -> list[tuple[int, str]]:
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
        out = []
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(times):
                    async with session.get(f"https://127.0.0.1:{port}{path}", ssl=pki.client_context()) as response:
                        out.append((response.status, response.headers.get(header, "")))
        finally:
            await runner.cleanup()
        return out

    wrong_san = web_config(pki, client_allowed_sans=["reconciler"])
    assert await statuses(*serve(wrong_san), "/metrics", 1) == [(403, "")]
    right_san = web_config(pki, client_allowed_sans=["prometheus"])
    right_san["http_server_config"] = {"headers": {"X-Frame-Options": "deny"}}
    assert await statuses(*serve(right_san), "/metrics", 1) == [(200, "deny")]
    limited = web_config(pki)
    limited["rate_limit"] = {"interval": "1h", "burst": 2}
    # The 429 says when a token is back (RFC 6585's Retry-After, whole seconds): an hour, less what has passed.
    assert await statuses(*serve(limited), "/control/status", 3, header="Retry-After") == [
        (200, ""),
        (200, ""),
        (429, "3600"),
    ]


async def test_a_renewed_certificate_is_served_without_a_restart(tmp_path: Path, pki: Pki) -> None:
    """As the exporter-toolkit rereads its file: a certificate and key replaced on disk are what the next connection
    gets, and basic_auth_users edited in the file apply; a broken renewal keeps the previous certificate."""
    import asyncio
    import shutil

    from aiohttp import web

    from trading_ops.webconfig import load_web_config, secure_app

    renewed = make_pki(tmp_path / "renewed", ca_name="trading-ops renewal CA")
    server = tmp_path / "server"
    server.mkdir()
    for suffix in ("crt", "key"):
        shutil.copy(pki.path(f"server.{suffix}"), server / f"bot.{suffix}")
    web_file = tmp_path / "web.yml"
    data = web_config(pki, cert_file="server/bot.crt", key_file="server/bot.key")
    web_file.write_text(yaml.safe_dump(data))
    client = pki.client_context()
    client.load_verify_locations(renewed.path("ca.crt"))  # trusts the renewed certificate's CA too

    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    config = load_web_config(web_file)
    app = web.Application()
    app.router.add_get("/metrics", ok)
    secure_app(app, config)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=config.ssl_context).start()

    async def served(basic: tuple[str, str] | None = None) -> tuple[x509.Name, int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        auth = f"Authorization: Basic {b64encode(f'{basic[0]}:{basic[1]}'.encode()).decode()}\r\n" if basic else ""
        writer.write(f"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n".encode())
        status = int((await reader.readline()).split()[1])
        writer.close()
        await writer.wait_closed()
        return x509.load_der_x509_certificate(der).issuer, status

    def replace(path: Path, content: bytes) -> None:
        (path.parent / f".{path.name}.new").write_bytes(content)
        (path.parent / f".{path.name}.new").chmod(0o600)
        (path.parent / f".{path.name}.new").replace(path)

    try:
        assert await served() == (x509.load_pem_x509_certificate((pki.dir / "ca.crt").read_bytes()).subject, 200)
        replace(server / "bot.key", Path(renewed.path("server.key")).read_bytes())
        replace(server / "bot.crt", Path(renewed.path("server.crt")).read_bytes())
        renewed_ca = x509.load_pem_x509_certificate(Path(renewed.path("ca.crt")).read_bytes()).subject
        assert await served() == (renewed_ca, 200)
        data["basic_auth_users"] = {"alice": bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()}
        replace(web_file, yaml.safe_dump(data).encode())
        assert await served() == (renewed_ca, 401)
        assert await served(("alice", "pw")) == (renewed_ca, 200)
        replace(server / "bot.key", Path(pki.path("client.key")).read_bytes())  # not the certificate's key
        assert await served(("alice", "pw")) == (renewed_ca, 200)
    finally:
        await runner.cleanup()


async def test_a_ccxt_bot_trades_with_a_gateway_over_mutual_tls(tmp_path: Path, pki: Pki) -> None:
    """The paper gateway behind mutual TLS: a ccxt exchange built from the configuration with ccxt.tls (the CA, the
    bot's client certificate) signs and sends a private call (balances), and its broker's streams connect over wss://
    with the same context; without ccxt.tls, certifi's bundle does not
    know the gateway's CA and the call fails on the certificate."""
    import ccxt.async_support as ccxt_async

    from trading_ops.config import load_config
    from trading_ops.venues.ccxt.factory import make_exchange

    path = _config_with(tmp_path, pki, web_config(pki), "paper-gateway")
    data = yaml.safe_load(path.read_text())
    base = f"https://127.0.0.1:{data['gateway']['listen']['port']}"
    log = tmp_path / "gateway.log"
    process = start([*TRADING_OPS, "--config", str(path), "paper-gateway"], log)
    try:
        until(
            f"the gateway serving TLS\n{tails([log])}",
            lambda: request(f"{base}/0/public/Time", pki.client_context())[0] == 200,
            deadline=60,
            tolerate=(OSError, http.client.HTTPException),
        )
        data["ccxt"] = {
            "exchange": "kraken",
            "api_key_file": data["gateway"]["api_key_file"],
            "api_secret_file": data["gateway"]["api_secret_file"],
            "urls": {"public": base, "private": base},
            "tls": {
                "ca_file": pki.path("ca.crt"),
                "cert_file": pki.path("client.crt"),
                "key_file": pki.path("client.key"),
            },
        }
        path.write_text(yaml.safe_dump(data))
        exchange = make_exchange(load_config(path))
        try:
            balance = await exchange.fetch_balance()
        finally:
            await exchange.close()
        assert balance["total"], balance
        # The broker it builds streams over wss:// with the same context: both sockets up, the book in sync.
        from trading_ops.bot.broker import BrokerEvents
        from trading_ops.venues.ccxt.factory import broker_from_config
        from trading_ops.venues.ccxt.streaming import StreamingCcxtBroker

        broker = broker_from_config(load_config(path))
        assert isinstance(broker, StreamingCcxtBroker) and broker.private_url.startswith("wss://")
        try:
            await broker.connect(BrokerEvents())
            assert broker.stream is not None and broker.public is not None
            await asyncio.wait_for(asyncio.gather(broker.stream.connected.wait(), broker.public.connected.wait()), 60)
        finally:
            await broker.close()
        del data["ccxt"]["tls"]
        path.write_text(yaml.safe_dump(data))
        exchange = make_exchange(load_config(path))
        try:
            with pytest.raises(ccxt_async.NetworkError) as refused:
                await exchange.fetch_balance()
            cause = refused.value.__cause__ or refused.value.__context__
            assert "certificate" in repr(cause).lower(), repr(cause)
        finally:
            await exchange.close()
    finally:
        stop([process])
