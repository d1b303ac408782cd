"""Subcommands of the `trading-ops` CLI that are not owned by a larger package."""
