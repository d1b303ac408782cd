"""The reconciler's pull of control commands journaled at a bot (trading_ops.reconciler.control_audit), run as the
reconciler runs it, for the tests of the control planes of bots we don't write (the freqtrade sidecar, the
NautilusTrader controller): its configuration with one bot, one pull, the chain's entries for that bot."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from reconciler_server import READ_TOKEN, TOKEN
from secret_file import write_secret

from trading_ops import audit
from trading_ops.cli import main
from trading_ops.config import Config, load_config
from trading_ops.db.base import make_engine
from trading_ops.reconciler.control_audit import ControlAudit
from trading_ops.reconciler.ledger import Ledger


def reconciler_config(tmp_path: Path, db_url: str, name: str, url: str, token: str) -> Path:
    """A reconciler's configuration file whose one bot `name` serves its control API at `url`, asked with `token` (the
    reconciler's target token); the pull driven by the test (interval 0)."""
    write_secret(tmp_path / "webhook-token", TOKEN)
    write_secret(tmp_path / "read-token", READ_TOKEN)
    write_secret(tmp_path / "target-token", token)
    (tmp_path / "playbook.yml").write_text(yaml.safe_dump({"version": 1, "rules": []}))
    rc = {
        "token_file": "webhook-token",
        "read_token_file": "read-token",
        "playbook": "playbook.yml",
        "check_silences": False,
        "prometheus_url": "http://127.0.0.1:9",
        "alertmanager_url": "http://127.0.0.1:9",
        "watchdog": {"window_seconds": 0},
        "control_audit_interval_seconds": 0,
    }
    bot = {"name": name, "instance": url.removeprefix("http://"), "url": url, "token_file": "target-token"}
    path = tmp_path / "reconciler.yaml"
    path.write_text(yaml.safe_dump({"database": {"url": db_url}, "reconciler": rc, "bots": [bot]}))
    return path


async def pull(config: Config) -> dict[str, int]:
    """One pull of every target into the chain of `config`'s database, by the reconciler's own code: entries appended
    per bot."""
    engine = make_engine(config.database_url())
    try:
        async with aiohttp.ClientSession() as session:
            return await ControlAudit(config, Ledger(engine), session).pull()
    finally:
        engine.dispose()


def pull_file(path: Path) -> dict[str, int]:
    """`pull` of the configuration file at `path`, from synchronous code."""
    return asyncio.run(pull(load_config(str(path))))


def chain(db_url: str, bot: str) -> list[dict[str, Any]]:
    """The chain's entries for `bot`, oldest first: action, principal, source, before, after, decision, comment."""
    engine = make_engine(db_url)
    try:
        rows = audit.entries(engine, target=bot, limit=500)
        return [
            {
                "action": e.action,
                "principal": e.principal,
                "source": e.source,
                "before": e.before,
                "after": e.after,
                "decision": e.decision,
                "comment": e.comment,
            }
            for e in reversed(rows)
        ]
    finally:
        engine.dispose()


def verify_cli(path: Path) -> int:
    """`trading-ops audit verify` on the configuration at `path`: its exit status."""
    return main(["-c", str(path), "audit", "verify"])
