"""`trading-ops reconciler circuits` and `circuits reset TARGET` on the real ledger (SQLite and PostgreSQL): the
circuit lives in the database, so the reset closes it for every replica, restarts its action budget, and is
recorded in the ledger's audit under the person's token that asked through the reconciler's API."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from reconciler_server import make_config
from secret_file import write_secret
from sqlalchemy import insert, select

from trading_ops import audit as audit_chain
from trading_ops.cli import main
from trading_ops.db import migrate
from trading_ops.db.base import make_engine, utcnow
from trading_ops.db.models import Attempt, AuditEntry, Episode, Step
from trading_ops.reconciler.app import create_app
from trading_ops.reconciler.ledger import GLOBAL_TARGET, Ledger

TARGET = "paper-bot:9101"


@pytest.fixture
def ledger(database_url: str) -> Any:
    migrate.upgrade(database_url)
    ledger = Ledger(make_engine(database_url))
    yield ledger
    ledger.engine.dispose()


def spend_budget(ledger: Ledger, target: str, actions: int) -> None:
    """`actions` budgeted steps on `target` in the last minutes, as the engine records them."""
    now = utcnow()
    with ledger.tx() as conn:
        episode = conn.execute(
            insert(Episode)
            .values(
                fingerprint="f" * 16,
                starts_at=now,
                alertname="TradingBotDown",
                target=target,
                rule="restart",
                labels="{}",
                annotations="{}",
                state="escalated",
            )
            .returning(Episode.id)
        ).scalar_one()
        attempt = conn.execute(
            insert(Attempt).values(episode_id=episode, number=1, owner="r1", outcome="failure").returning(Attempt.id)
        ).scalar_one()
        for i in range(actions):
            conn.execute(
                insert(Step).values(
                    attempt_id=attempt,
                    position=i,
                    action="systemd",
                    description="restart",
                    risk="disruptive",
                    target=target,
                    started_at=now - timedelta(minutes=5),
                    outcome="failure",
                )
            )


def write_config(tmp_path: Path, url: str) -> str:
    path = tmp_path / "trading-ops.yaml"
    path.write_text(f"database:\n  url: {url}\nreconciler:\n  budgets:\n    max_actions_per_target_per_hour: 3\n")
    return str(path)


@pytest.fixture
async def reset(ledger: Ledger, database_url: str, tmp_path: Path, aiohttp_client: Any) -> Any:
    """`trading-ops reconciler circuits reset TARGET` as `oncall` runs it: their own token (scope operate), through the
    API of a reconciler on the test's database (in a thread: the reconciler answers on this event loop)."""
    write_secret(tmp_path / "oncall-token", "oncall-secret-token")
    tokens = [{"name": "oncall", "scope": "operate", "token_file": str(tmp_path / "oncall-token")}]
    client = await aiohttp_client(create_app(make_config(tmp_path, database_url, api_tokens=tokens)))
    config = write_config(tmp_path, database_url)
    given = ("--token-file", str(tmp_path / "oncall-token"), "--url", str(client.make_url("")).rstrip("/"))

    async def run(target: str) -> int:
        return int(
            await asyncio.to_thread(main, ["--config", config, "reconciler", "circuits", "reset", target, *given])
        )

    return run


async def test_list_and_reset_a_circuit(
    ledger: Ledger, database_url: str, tmp_path: Path, capsys: Any, reset: Any
) -> None:
    config = write_config(tmp_path, database_url)
    spend_budget(ledger, TARGET, 3)
    until = utcnow() + timedelta(minutes=30)
    assert ledger.open_circuit(TARGET, until)
    capsys.readouterr()
    assert main(["--config", config, "reconciler", "circuits"]) == 0
    out = capsys.readouterr().out
    assert f"{TARGET}: open until {until:%Y-%m-%d %H:%M:%S} UTC (3 of 3 actions in the last hour)" in out
    assert main(["--config", config, "reconciler", "circuits", "--json"]) == 0
    assert '"actions_last_hour": 3' in capsys.readouterr().out

    assert await reset(TARGET) == 0
    assert f"circuit of {TARGET} closed" in capsys.readouterr().out
    now = utcnow()
    # Closed for every replica (the engine reads it from the ledger), and its budget counts from the reset: the
    # next alert is acted on instead of opening the circuit again at once.
    assert ledger.circuit_open_until(TARGET, now) is None
    assert ledger.snapshot(now).open_circuits == []
    assert ledger.actions_last_hour(now, TARGET) == 0
    assert ledger.actions_last_hour(now) == 3  # the global budget was not reset
    with ledger.engine.connect() as conn:
        audit = conn.execute(select(AuditEntry)).mappings().all()
    assert len(audit) == 1
    assert audit[0]["action"] == "circuit_reset" and audit[0]["target"] == TARGET
    assert audit[0]["actor"] == "token 'oncall' from 127.0.0.1" and until.isoformat()[:19] in audit[0]["detail"]
    # The audit chain names the person's token, never the host the command ran on.
    ((principal, source),) = [(e.principal, e.source) for e in audit_chain.entries(ledger.engine)]
    assert (principal, source) == ("oncall", "127.0.0.1")
    assert main(["--config", config, "reconciler", "circuits"]) == 0
    assert capsys.readouterr().out.strip() == "no open circuits"


async def test_reset_of_the_global_circuit(ledger: Ledger, reset: Any) -> None:
    spend_budget(ledger, TARGET, 2)
    assert ledger.open_circuit(GLOBAL_TARGET, utcnow() + timedelta(minutes=5))
    assert await reset("*") == 0
    assert ledger.actions_last_hour(utcnow()) == 0
    assert ledger.actions_last_hour(utcnow(), TARGET) == 2


async def test_reset_errors_are_one_line_and_change_nothing(ledger: Ledger, capsys: Any, reset: Any) -> None:
    capsys.readouterr()
    assert await reset("nobody:1") == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trading-ops:")]
    assert err == ["trading-ops: circuits reset: no open circuit for 'nobody:1'"]
    assert await reset("bad\x1bname") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not a target name" in err
    with ledger.engine.connect() as conn:
        assert conn.execute(select(AuditEntry)).all() == []
