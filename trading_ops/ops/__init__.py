"""Scheduled operations beside the reconciler: the scheduler, maintenance windows, backups, upkeep, reports."""
