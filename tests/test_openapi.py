"""The OpenAPI 3.1 documents of the reconciler's API and of a bot's: true to the routes each server registers, valid
OpenAPI 3.1, served and printed alike, and schemathesis (its CLI, as an SRE would run it) against a live reconciler on
PostgreSQL and a live paper bot process: every generated request is answered as the document allows, never with a
5xx, and the server still answers /healthz afterwards. Needs PostgreSQL on 127.0.0.1:5432."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import schemathesis
import yaml
from paper_process import cli, wait_healthy
from polling import until
from ports import free_port
from reconciler_server import READ_TOKEN, TOKEN, ThreadedServer, make_config, write_playbook
from schemathesis.specs.openapi.definitions import OPENAPI_31
from secret_file import write_secret
from shared_postgres import new_database
from webhook_payloads import alert, payload

from trading_ops.bot import server as bot_server
from trading_ops.bot.api_spec import CONTROL_PREFIX, RuntimeCommands, bot_document
from trading_ops.bot.control import RUNTIME_COMMANDS
from trading_ops.db import migrate
from trading_ops.openapi import described, routes
from trading_ops.reconciler.api_spec import OPENAPI_PATH, UNDESCRIBED_PREFIXES, reconciler_document

TEXT_REFUSED = "the name and the reason must be text without NUL or lone surrogates"
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
# What every response is held to: no 5xx, a status the operation documents, its content type, its headers and its
# body's schema.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
# Generated cases per operation and phase: about a minute for both servers on this 2-core machine.
MAX_EXAMPLES = 20
SEED = 20370
# Values a person attacking the API would try, mixed into the strings and integers schemathesis generates (where they
# fit an operation's schema; in its negative cases where they do not): numbers past every integer type and past
# Python's 4,300-digit conversion limit, durations of hundreds of digits, non-finite numbers, NUL, a header
# injection, path tricks, a right-to-left override, a line longer than the HTTP layer reads.
HOSTILE_STRINGS = (
    "9" * 5000,
    "1" + "0" * 4400,
    "1h" + "9" * 400,
    "0" * 60 + "1",
    "-1",
    "1e309",
    "NaN",
    "Infinity",
    "\u0000",
    "a\r\nX-Injected: 1",
    "%00",
    "../..",
    "2147483648",
    "9223372036854775808",
    "\u202e",
    "a" * 9000,
)
HOSTILE_INTEGERS = (2**63 - 1, -(2**63), 2**31, 2**31 - 1, 0, -1)
# Parameters that get the hostile strings even where their schema says otherwise (an id is digits; as a negative case
# schemathesis sends them anyway), in a fifth of the cases. Not yet `query.limit`: `?limit=` of 5,000 digits is
# answered 500 until issue 37's bounded parsing lands (int() refuses past 4,300 digits), then it joins these.
HOSTILE_PARAMETERS = ("path.id", "path.target", "path.command", "query.limit")
OPERATE_TOKEN = "operate-token-for-the-fuzzer"
APPROVE_TOKEN = "approve-token-for-the-fuzzer"
BOT_TOKENS = {"read": "bot-read-token-0001", "operate": "bot-operate-token-01", "destructive": "bot-destroy-token-01"}
APPROVAL_RULE = {
    "name": "flatten-on-request",
    "match": ['alertname="TradingBotFlattenRequested"'],
    "allow_destructive": True,
    "approval": "required",
    "approval_timeout": "1h",
    "max_attempts": 1,
    "cooldown": 0,
    "verify": False,
    "steps": [{"action": "bot", "command": "flatten"}],
}


def _fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def valid_openapi_31(document: dict[str, Any]) -> None:
    """`document` is OpenAPI 3.1 by the specification's own schema, each schema in it is JSON Schema 2020-12, and
    schemathesis loads it."""
    jsonschema.Draft202012Validator(OPENAPI_31).validate(document)
    for schema in document["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    loaded = schemathesis.openapi.from_dict(document)
    assert len(list(loaded.get_all_operations())) == sum(len(item) for item in document["paths"].values())


def test_the_reconciler_document_describes_every_api_route_and_nothing_else(tmp_path: Path) -> None:
    from trading_ops.reconciler.app import create_app

    migrate.upgrade(url := f"sqlite:///{tmp_path / 'ledger.db'}")
    app = create_app(make_config(tmp_path, url))
    document = reconciler_document()
    assert described(document) == routes(app, ignore=UNDESCRIBED_PREFIXES)
    # The console is all that is left out: HTML pages and forms under /ui.
    assert {path for _, path in routes(app) - routes(app, ignore=UNDESCRIBED_PREFIXES)} >= {"/ui/", "/ui/login"}
    valid_openapi_31(document)


def test_the_bot_document_describes_every_route_and_each_command() -> None:
    document = bot_document(RuntimeCommands())
    registered = routes(bot_server.create_app(None))
    commands = {path.removeprefix(CONTROL_PREFIX) for _, path in described(document) if path.startswith(CONTROL_PREFIX)}
    # /control/{command} is described once per command the bot offers, and once for any name (404 for another).
    assert commands == {*RUNTIME_COMMANDS, "{command}"}
    as_routes = {
        (m, f"{CONTROL_PREFIX}{{command}}" if p.startswith(CONTROL_PREFIX) else p) for m, p in described(document)
    }
    assert as_routes == registered
    halt = document["paths"]["/control/halt"]["post"]
    assert halt["security"] == [{"destructive": []}] and "403" in halt["responses"]
    assert document["paths"]["/control/status"]["post"]["security"] == [{"read": []}]
    valid_openapi_31(document)


async def test_the_freqtrade_sidecar_serves_the_document_of_its_own_commands(aiohttp_client: Any) -> None:
    from prometheus_client import CollectorRegistry

    from trading_ops.integrations.freqtrade.app import FreqtradeSidecar, create_app

    # A freqtrade that is not there: the document does not depend on it.
    sidecar = FreqtradeSidecar(
        name="ft", url="http://127.0.0.1:9", username="u", password="p", token="t", registry=CollectorRegistry()
    )
    client = await aiohttp_client(create_app(sidecar))
    response = await client.get("/openapi.json")
    assert response.status == 200 and response.content_type == "application/json"
    document = await response.json()
    offered = {path.removeprefix(CONTROL_PREFIX) for path in document["paths"] if path.startswith(CONTROL_PREFIX)}
    assert offered == {*sidecar.control.commands, "{command}"} and "reload" in offered
    assert document["paths"]["/control/reload"]["post"]["security"] == [{"operate": []}]
    assert document == bot_document(sidecar.control)
    valid_openapi_31(document)


def test_openapi_command_prints_each_document_and_refuses_bad_usage_in_one_line(tmp_path: Path) -> None:
    reconciler = cli("openapi", "reconciler")
    assert reconciler.returncode == 0, reconciler.stderr
    assert json.loads(reconciler.stdout) == reconciler_document()
    bot = cli("openapi", "bot", "--output", str(tmp_path / "bot.json"))
    assert (bot.returncode, bot.stdout) == (
        0,
        f"wrote the OpenAPI document of the bot's API to {tmp_path / 'bot.json'}\n",
    )
    assert json.loads((tmp_path / "bot.json").read_text()) == bot_document(RuntimeCommands())
    for args, words in (
        (("openapi", "gateway"), "invalid choice: 'gateway'"),
        (("openapi", "bot", "--output", str(tmp_path / "missing" / "x.json")), "cannot write"),
    ):
        result = cli(*args)
        lines = result.stderr.strip().splitlines()
        assert (result.returncode, len(lines), result.stdout) == (2, 1, ""), result.stderr
        assert words in lines[0]


# ---- schemathesis against the live servers ---------------------------------------------------------------------------


def run_schemathesis(spec_url: str, tokens: dict[str, str], workdir: Path) -> tuple[int, str, int]:
    """schemathesis's CLI against the document at `spec_url`, each security scheme given its token, the hostile values
    mixed in: its exit status, its output and how many requests it sent (its HAR report's entries). Deterministic (a
    fixed seed, deterministic generation), one worker."""
    config = workdir / "schemathesis.toml"
    auth = "".join(f'[auth.openapi.{scheme}]\nbearer = "{token}"\n\n' for scheme, token in tokens.items())
    # JSON's strings and lists are TOML's too.
    config.write_text(
        f"{auth}[dictionaries.hostile]\nvalues = {json.dumps(HOSTILE_STRINGS)}\n\n"
        f"[dictionaries.integers]\nvalues = {json.dumps(HOSTILE_INTEGERS)}\n\n"
        "[generation.dictionaries]\n"
        'string = { dictionary = "hostile", probability = 0.1 }\n'
        'integer = { dictionary = "integers", probability = 0.1 }\n\n'
        "[parameters]\n"
        + "".join(f'"{name}" = {{ dictionary = "hostile", probability = 0.2 }}\n' for name in HOSTILE_PARAMETERS)
    )
    har = workdir / "requests.har"
    result = subprocess.run(
        [
            str(SCHEMATHESIS),
            "--config-file",
            str(config),
            "--no-color",
            "run",
            spec_url,
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            # Deterministic generation keeps no example database either: CI does not flap.
            "--generation-deterministic",
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--continue-on-failure",
            "--report",
            "har",
            "--report-har-path",
            str(har),
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=280,  # inside pytest-timeout's 300 s: a hung run fails with its own output
        check=False,
    )
    requests = len(json.loads(har.read_text())["log"]["entries"]) if har.exists() else 0
    # Its summary (phases, cases generated) in the test's output.
    print(result.stdout[result.stdout.find("Test Phases:") :])
    return result.returncode, result.stdout + result.stderr, requests


@pytest.fixture
def reconciler(tmp_path: Path) -> Iterator[ThreadedServer]:
    """A reconciler on a new PostgreSQL database, tokens of each scope, an episode waiting for approval."""
    write_secret(tmp_path / "operate-token", OPERATE_TOKEN)
    write_secret(tmp_path / "approve-token", APPROVE_TOKEN)
    write_secret(tmp_path / "bot-token", "bot-token")
    with new_database() as url:
        migrate.upgrade(url)
        config = make_config(
            tmp_path,
            url,
            playbook=str(write_playbook(tmp_path, [APPROVAL_RULE])),
            api_tokens=[
                {"name": "oncall", "scope": "operate", "token_file": str(tmp_path / "operate-token")},
                {"name": "desk", "scope": "approve", "token_file": str(tmp_path / "approve-token")},
            ],
            targets={"bot-1": {"url": "http://127.0.0.1:9", "token_file": str(tmp_path / "bot-token")}},
        )
        server = ThreadedServer(config)
        try:
            yield server
        finally:
            server.stop()


@pytest.mark.slow
@pytest.mark.postgres
def test_schemathesis_finds_no_5xx_and_no_answer_outside_the_document_on_the_reconciler(
    reconciler: ThreadedServer, tmp_path: Path, record_property: Any
) -> None:
    status, body = reconciler.post(json.dumps(payload(alert("TradingBotFlattenRequested", fingerprint="a1"))).encode())
    assert status == 200, body
    served = json.loads(_fetch(f"{reconciler.url}{OPENAPI_PATH}")[1])
    assert served == reconciler_document()
    tokens = {"webhook": TOKEN, "read": READ_TOKEN, "operate": OPERATE_TOKEN, "approve": APPROVE_TOKEN}
    code, output, requests = run_schemathesis(f"{reconciler.url}{OPENAPI_PATH}", tokens, tmp_path)
    record_property("schemathesis_requests", requests)
    print(f"schemathesis sent {requests} requests to the reconciler")
    assert code == 0, output[-20000:]
    assert requests > 400, output[-3000:]
    assert _fetch(f"{reconciler.url}/healthz") == (200, b'{"status": "ok"}')


@pytest.mark.postgres
def test_a_decision_whose_name_or_reason_no_database_stores_is_a_400_and_the_approval_still_waits(
    reconciler: ThreadedServer,
) -> None:
    """Found by hand beside the fuzzing (one pending approval gives schemathesis one try): a NUL or a lone surrogate
    in `by` or `reason` reached PostgreSQL's UPDATE and was answered 500."""
    status, body = reconciler.post(json.dumps(payload(alert("TradingBotFlattenRequested", fingerprint="a2"))).encode())
    assert status == 200, body

    def call(path: str, token: str, body: dict[str, str] | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        request = urllib.request.Request(f"{reconciler.url}{path}", data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    pending = until("the approval asked", lambda: call("/api/v1/approvals?status=pending", READ_TOKEN)[1]["approvals"])
    path = f"/api/v1/approvals/{pending[0]['id']}"
    for body in ({"by": "desk\x00"}, {"reason": "no\x00"}, {"by": "\ud800"}, {"reason": "\udfff"}):
        answer = call(path, APPROVE_TOKEN, {"decision": "reject", "reason": "r", **body})
        assert answer == (400, {"error": f"approval {pending[0]['id']}: {TEXT_REFUSED}"}), body
    assert call(path, READ_TOKEN)[1]["status"] == "pending"
    decided = call(path, APPROVE_TOKEN, {"decision": "reject", "reason": "not now", "by": "desk"})
    assert decided[0] == 200 and decided[1]["status"] == "rejected"


@pytest.fixture
def paper_bot(tmp_path: Path) -> Iterator[int]:
    """`trading-ops paper-bot` as a user runs it, with a control token of each scope."""
    port = free_port()
    for scope, token in BOT_TOKENS.items():
        write_secret(tmp_path / f"{scope}-token", token)
    config = tmp_path / "trading-ops.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database": {"url": "sqlite:///var/journal.db"},
                "bot": {
                    "data_dir": "var",
                    "listen": {"port": port},
                    "control_tokens": [
                        {"name": f"{scope}-person", "scope": scope, "token_file": f"{scope}-token"}
                        for scope in BOT_TOKENS
                    ],
                },
                "paper": {"seed": 3, "loop_interval_seconds": 0.05, "tick_interval_seconds": 0.02},
            }
        )
    )
    assert cli("--config", str(config), "db", "upgrade").returncode == 0
    log = (tmp_path / "bot.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "trading_ops", "--config", str(config), "paper-bot"], stdout=log, stderr=log
    )
    try:
        wait_healthy(port, proc)
        yield port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        log.close()


@pytest.mark.slow
def test_schemathesis_finds_no_5xx_and_no_answer_outside_the_document_on_a_paper_bot(
    paper_bot: int, tmp_path: Path, record_property: Any
) -> None:
    url = f"http://127.0.0.1:{paper_bot}"
    served = json.loads(_fetch(f"{url}/openapi.json")[1])
    # The bot's own commands, as a bot on the runtime offers them.
    assert served == bot_document(RuntimeCommands())
    code, output, requests = run_schemathesis(f"{url}/openapi.json", BOT_TOKENS, tmp_path)
    record_property("schemathesis_requests", requests)
    print(f"schemathesis sent {requests} requests to the paper bot")
    assert code == 0, output[-20000:]
    assert requests > 400, output[-3000:]
    assert _fetch(f"{url}/healthz")[0] == 200
