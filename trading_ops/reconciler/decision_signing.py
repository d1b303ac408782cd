"""The reconciler's side of a signed decision: a `bot` step that widens a bot's risk (ramp_promote, clear_halt) sends
a decision built from the approval its run spent (who asked, who approved, the count rule) and signed with
reconciler.decision_key; the bot verifies it (trading_ops.decisions)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from trading_ops.config import Config
from trading_ops.decisions import CLEAR_HALT, RAMP_PROMOTE, config_signer
from trading_ops.durations import parse_duration
from trading_ops.reconciler.actions.base import Refused

if TYPE_CHECKING:
    from trading_ops.reconciler.actions.base import ActionContext

# The bot commands that widen risk, and the kind of decision each carries.
COMMAND_KINDS = {"ramp_promote": RAMP_PROMOTE, "clear_halt": CLEAR_HALT}
# How many principals other than the requester approve, unless the approval row says (its `required`).
REQUIRED_DEFAULT = 1
KEY = "reconciler.decision_key"


def approvers_of(row: dict[str, Any]) -> list[str]:
    """Who approved: the principals of the approval's decisions (`decision_list`), else its `approvers`, else the
    principal (or, before principals, the name) that decided it."""
    decisions = row.get("decision_list")
    if isinstance(decisions, list) and decisions:
        return [str(d["principal"]) for d in decisions if d.get("decision") == "approve" and d.get("principal")]
    value = row.get("approvers")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = [value]
    if isinstance(value, list) and value:
        return [str(v) for v in value if v]
    decided = row.get("decided_token") or row.get("decided_by")
    return [str(decided)] if decided else []


def requester_of(row: dict[str, Any], labels: dict[str, str]) -> str:
    """Who asked: the approval's recorded requester (a person's request through the reconciler), else the request's
    own requester (the `requested_by` label of a request posted to Alertmanager: `clear-halt`), else the approval's
    asker (the reconciler)."""
    return str(row.get("requester") or labels.get("requested_by") or row.get("requested_by") or "")


def required_of(row: dict[str, Any]) -> int:
    value = row.get("required")
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else REQUIRED_DEFAULT


def bot_name(config: Config, instance: str, labels: dict[str, str]) -> str:
    """The name of the bot at `instance` (bots[].name), else the alert's `bot` label (the bot checks its own name)."""
    for entry in config.bots:
        if entry.instance == instance:
            return entry.name
    if labels.get("bot"):
        return labels["bot"]
    raise Refused(f"no bots[] entry for instance {instance!r}: a decision names the bot it is for")


def sign_for(ctx: ActionContext, command: str, instance: str, body: dict[str, Any]) -> str:
    """The signed decision a `command` step that widens risk sends to bot `instance`; Refused (the step does not run)
    without an approval spent for it or a key to sign with."""
    kind = COMMAND_KINDS[command]
    row = ctx.approval
    if row is None:
        raise Refused(f"{command} widens the bot's risk: its rule must ask a person's approval (approval: required)")
    key = config_signer(ctx.config)
    if key is None:
        raise Refused(f"{command}: no key to sign the decision with ({KEY}_file)")
    stage = str(body.get("stage", "")) if kind == RAMP_PROMOTE else ""
    try:
        _, token = key.issue(
            kind,
            bot_name(ctx.config, instance, ctx.labels),
            requested_by=requester_of(row, ctx.labels),
            approvers=approvers_of(row),
            required=required_of(row),
            ttl_seconds=parse_duration(ctx.config.reconciler.decision_ttl),
            stage=stage,
        )
    except ValueError as exc:
        raise Refused(f"{command}: approval {row.get('id')} makes no decision: {exc}") from None
    return token
