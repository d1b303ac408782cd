"""`notify`: send a message to the configured apprise URLs."""

from __future__ import annotations

from typing import Any

from trading_ops.reconciler.actions.base import TEMPLATE_RE, Action, ActionContext, Result


class NotifyAction(Action):
    kind = "notify"
    budgeted = False
    params = {"title": (str, False), "body": (str, False)}

    def checked_labels(self, params: dict[str, Any]) -> list[str]:
        return []  # a message is text for people: labels go in as they are, nothing is executed with them

    async def run(self, ctx: ActionContext, params: dict[str, Any], timeout: float) -> Result:
        # A message is text for people, not a command: labels are substituted as they are.
        def fill(text: str) -> str:
            return TEMPLATE_RE.sub(lambda m: ctx.labels.get(m.group(1), ""), text)

        title = fill(params.get("title", "[trading-ops] ${alertname} on ${instance}"))
        body = fill(params.get("body", ctx.annotations.get("description") or ctx.annotations.get("summary", "")))
        ok = await ctx.notifier.notify(title, body)
        return Result("success" if ok else "failure", "notified" if ok else "notification failed")


ACTION = NotifyAction()
