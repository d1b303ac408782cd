"""Typed keys of everything the reconciler's aiohttp application holds."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from trading_ops.config import Config
from trading_ops.ops.scheduler import Scheduler
from trading_ops.reconciler.commit_probe import CommitProbe
from trading_ops.reconciler.control_audit import ControlAudit
from trading_ops.reconciler.deadman import DeadMansSwitch
from trading_ops.reconciler.engine import Engine
from trading_ops.reconciler.intake import GroupCommitWriter
from trading_ops.reconciler.ledger import Ledger
from trading_ops.reconciler.login_throttle import LoginThrottle
from trading_ops.reconciler.maintenance import MaintenanceWatcher
from trading_ops.reconciler.metrics import ReconcilerMetrics
from trading_ops.reconciler.outbox import Outbox
from trading_ops.reconciler.playbook import Playbook
from trading_ops.scopes import TokenSet

CONFIG = web.AppKey("config", Config)
REGISTRY = web.AppKey("registry", CollectorRegistry)
METRICS = web.AppKey("metrics", ReconcilerMetrics)
PLAYBOOK = web.AppKey("playbook", Playbook)
TOKEN = web.AppKey("token", str)
# The API's tokens with their scopes (reconciler.read_token, reconciler.api_tokens): trading_ops.reconciler.auth.
API_TOKENS = web.AppKey("api_tokens", TokenSet)
OWNER = web.AppKey("owner", str)
INSTANCE = web.AppKey("instance", str)
LEDGER = web.AppKey("ledger", Ledger)
WRITER = web.AppKey("writer", GroupCommitWriter)
ENGINE = web.AppKey("engine", Engine)
OUTBOX = web.AppKey("outbox", Outbox)
DEADMAN = web.AppKey("deadman", DeadMansSwitch)
MAINTENANCE = web.AppKey("maintenance", MaintenanceWatcher)
# The ledger's commit probe: /readyz says when commits are held.
COMMIT_PROBE = web.AppKey("commit_probe", CommitProbe)
SESSION = web.AppKey("session", aiohttp.ClientSession)
# What pulls the bots' journaled control commands into the audit chain (trading_ops.reconciler.control_audit).
CONTROL_AUDIT = web.AppKey("control_audit", ControlAudit)
# reconciler.tls (CA, client certificate) for its session; absent when not configured.
CLIENT_TLS = web.AppKey("client_tls", ssl.SSLContext)
SCHEDULER = web.AppKey("scheduler", Scheduler)
LOGIN_THROTTLE = web.AppKey("login_throttle", LoginThrottle)
TASKS = web.AppKey("tasks", list[asyncio.Task[None]])
