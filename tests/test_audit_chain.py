"""The audit chain (trading_ops.audit) on the real databases (SQLite and the shared PostgreSQL): appended entries
chain, concurrent appenders from separate engines never fork it, `trading-ops audit verify` names an edited and a
deleted entry (exit 1) and passes a whole chain (exit 0), and a backup restored keeps the chain whole."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from ports import free_port
from sqlalchemy import delete, select, update

from trading_ops import audit
from trading_ops.cli import main
from trading_ops.config import parse_config
from trading_ops.db import migrate
from trading_ops.db.base import make_engine
from trading_ops.db.models import Audit


@pytest.fixture
def url(database_url: str) -> str:
    migrate.upgrade(database_url)
    return database_url


def write_config(tmp_path: Path, url: str) -> str:
    path = tmp_path / "trading-ops.yaml"
    path.write_text(json.dumps({"database": {"url": url}}))
    return str(path)


def fill(url: str, n: int) -> list[audit.Entry]:
    engine = make_engine(url)
    try:
        return [
            audit.append(
                engine,
                principal=f"person-{i % 3}",
                source="127.0.0.1",
                action="approve",
                target="paper-1",
                before={"status": "pending"},
                after={"status": "approved", "n": i},
                decision=f"approval:{i}",
                comment="as alice" if i % 2 else "",
            )
            for i in range(n)
        ]
    finally:
        engine.dispose()


def test_entries_chain_and_list_newest_first(url: str) -> None:
    made = fill(url, 5)
    assert [e.seq for e in made] == [1, 2, 3, 4, 5]
    assert made[0].prev_hash == audit.GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(made, made[1:], strict=False))
    engine = make_engine(url)
    try:
        listed = audit.entries(engine, limit=3)
        assert [e.seq for e in listed] == [5, 4, 3]
        assert listed[0].to_dict() == made[4].to_dict()
        assert [e.seq for e in audit.entries(engine, principal="person-1")] == [5, 2]
        assert [e.seq for e in audit.entries(engine, before_seq=3)] == [2, 1]
        assert audit.head(engine) == (5, made[4].hash)
        verdict = audit.verify(engine)
        assert verdict.whole and verdict.checked == 5 and verdict.head_hash == made[4].hash
    finally:
        engine.dispose()


def test_an_entry_appended_in_a_rolled_back_transaction_is_not_kept(url: str) -> None:
    engine = make_engine(url)
    try:
        with pytest.raises(RuntimeError), engine.connect() as conn:
            conn.info["immediate"] = True
            with conn.begin():
                audit.append(conn, principal="p", source="s", action="a", target="t", before=None, after=1)
                raise RuntimeError("the change it recorded failed")
        assert audit.head(engine) == (0, audit.GENESIS)
        assert audit.append(engine, principal="p", source="s", action="a", target="t", before=None, after=2).seq == 1
        assert audit.verify(engine).whole
    finally:
        engine.dispose()


def test_concurrent_appenders_never_fork_the_chain(url: str) -> None:
    """Four appenders, each with its own engine (as two reconciler replicas), 25 entries each, at once."""
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def appender(k: int) -> None:
        engine = make_engine(url)
        try:
            start.wait()
            for i in range(25):
                audit.append(engine, principal=f"replica-{k}", source="s", action="a", target="t", before=i, after=k)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=appender, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            seqs = list(conn.execute(select(Audit.seq).order_by(Audit.seq)).scalars())
        assert seqs == list(range(1, 101))
        verdict = audit.verify(engine)
        assert verdict.whole and verdict.checked == 100
    finally:
        engine.dispose()


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_verify_names_an_edited_and_a_deleted_entry(url: str, tmp_path: Path, capsys: Any) -> None:
    fill(url, 6)
    config = write_config(tmp_path, url)
    status, out, err = run(["-c", config, "audit", "verify"], capsys)
    assert status == 0 and out.startswith("audit chain whole: 6 entries, head 6 "), (out, err)
    engine = make_engine(url)
    try:
        # Edited: the principal of entry 3 rewritten.
        with engine.begin() as conn:
            conn.execute(update(Audit).where(Audit.seq == 3).values(principal="mallory"))
        status, out, err = run(["-c", config, "audit", "verify"], capsys)
        assert (status, out) == (1, "")
        assert err.strip() == "trading-ops: audit verify: entry 3 edited: its content no longer gives its hash"
        # Edited with its own hash made to match: the next entry no longer follows it.
        with engine.begin() as conn:
            row = conn.execute(select(Audit.__table__).where(Audit.seq == 3)).one()
            fields = {name: getattr(row, name) for name in audit.HASHED}
            conn.execute(update(Audit).where(Audit.seq == 3).values(hash=audit.entry_hash(row.prev_hash, fields)))
        status, out, _ = run(["-c", config, "audit", "verify", "--json"], capsys)
        answer = json.loads(out)
        assert status == 1 and answer["whole"] is False and answer["seq"] == 3
        assert answer["problem"] == "entry 3 edited or replaced: entry 4 follows a hash it no longer has"
        # Put back: whole again.
        with engine.begin() as conn:
            conn.execute(update(Audit).where(Audit.seq == 3).values(principal="person-2"))
            row = conn.execute(select(Audit.__table__).where(Audit.seq == 3)).one()
            fields = {name: getattr(row, name) for name in audit.HASHED}
            conn.execute(update(Audit).where(Audit.seq == 3).values(hash=audit.entry_hash(row.prev_hash, fields)))
        assert run(["-c", config, "audit", "verify"], capsys)[0] == 0
        # Deleted: entry 4 in the middle, then the last one.
        with engine.begin() as conn:
            values = dict(conn.execute(select(Audit.__table__).where(Audit.seq == 4)).one()._mapping)
            conn.execute(delete(Audit).where(Audit.seq == 4))
        status, _, err = run(["-c", config, "audit", "verify"], capsys)
        assert status == 1
        assert err.strip() == "trading-ops: audit verify: entry 4 deleted: entry 5 follows entry 3"
        with engine.begin() as conn:
            conn.execute(Audit.__table__.insert().values(**values))
            conn.execute(delete(Audit).where(Audit.seq == 6))
        status, _, err = run(["-c", config, "audit", "verify"], capsys)
        assert status == 1
        assert err.strip() == "trading-ops: audit verify: entry 6 deleted: the chain ends at 5, its head at 6"
    finally:
        engine.dispose()


def test_audit_lists_entries_as_text_and_json(url: str, tmp_path: Path, capsys: Any) -> None:
    config = write_config(tmp_path, url)
    status, out, _ = run(["-c", config, "audit"], capsys)
    assert (status, out) == (0, "no audit entries\n")
    fill(url, 3)
    status, out, _ = run(["-c", config, "audit", "--limit", "2"], capsys)
    lines = out.splitlines()
    assert status == 0 and len(lines) == 2
    assert lines[0].startswith("3  ") and "person-2 from 127.0.0.1  approve paper-1 (approval:2)" in lines[0]
    assert 'n null -> 2, status "pending" -> "approved"' in lines[0]
    status, out, _ = run(["-c", config, "audit", "--json", "--principal", "person-0"], capsys)
    answer = json.loads(out)
    assert status == 0 and [e["seq"] for e in answer["entries"]] == [1]
    assert answer["entries"][0]["after"] == {"status": "approved", "n": 0} and answer["head"]["seq"] == 3
    with pytest.raises(SystemExit) as exited:
        main(["-c", config, "audit", "--limit", "0"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "trading-ops audit: argument --limit: must be 1 or more, not 0 (see trading-ops audit --help)\n"
    )


def test_audit_target_a_bot_finds_its_requests_and_its_approvals(url: str, tmp_path: Path, capsys: Any) -> None:
    """A request names the bot, its approval the alert's instance: `audit --target paper-1` (a bot of bots:) lists
    both, as docs/readiness.md's promotion says; any other target only itself."""
    engine = make_engine(url)
    try:
        for principal, action, target in (
            ("alice", "ramp_promotion_request", "paper-1"),
            ("bob", "approve", "127.0.0.1:9101"),
            ("carol", "approve", "127.0.0.1:9999"),
        ):
            audit.append(
                engine, principal=principal, source="-", action=action, target=target, before={}, after={},
                decision=None, comment="",
            )  # fmt: skip
    finally:
        engine.dispose()
    config = tmp_path / "trading-ops.yaml"
    bots = [{"name": "paper-1", "kind": "paper", "instance": "127.0.0.1:9101", "url": "http://127.0.0.1:9101"}]
    config.write_text(json.dumps({"database": {"url": url}, "bots": bots}))
    for target in ("paper-1", "127.0.0.1:9101"):
        status, out, _ = run(["-c", str(config), "audit", "--target", target], capsys)
        assert status == 0 and [line.split()[4] for line in out.splitlines()] == ["bob", "alice"], out
    status, out, _ = run(["-c", str(config), "audit", "--target", "127.0.0.1:9999"], capsys)
    assert [line.split()[4] for line in out.splitlines()] == ["carol"], out


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_a_backup_restored_keeps_the_chain_whole(dialect: str, tmp_path: Path, request: Any, capsys: Any) -> None:
    from trading_ops.ops.backup import restore_backup, run_backup

    url = str(request.getfixturevalue("sqlite_url" if dialect == "sqlite" else "postgres_url"))
    migrate.upgrade(url)
    made = fill(url, 20)
    config = parse_config(
        {
            "database": {"url": url},
            "backup": {"directory": str(tmp_path / "backups"), "remote": {"required": False}},
            "reconciler": {"listen": {"port": free_port()}},
        },
        base_dir=tmp_path,
    )
    manifest = run_backup(config).manifest
    fill(url, 5)  # after the backup: gone once it is restored
    restore_backup(config, manifest)
    engine = make_engine(url)
    try:
        verdict = audit.verify(engine)
        assert verdict.whole, verdict.problem
        assert (verdict.checked, verdict.head_seq, verdict.head_hash) == (20, 20, made[-1].hash)
        # The chain goes on from the restored head.
        nxt = audit.append(engine, principal="p", source="s", action="a", target="t", before=None, after=None)
        assert (nxt.seq, nxt.prev_hash) == (21, made[-1].hash)
        assert audit.verify(engine).whole
    finally:
        engine.dispose()
