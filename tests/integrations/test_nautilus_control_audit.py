"""Commands sent straight to a NautilusTrader node's control API (the controller, trading_ops.integrations.nautilus),
journaled by the controller (trading_ops.integrations.command_journal) and pulled by the reconciler's own code into
its audit chain, once, with who sent them; a node started again keeps them.

Needs the `nautilus` extra (a real `TradingNode` with Nautilus's sandbox execution client) and the paper gateway (this
repository's, its own process), both started here.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from control_audit_helpers import chain, pull_file, reconciler_config, verify_cli
from decision_helpers import TRUSTED, clear_halt
from gateway_helpers import Gateway, start_gateway
from nautilus_helpers import Node, start_node
from polling import until
from ports import free_port
from secret_file import write_secret

from trading_ops.decisions import CLEAR_HALT
from trading_ops.integrations.nautilus.controller import JOURNAL_FILE, TradingOpsControllerConfig, journal_engine

TOKEN = "nautilus-audit-control-token"
BOT = "nautilus-audit"
TRADER = "NAUTILUS-001"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("nautilus-audit-gateway"))
    try:
        yield gw
    finally:
        gw.stop()


def control(url: str, command: str, **args: Any) -> tuple[int, dict[str, Any]]:
    """A person's command with the node's token (curl: no source header)."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    req = urllib.request.Request(
        f"{url}/control/{command}", data=json.dumps(args).encode(), method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=40) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def serving(gateway: Gateway, tmp_path: Path, port: int, **controller: Any) -> Node:
    """A node whose controller serves on `port` and answers `status`."""
    node = start_node(gateway.url, tmp_path / "token", port=port, bot=BOT, **controller)
    try:
        until(
            "the controller serves",
            lambda: node.controller.port is not None and control(node.url, "status")[0] == 200,
            30,
        )
    except BaseException:
        node.stop()
        raise
    return node


def test_a_direct_command_and_a_refused_one_are_audited_once_and_outlive_a_restart(
    gateway: Gateway, tmp_path: Path, migrated_sqlite: str
) -> None:
    """The node journals into the trading-ops database (database_url, migrated), the reconciler's own: a `pause` and a
    `clear_halt` it refuses (409: not halted) are two entries after a pull, not again after a second; `status` and
    `control_events` themselves are none. Stopped and started again, the node still answers them (a new run), a pull
    appends nothing twice, and a command after the restart is appended; `audit verify` finds the chain whole."""
    write_secret(tmp_path / "token", TOKEN)
    port = free_port()
    config = reconciler_config(tmp_path, migrated_sqlite, BOT, f"http://127.0.0.1:{port}", TOKEN)
    node = serving(gateway, tmp_path, port, data_dir=str(tmp_path / "controller"), database_url=migrated_sqlite)
    try:
        assert control(node.url, "pause", reason="lunch")[0] == 200
        assert control(node.url, "clear_halt")[0] == 409
        assert control(node.url, "status")[0] == 200
        status, page = control(node.url, "control_events")
        assert status == 200 and page["bot"] == BOT and page["caller"] == "control_token", page
        assert [(e["command"], e["outcome"]) for e in page["events"]] == [
            ("pause", "ok"),
            ("clear_halt", "refused 409"),
        ]
        first = page["events"][0]
        assert (first["principal"], first["source"], first["peer"]) == ("control_token", "operator", "127.0.0.1")
        assert (first["before"], first["after"]) == ("active", "paused")
        assert "not halted" in page["events"][1]["error"]

        assert pull_file(config) == {BOT: 2}
        assert pull_file(config) == {BOT: 0}
        seen = [
            (e["action"], e["principal"], e["source"], e["before"], e["after"]) for e in chain(migrated_sqlite, BOT)
        ]
        assert seen == [
            (
                "bot_control:pause",
                "control_token",
                "127.0.0.1",
                {"state": "active"},
                {"state": "paused", "outcome": "ok"},
            ),
            ("bot_control:clear_halt", "control_token", "127.0.0.1", {}, {"outcome": "refused 409"}),
        ]
        run = first["run_id"]
    finally:
        node.stop()

    node = serving(gateway, tmp_path, port, data_dir=str(tmp_path / "controller"), database_url=migrated_sqlite)
    try:
        status, page = control(node.url, "control_events")
        assert [e["command"] for e in page["events"]] == ["pause", "clear_halt"], page
        assert pull_file(config) == {BOT: 0}
        assert control(node.url, "resume")[0] == 200
        status, page = control(node.url, "control_events", after=page["last_id"])
        (event,) = page["events"]
        assert event["command"] == "resume" and event["run_id"] != run, page
        assert pull_file(config) == {BOT: 1}
    finally:
        node.stop()
    assert [e["action"] for e in chain(migrated_sqlite, BOT)] == [
        "bot_control:pause",
        "bot_control:clear_halt",
        "bot_control:resume",
    ]
    assert verify_cli(config) == 0


def test_a_clear_halt_on_a_signed_decision_is_audited_with_who_decided(
    gateway: Gateway, tmp_path: Path, migrated_sqlite: str
) -> None:
    """A loss-limit halt cleared on the reconciler's signed decision: the journaled clear_halt names the decision it
    acted on (carried on the node's loop, recorded on the server's thread), and its audit entry says who asked for it
    and who approved it beside the token that sent the command."""
    write_secret(tmp_path / "token", TOKEN)
    port = free_port()
    config = reconciler_config(tmp_path, migrated_sqlite, BOT, f"http://127.0.0.1:{port}", TOKEN)
    node = serving(gateway, tmp_path, port, database_url=migrated_sqlite, decision_keys=[TRUSTED])
    try:
        assert control(node.url, "halt", reason="risk limit daily_loss: loss 1200.00 >= 1000.00")[0] == 200
        assert control(node.url, "clear_halt")[0] == 403  # no decision: refused, journaled
        status, answer = control(node.url, "clear_halt", **clear_halt(BOT))
        assert status == 200 and answer["decision"], answer
        status, page = control(node.url, "control_events")
        events = page["events"]
        assert [(e["command"], e["outcome"]) for e in events] == [
            ("halt", "ok"),
            ("clear_halt", "refused 403"),
            ("clear_halt", "ok"),
        ], events
        decided = events[2]["decision"]
        assert decided["id"] == answer["decision"] and decided["kind"] == CLEAR_HALT, decided
        assert (decided["requested_by"], decided["approvers"]) == ("alice", ["bob"]), decided
        assert "decision" not in events[1]
        assert pull_file(config) == {BOT: 3}
    finally:
        node.stop()
    last = chain(migrated_sqlite, BOT)[-1]
    assert last["action"] == "bot_control:clear_halt" and last["after"] == {"state": "paused", "outcome": "ok"}
    assert last["decision"] == f"decision:{answer['decision']}", last
    assert "requested by alice, approved by bob" in last["comment"], last
    assert verify_cli(config) == 0


def test_without_a_database_the_journal_is_a_file_in_the_data_dir_that_a_restart_keeps(
    gateway: Gateway, tmp_path: Path
) -> None:
    """No database_url: the controller journals into control-journal.db in its data dir's folder for the trader,
    migrated by itself; a node started again on that data dir answers the commands of the one before."""
    write_secret(tmp_path / "token", TOKEN)
    port = free_port()
    node = serving(gateway, tmp_path, port, data_dir=str(tmp_path / "controller"))
    try:
        assert control(node.url, "halt", reason="by hand")[0] == 200
    finally:
        node.stop()
    assert (tmp_path / "controller" / TRADER / JOURNAL_FILE).is_file()
    node = serving(gateway, tmp_path, port, data_dir=str(tmp_path / "controller"))
    try:
        status, page = control(node.url, "control_events")
        assert status == 200 and [(e["command"], e["after"]) for e in page["events"]] == [("halt", "halted")], page
    finally:
        node.stop()


def test_a_database_not_migrated_refuses_the_controller_in_one_line(tmp_path: Path) -> None:
    config = TradingOpsControllerConfig(database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(ValueError, match="trading-ops db upgrade") as raised:
        journal_engine(config, TRADER)
    assert len(str(raised.value).splitlines()) == 1
    both = TradingOpsControllerConfig(database_url="sqlite://", database_url_file=str(tmp_path / "url"))
    with pytest.raises(ValueError, match="only one of database_url and database_url_file"):
        journal_engine(both, TRADER)
