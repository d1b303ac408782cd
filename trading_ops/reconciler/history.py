"""Render the ledger's episodes for operators: a table with attempts and steps, or JSON as the API gives it."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from trading_ops.reconciler.approvals import attribution, was_decided
from trading_ops.reconciler.ledger import OPERATOR_OUTCOMES, episode_json

COLUMNS = ("ID", "STATE", "ALERT", "TARGET", "RULE", "STARTS AT", "ATTEMPTS", "DETAIL")
DETAIL_WIDTH = 80
# A timestamp in a detail ("cooldown ... until 2026-11-23 01:16:42.123456+00:00"): the table shows its time of day.
TIMESTAMP_RE = re.compile(r"\d{4}-\d{2}-\d{2}[ T](\d{2}:\d{2}:\d{2})(?:\.\d+)?(?:[+-]\d{2}:\d{2}|Z)?")
# A step's output under its row: the first line of it, this long at most.
OUTPUT_WIDTH = 80
# With several lines, the first (`exit 1`, `HTTP 502 ...`) gets this much of it and the last line the rest.
OUTPUT_HEAD_WIDTH = 40
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def history_json(episodes: list[dict[str, Any]]) -> str:
    """Exactly what GET /api/v1/episodes answers for the same episodes."""
    return json.dumps({"episodes": [episode_json(e) for e in episodes]}, indent=2)


def _cut(text: str, width: int) -> str:
    text = " ".join(TIMESTAMP_RE.sub(r"\1", text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _duration(started: datetime | None, finished: datetime | None) -> str:
    if started is None:
        return "-"
    if finished is None:
        return "running"
    seconds = (finished - started).total_seconds()
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"


def _first_line(text: str) -> str:
    """A step's output in one line: its first line (`exit 1`) and its last (usually the error that matters)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return ""
    if len(lines) == 1:
        return _cut(lines[0], OUTPUT_WIDTH)
    left = len(lines) - 2
    more = f" (+{left} line{'s' if left > 1 else ''})" if left > 0 else ""
    head = _cut(lines[0], OUTPUT_HEAD_WIDTH)
    return f"{head}: {_cut(lines[-1], OUTPUT_WIDTH - len(head) - 2 - len(more))}{more}"


def history_table(episodes: list[dict[str, Any]], steps: bool = True) -> str:
    """One row per episode; with `steps`, each attempt and each of its steps indented beneath it, with timings
    (start, duration) and the first line of the step's truncated output."""
    rows = [COLUMNS]
    for e in episodes:
        attempts = [a for a in e.get("attempt_list", []) if a["outcome"] not in OPERATOR_OUTCOMES]
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


def _when(value: datetime | None) -> str:
    return value.strftime(TIME_FORMAT) + " UTC" if value else "-"


def episode_view(e: dict[str, Any]) -> str:
    """One episode whole: its alert, every attempt with every step and its whole (stored) output, why it waited
    (the gates that parked it) and why it ended as it did."""
    labels = json.loads(e["labels"])
    annotations = json.loads(e["annotations"])
    out = [
        f"episode {e['id']}: {e['alertname']} on {e['target']}  state {e['state']}",
        f"  labels       {', '.join(f'{k}={v}' for k, v in sorted(labels.items()))}",
        f"  fingerprint  {e['fingerprint']}  starts at {_when(e['starts_at'])}  received {_when(e['received_at'])}",
        f"  rule         {e['rule'] or '- (no rule matched)'}",
    ]
    for key in ("summary", "description"):
        if annotations.get(key):
            out.append(f"  {key:<12} {' '.join(str(annotations[key]).split())}")
    if e["next_run_at"] and e["closed_at"] is None:
        out.append(f"  next run     {_when(e['next_run_at'])}")
    if e["resolved_at"]:
        out.append(f"  resolved     {_when(e['resolved_at'])}")
    if e["closed_at"]:
        out.append(f"  closed       {_when(e['closed_at'])}")
    attempts = e.get("attempt_list", [])
    waited = [a for a in attempts if a["outcome"] == "skipped"]
    if waited:
        out.append("  waited:")
        out.extend(f"    {_when(a['started_at'])}  {a['detail']}" for a in waited)
    humans = [a for a in attempts if a["outcome"] in OPERATOR_OUTCOMES]
    if humans:
        out.append("  operators:")
        out.extend(f"    {_when(a['started_at'])}  {a['outcome']} by {a['owner']}: {a['detail']}" for a in humans)
    ran = [a for a in attempts if a["outcome"] not in OPERATOR_OUTCOMES and a["outcome"] != "skipped"]
    out.append(f"  attempts ({len(ran)}):" if ran else "  attempts: none (nothing was executed)")
    for a in ran:
        out.extend(_attempt_lines(a))
    out.extend(_approval_lines(e.get("approval_list", [])))
    out.extend(_page_lines(e.get("escalation_list", [])))
    label = {
        "escalated": "why it escalated",
        "escalating": "why it escalates (its page is delivered nowhere yet)",
        "failed": "why it failed",
        "waiting": "why it waits",
    }
    out.append(f"  {label.get(e['state'], 'detail')}: {e['detail'] or '-'}")
    return "\n".join(out)


def _attempt_lines(a: dict[str, Any]) -> list[str]:
    """An attempt that ran, with its result and every step with its whole (stored) output."""
    took = _duration(a["started_at"], a["finished_at"])
    out = [f"    attempt {a['number']}  {a['outcome']}  {_when(a['started_at'])}  {took}  by {a['owner']}"]
    if a["detail"]:
        out.append(f"      result: {a['detail']}")
    for st in a.get("steps", []):
        took = _duration(st["started_at"], st["finished_at"])
        out.append(f"      {st['position'] + 1}. {st['description']}  [{st['risk']}]  {st['outcome']}  {took}")
        out.extend(f"         | {line}" for line in (st["output"] or "").splitlines() if line.strip())
    return out


def _approval_lines(approvals: list[dict[str, Any]]) -> list[str]:
    """The episode's approvals, oldest first: the step each asked for, and who decided what, when and why."""
    out = ["  approvals:"] if approvals else []
    for a in sorted(approvals, key=lambda row: row["id"]):
        asked = _when(a["requested_at"])
        line = f"    {a['id']}  {a['status']:<10} step {a['position'] + 1}: {a['step_name']}  asked {asked}"
        if was_decided(a):
            decision = "rejected" if a["status"] == "rejected" else "approved"
            who = attribution(a["decided_by"], a.get("decided_token"))
            line += f"; {decision} by {who} at {_when(a['decided_at'])}: {a['reason'] or '-'}"
        elif a["status"] == "pending":
            line += f"; waits until {_when(a['deadline'])}"
        elif a["decided_at"]:
            line += f"; {a['status']} at {_when(a['decided_at'])}"
        out.append(line)
    return out


def _page_lines(pages: list[dict[str, Any]]) -> list[str]:
    """The episode's pages in the escalation outbox: owed when, and whether Alertmanager (and apprise) took them."""
    out = ["  pages (escalation outbox):"] if pages else []
    for p in pages:
        took = f"taken by Alertmanager {_when(p['posted_at'])}" if p["posted_at"] else "not taken by Alertmanager yet"
        mailed = f", sent through apprise {_when(p['notified_at'])}" if p["notified_at"] else ""
        tries = f"{p['attempts']} failed post(s)"
        out.append(f"    {p['alertname']}  owed {_when(p['created_at'])}  {tries}  {took}{mailed}")
        if p["posted_at"] is None and p["last_error"]:
            out.append(f"      last error: {p['last_error']}")
    return out
