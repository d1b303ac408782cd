"""The shipped systemd units, read for the local stack: each child of `up` restarts, pings its watchdog and hits its
start limit as the unit that runs it in production says (one source of truth, so the two never drift apart)."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

from trading_ops.stack.profiles import Profile
from trading_ops.stack.service import ServicePolicy

PACKAGE = Path(__file__).resolve().parent.parent
PAPER_BOT_UNIT_FILE = PACKAGE / "paper" / "systemd" / "trading-ops-paper-bot.service"
RECONCILER_UNIT_FILE = PACKAGE / "reconciler" / "systemd" / "trading-ops-reconciler.service"
RECONCILER_UNIT = "trading-ops-reconciler.service"
FREQTRADE_SIDECAR_UNIT_FILE = PACKAGE / "integrations" / "freqtrade" / "systemd" / "trading-ops-freqtrade.service"
FREQTRADE_SIDECAR_UNIT = "trading-ops-freqtrade.service"
# Debian's prometheus and prometheus-alertmanager units: Restart=on-failure with systemd's defaults (RestartSec
# 100ms, StartLimitIntervalSec 10s, StartLimitBurst 5).
# The second member of a clustered pair (`up --alertmanagers 2`) runs the same unit on its own host in production;
# on one machine its unit is named after its child.
SERVER_UNITS = {
    "prometheus": "prometheus.service",
    "alertmanager": "prometheus-alertmanager.service",
    "alertmanager-2": "prometheus-alertmanager-2.service",
}
SERVER_POLICY = {"restart_seconds": 0.1, "start_limit_burst": 5, "start_limit_interval": 10.0}
# systemd.time(7) time spans: "5s", "10min", "1h 30min", a bare number of seconds.
TIMESPAN_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")
TIMESPAN_UNITS = {
    "": 1.0,
    "us": 1e-6,
    "usec": 1e-6,
    "ms": 1e-3,
    "msec": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
# The fast profile shortens the unit's timings as it shortens alert `for:` durations, never below these floors:
# a restart still waits a second, and the watchdog keeps room for a loaded machine's event-loop lag.
RESTART_FLOOR_SECONDS = 1.0
WATCHDOG_FLOOR_SECONDS = 10.0
START_LIMIT_FLOOR_SECONDS = 60.0


class UnitFileError(Exception):
    """A unit file the stack cannot read its service settings from."""


def timespan(text: str) -> float:
    """Seconds of a systemd time span ("5s", "10min", "2", "1min 30s")."""
    text = text.strip().lower()
    pos, total = 0, 0.0
    for match in TIMESPAN_RE.finditer(text):
        if text[pos : match.start()].strip() or match.group(2) not in TIMESPAN_UNITS:
            raise ValueError(f"not a time span: {text!r}")
        total += float(match.group(1)) * TIMESPAN_UNITS[match.group(2)]
        pos = match.end()
    if not text or text[pos:].strip():
        raise ValueError(f"not a time span: {text!r}")
    return total


def read_policy(path: Path, unit: str, profile: Profile) -> ServicePolicy:
    """The ServicePolicy of the unit file at `path`, running as `unit`, with the profile's shorter timings."""
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(path.read_text(encoding="utf-8"), source=str(path))
        section_unit, service = parser["Unit"], parser["Service"]
        restart = service.get("Restart", "no")
        if restart not in ("on-failure", "always", "on-abnormal", "on-watchdog", "on-abort"):
            raise UnitFileError(f"{path}: Restart={restart}: the stack restarts only units that restart on failure")
        watchdog = timespan(service["WatchdogSec"]) if "WatchdogSec" in service else None
        policy = ServicePolicy(
            unit=unit,
            restart_seconds=profile.shortened(timespan(service.get("RestartSec", "100ms")), RESTART_FLOOR_SECONDS),
            start_limit_burst=int(section_unit.get("StartLimitBurst", "5")),
            start_limit_interval=profile.shortened(
                timespan(section_unit.get("StartLimitIntervalSec", "10s")), START_LIMIT_FLOOR_SECONDS
            ),
            notify=service.get("Type", "simple") == "notify",
            watchdog_seconds=profile.shortened(watchdog, WATCHDOG_FLOOR_SECONDS) if watchdog else None,
            start_timeout=timespan(service.get("TimeoutStartSec", "90s")),
        )
    except (OSError, KeyError, ValueError, configparser.Error) as exc:
        raise UnitFileError(f"{path}: {exc}") from exc
    return policy


def server_policy(name: str) -> ServicePolicy:
    return ServicePolicy(unit=SERVER_UNITS[name], **SERVER_POLICY)  # type: ignore[arg-type]
