"""tests/reconciler/hostile_probe.py as it is run: its own live stack (paper bot, reconciler, a real Prometheus and
Alertmanager: the `prometheus` and `prometheus-alertmanager` binaries) on SQLite and on PostgreSQL; every hostile
input gets its 4xx (never a 5xx), every trust probe leaves the ledger right, every refusal is counted by reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hostile_probe import shipped_max_alerts
from system_binaries import alertmanager_binary, prometheus_binary

REPO_ROOT = Path(__file__).resolve().parents[2]
PROBE = REPO_ROOT / "tests" / "reconciler" / "hostile_probe.py"
# What the issue asked the probe to cover beyond the input bullets (each is a probe of its own).
TRUST_PROBES = (
    "alertmanager_silence_with_a_backtracking_regex",
    "http_step_label_chooses_no_host",
    "http_step_follows_no_redirect",
    "verification_with_a_hostile_generator_url",
    "circuit_already_open",
    f"max_alerts_group_of_{shipped_max_alerts()}",
    "counted_unauthorized",
    "counted_too_large",
    "counted_invalid_json",
    "counted_invalid_payload",
    "counted_alerts_invalid",
    "counted_bot_unauthorized",
)

pytestmark = [pytest.mark.prometheus, pytest.mark.alertmanager, pytest.mark.slow]


def test_every_hostile_probe_gets_its_4xx_and_the_ledger_stays_right(database_url: str) -> None:
    # A missing server fails here, named with its package, not as the probe's one-line error.
    prometheus_binary()
    alertmanager_binary()
    done = subprocess.run(
        [sys.executable, str(PROBE), "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    lines = [json.loads(line) for line in done.stdout.splitlines()]  # one JSON object per line, nothing else
    *probes, summary = lines
    assert done.returncode == 0 and summary["ok"], done.stdout + done.stderr[-3000:]
    assert summary["summary"]["database"] == database_url.split(":", 1)[0].split("+", 1)[0]
    assert summary["summary"]["server_errors"] == [] and summary["summary"]["failed"] == []
    assert [p for p in probes if not p["ok"]] == []
    statuses = {p["probe"]: p["status"] for p in probes}
    assert set(TRUST_PROBES) <= set(statuses), sorted(statuses)
    # The input bullets, as they answered.
    assert statuses["non_ascii_token_latin1"] == 401 and statuses["control_non_ascii_token_not_utf8"] == 401
    assert statuses["absurd_starts_at_beside_a_valid_alert"] == 200 and statuses["episode_id_past_64_bits"] == 404
    assert statuses["episodes_state_nul"] == 400 and statuses["oversized_body_chunked"] == 413
    assert all(p["status"] is None or p["status"] < 500 for p in probes)
