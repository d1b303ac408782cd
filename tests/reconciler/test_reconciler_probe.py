"""benchmarks/probe_hostile.py's probes, in-process: every bad input gets its 4xx (never a 5xx) and the ledger is
right afterwards, on a reconciler and a bot control API served on loopback ports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import BOT_TOKEN, READ_TOKEN, TOKEN, make_config, write_playbook
from prometheus_client import CollectorRegistry

from benchmarks.probe_hostile import PROBE_PLAYBOOK, Target, probes, run_probes
from trading_ops.bot.instrumentation import Instrumentation
from trading_ops.bot.server import MAX_CONTROL_BODY_BYTES
from trading_ops.reconciler.app import create_app

MAX_BODY_BYTES = 64 * 1024  # small, so the oversized probes stay quick


async def test_every_hostile_probe_gets_its_4xx_and_the_ledger_stays_right(
    aiohttp_server: Any, tmp_path: Path, migrated_sqlite: str
) -> None:
    (tmp_path / "bot").mkdir()
    bot = Instrumentation(
        venue="paper", token=BOT_TOKEN, registry=CollectorRegistry(), data_dir=tmp_path / "bot", heartbeat_timeout=5
    )
    bot_server = await aiohttp_server(bot.create_app())
    bot_url = str(bot_server.make_url("")).rstrip("/")
    config = make_config(
        tmp_path,
        migrated_sqlite,
        playbook=str(write_playbook(tmp_path, PROBE_PLAYBOOK["rules"])),
        max_body_bytes=MAX_BODY_BYTES,
        targets={"probe-bot": {"url": bot_url, "token_file": str(tmp_path / "bot-token")}},
    )
    reconciler = await aiohttp_server(create_app(config))
    target = Target(
        reconciler=str(reconciler.make_url("")).rstrip("/"),
        bot=bot_url,
        webhook_token=TOKEN,
        read_token=READ_TOKEN,
        control_token=BOT_TOKEN,
        max_body_bytes=MAX_BODY_BYTES,
        bot_max_body_bytes=MAX_CONTROL_BODY_BYTES,
        sentinel_dir=tmp_path,
    )
    report = await run_probes(target)
    assert report["server_errors"] == [] and report["failed"] == [], report
    assert len(report["probes"]) == len(probes(target)) + 2  # every probe ran, and both counters were checked
    statuses = {p["probe"]: p["status"] for p in report["probes"]}
    assert statuses["non_ascii_token_latin1"] == 401 and statuses["control_non_ascii_token_not_utf8"] == 401
    assert statuses["absurd_starts_at_beside_a_valid_alert"] == 200 and statuses["episode_id_past_64_bits"] == 404
