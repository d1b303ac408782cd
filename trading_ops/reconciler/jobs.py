"""Every scheduled task in one table: its name, where its schedule is configured, and the job it runs."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from trading_ops.config import Config
from trading_ops.cron import CronSchedule
from trading_ops.durations import parse_duration
from trading_ops.ops import backup, maintenance, report, restore_drill, upkeep
from trading_ops.ops.scheduler import Job, JobFunc
from trading_ops.readiness import weekly

UPKEEP = "upkeep"
# How often finished maintenance windows are closed (bots resumed) and a missing silence is retried.
HOUSEKEEPING_CRON = "* * * * *"
DAILY_SUMMARY_METRIC = "tradingops_daily_report_last_success_timestamp_seconds"


@dataclass(frozen=True)
class JobSpec:
    """`schedule(config)`: (cron, time zone), or None when the task is off in this configuration."""

    name: str
    schedule: Callable[[Config], tuple[str, str] | None]
    run: JobFunc
    catch_up_within: Callable[[Config], float | None] = lambda config: None
    last_success_metric: str = ""
    catch_up_slots: int = 1


# One line per task: its name, where its cron and time zone are configured, and an async job(config, registry,
# slot). After downtime the latest missed slot of each task runs once; the daily summary sends every missed day
# (at most report.CATCH_UP_DAYS), oldest first, each once: a desk reads each day's figures, not only yesterday's.
JOBS: tuple[JobSpec, ...] = (
    JobSpec(
        "daily_summary",
        lambda c: (report.cron_of(c.report), c.report.time_zone) if c.report.enabled else None,
        report.run_daily_summary,
        last_success_metric=DAILY_SUMMARY_METRIC,
        catch_up_slots=report.CATCH_UP_DAYS,
    ),
    JobSpec(
        "weekly_review",
        lambda c: (weekly.cron_of(c), c.report.time_zone) if c.report.enabled and c.report.weekly else None,
        weekly.run_weekly_review,
    ),
    JobSpec("maintenance_housekeeping", lambda c: (HOUSEKEEPING_CRON, "UTC"), maintenance.housekeeping),
    # Backups and upkeep export their own metrics from their records on disk (trading_ops.ops.state_metrics).
    JobSpec(
        "backup", lambda c: (c.backup.schedule, c.backup.time_zone), lambda c, r, s: backup.run_scheduled_backup(c)
    ),
    JobSpec(
        "restore_drill",
        lambda c: (c.backup.drill_schedule, c.backup.time_zone) if c.backup.drill else None,
        lambda c, r, s: restore_drill.run_scheduled_drill(c),
    ),
    JobSpec(UPKEEP, lambda c: (c.upkeep.schedule, c.upkeep.time_zone), lambda c, r, s: upkeep.run_upkeep(c)),
)


def configured_jobs(config: Config, upkeep_retention: Sequence[upkeep.RetentionHook] = ()) -> list[Job]:
    """The jobs of this configuration: JOBS that are on, and one per scheduled maintenance window (a window
    missed during downtime still opens while its time lasts, for what is left of it). `upkeep_retention`: what the
    upkeep job's retention task also prunes (the reconciler gives its ledger's pruner: ops does not know the ledger)."""
    jobs = []
    for spec in JOBS:
        schedule = spec.schedule(config)
        if schedule is None:
            continue
        run = spec.run
        if spec.name == UPKEEP and upkeep_retention:
            run = functools.partial(_upkeep_with, tuple(upkeep_retention))
        jobs.append(
            Job(
                spec.name,
                CronSchedule.parse(*schedule),
                run,
                catch_up_within=spec.catch_up_within(config),
                last_success_metric=spec.last_success_metric,
                catch_up_slots=spec.catch_up_slots,
            )
        )
    for name, window in sorted(config.maintenance.windows.items()):
        jobs.append(
            Job(
                f"maintenance_window:{name}",
                CronSchedule.parse(window.schedule, config.maintenance.time_zone),
                maintenance.scheduled_window(name),
                catch_up_within=parse_duration(window.duration),
            )
        )
    return jobs


async def _upkeep_with(
    retention: tuple[upkeep.RetentionHook, ...], config: Config, registry: Any, slot: datetime
) -> None:
    await upkeep.run_upkeep(config, retention=retention)
