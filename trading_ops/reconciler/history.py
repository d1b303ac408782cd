"""Render the ledger's episodes for operators: a table, or JSON for machines."""

from __future__ import annotations

import json
from typing import Any

from trading_ops.reconciler.ledger import episode_json

COLUMNS = ("ID", "STATE", "ALERT", "TARGET", "RULE", "STARTS AT", "ATTEMPTS", "DETAIL")
DETAIL_WIDTH = 60


def history_json(episodes: list[dict[str, Any]]) -> str:
    return json.dumps({"episodes": [episode_json(e) for e in episodes]}, indent=2)


def history_table(episodes: list[dict[str, Any]]) -> str:
    rows = [COLUMNS]
    for e in episodes:
        attempts = e.get("attempt_list", [])
        outcomes = ",".join(a["outcome"] for a in attempts) or "-"
        detail = (e["detail"] or "").replace("\n", " ")
        rows.append(
            (
                str(e["id"]),
                e["state"],
                e["alertname"],
                e["target"],
                e["rule"] or "-",
                e["starts_at"].strftime("%Y-%m-%d %H:%M:%S"),
                outcomes,
                detail if len(detail) <= DETAIL_WIDTH else detail[: DETAIL_WIDTH - 3] + "...",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    if len(rows) == 1:
        lines.append("(no episodes)")
    return "\n".join(lines)
