"""What a backup, verification or restore that cannot be done raises (the backup modules share it)."""

from __future__ import annotations


class BackupError(Exception):
    """A backup, verification or restore that cannot be done; the message is one line naming the problem."""
