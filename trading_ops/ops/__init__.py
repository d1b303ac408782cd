"""Scheduled operations beside the reconciler: backups, database and disk upkeep, maintenance, reports."""
