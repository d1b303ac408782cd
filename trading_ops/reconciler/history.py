"""Render the ledger's episodes for operators: a table with attempts and steps, or JSON as the API gives it."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from trading_ops.reconciler.ledger import episode_json

COLUMNS = ("ID", "STATE", "ALERT", "TARGET", "RULE", "STARTS AT", "ATTEMPTS", "DETAIL")
DETAIL_WIDTH = 60
# A step's output under its row: the first line of it, this long at most.
OUTPUT_WIDTH = 80
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def history_json(episodes: list[dict[str, Any]]) -> str:
    """Exactly what GET /api/v1/episodes answers for the same episodes."""
    return json.dumps({"episodes": [episode_json(e) for e in episodes]}, indent=2)


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _duration(started: datetime | None, finished: datetime | None) -> str:
    if started is None:
        return "-"
    if finished is None:
        return "running"
    seconds = (finished - started).total_seconds()
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"


def _first_line(text: str) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return ""
    more = f" (+{len(lines) - 1} lines)" if len(lines) > 1 else ""
    return _cut(lines[0], OUTPUT_WIDTH - len(more)) + more


def history_table(episodes: list[dict[str, Any]], steps: bool = True) -> str:
    """One row per episode; with `steps`, each attempt and each of its steps indented beneath it, with timings
    (start, duration) and the first line of the step's truncated output."""
    rows = [COLUMNS]
    for e in episodes:
        attempts = e.get("attempt_list", [])
        rows.append(
            (
                str(e["id"]),
                e["state"],
                e["alertname"],
                e["target"],
                e["rule"] or "-",
                e["starts_at"].strftime(TIME_FORMAT),
                ",".join(a["outcome"] for a in attempts) or "-",
                _cut(e["detail"] or "", DETAIL_WIDTH),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()

    lines = [line(rows[0])]
    for e, row in zip(episodes, rows[1:], strict=True):
        lines.append(line(row))
        if not steps:
            continue
        for a in e.get("attempt_list", []):
            started = a["started_at"].strftime(TIME_FORMAT) if a["started_at"] else "-"
            took = _duration(a["started_at"], a["finished_at"])
            detail = f"  {_cut(a['detail'], DETAIL_WIDTH)}" if a["detail"] else ""
            lines.append(f"    attempt {a['number']}  {a['outcome']}  {started}  {took}  by {a['owner']}{detail}")
            for s in a.get("steps", []):
                took = _duration(s["started_at"], s["finished_at"])
                lines.append(f"      {s['position'] + 1}. {s['description']}  [{s['risk']}]  {s['outcome']}  {took}")
                output = _first_line(s["output"])
                if output:
                    lines.append(f"         {output}")
    if len(rows) == 1:
        lines.append("(no episodes)")
    return "\n".join(lines)
