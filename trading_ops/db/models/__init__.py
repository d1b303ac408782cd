"""Every table of trading-ops; importing this module registers them all on `Base.metadata`."""

from trading_ops.db.base import Base
from trading_ops.db.models.audit import Audit, AuditBotCursor, AuditHead
from trading_ops.db.models.journal import Balance, EquityPeak, Fill, Order, Position
from trading_ops.db.models.ledger import (
    Approval,
    ApprovalDecision,
    Attempt,
    AuditEntry,
    ConsoleSession,
    Episode,
    Escalation,
    Notification,
    Request,
    Setting,
    Step,
    Target,
)
from trading_ops.db.models.ops import JobRun, MaintenanceWindow
from trading_ops.db.models.readiness import ReadinessRecord
from trading_ops.db.models.recovery import BotRun, ReconciliationDiscrepancy, ReconciliationRun, RecoveryEvent

__all__ = [
    "Approval",
    "ApprovalDecision",
    "Attempt",
    "Audit",
    "AuditBotCursor",
    "AuditEntry",
    "AuditHead",
    "Balance",
    "Base",
    "BotRun",
    "ConsoleSession",
    "EquityPeak",
    "Episode",
    "Escalation",
    "Fill",
    "JobRun",
    "MaintenanceWindow",
    "Notification",
    "Order",
    "Position",
    "ReadinessRecord",
    "ReconciliationDiscrepancy",
    "ReconciliationRun",
    "RecoveryEvent",
    "Request",
    "Setting",
    "Step",
    "Target",
]
