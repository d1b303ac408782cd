"""Scheduled operations beside the reconciler: the scheduler, backups, upkeep, maintenance windows, reports."""
