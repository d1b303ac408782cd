"""The action kinds a playbook step may use, registered in this one place."""

from trading_ops.reconciler.actions import (
    bot,
    docker,
    escalate,
    exec,
    http,
    live_start,
    notify,
    signal,
    silence,
    systemd,
    venue,
)
from trading_ops.reconciler.actions.base import Action

ACTIONS: dict[str, Action] = {
    m.ACTION.kind: m.ACTION
    for m in (bot, venue, http, exec, systemd, signal, docker, silence, notify, escalate, live_start)
}

__all__ = ["ACTIONS", "Action"]
