"""The paper bot's full /metrics: a golden file of its families, types, help and label names, and a
`promtool check metrics` lint of the real output (needs the promtool binary from Debian's prometheus)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.paper_helpers import TOKEN, control, fast_config, get, wait_for
from trading_ops.paper.bot import PaperBot

GOLDEN = Path(__file__).parent / "golden" / "paper_bot_metrics.txt"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? ")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="')
# Families whose samples exist only in some moments (an order between submit and ack, a folded label value,
# a failing collector): the golden keeps their HELP and TYPE, not their samples.
CONDITIONAL = ("tradingbot_oldest_order_in_flight", "tradingbot_label_values_folded", "tradingbot_collector_errors")


def schema(exposition: str) -> str:
    """HELP and TYPE lines as they are; each sample reduced to its name and label names (values vary)."""
    lines: list[str] = []
    seen: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("#"):
            lines.append(line)
            continue
        match = SAMPLE.match(line)
        assert match, f"unparsable sample line: {line!r}"
        if match.group(1).startswith(CONDITIONAL):
            continue
        labels = sorted(set(LABEL.findall(match.group(3) or "")) - {"le", "quantile"})
        key = f"  {match.group(1)}{{{','.join(labels)}}}"
        if key not in seen:
            seen.add(key)
            lines.append(key)
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: install Debian's 'prometheus' package (make test does)")
    return path


async def test_full_metrics_match_golden_and_pass_promtool(tmp_path, promtool) -> None:
    bot = PaperBot(fast_config(tmp_path, reject_probability=0.3), token=TOKEN, registry=CollectorRegistry(), chaos=True)
    port = await bot.start("127.0.0.1", 0)
    try:
        # Exercise every family: fills, rejects, cancels, a lost connection, a refused control call.
        await wait_for(lambda: bot.metrics._fills and bot.metrics._canceled and bot.metrics._rejected, 20)
        await control(port, "drop_connection")
        await control(port, "reconnect")
        await control(port, "reconnect", headers={"Authorization": "Bearer wrong"})
        status, text = await get(port, "/metrics")
    finally:
        await bot.stop()
    assert status == 200
    raw = tmp_path / "metrics.txt"
    raw.write_text(text)
    lint = subprocess.run(
        [promtool, "check", "metrics"], check=False, input=text, capture_output=True, text=True, timeout=60
    )
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint.stdout + lint.stderr
    current = schema(text)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(current)
    assert GOLDEN.exists(), "no golden file yet: run with UPDATE_GOLDEN=1"
    assert current == GOLDEN.read_text(), "the /metrics schema changed; review and regenerate with UPDATE_GOLDEN=1"
