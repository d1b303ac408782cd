"""Secret and private-key files checked as ssh and PostgreSQL check theirs: one readable by its group or by others is
refused in one line naming the file and its mode, at `config check` and at a service's start, not at the moment a step
needs it; an opt-out for secrets an orchestrator mounts with modes of its own."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trading_ops.config import Config

# Set to 1 where an orchestrator mounts the secrets (Kubernetes' defaultMode 0644, Docker's 0444): their modes are then
# the orchestrator's to keep, and not checked here.
MOUNTED_ENV = "TRADING_OPS_SECRETS_MOUNTED"
# Path keys of the configuration that hold a private key or a secret (besides every secret's `*_file`).
PRIVATE_PATH_KEYS = ("identity_file", "key_file", "url_file")


class LooseSecretFile(ValueError):
    """A secret file others may read: `key` is its configuration key, the message one line."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def mounted() -> bool:
    return os.environ.get(MOUNTED_ENV, "") == "1"


def problem(path: str | Path) -> str | None:
    """Why `path` is too open for a secret, or None: readable or writable by its owner alone (0600, 0400), or as
    PostgreSQL allows, owned by root and readable by its group (0640: a group such as ssl-cert). A missing file is not
    this check's to report (reading it is)."""
    try:
        st = os.stat(path)  # the file itself, through a symlink (an orchestrator's ..data link)
    except OSError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077 or (st.st_uid == 0 and not mode & 0o037):
        return None
    who = " and ".join(w for bits, w in ((0o070, "its group"), (0o007, "others")) if mode & bits)
    return (
        f"{path} is open to {who} (mode {mode:04o}): a secret must be its owner's alone (chmod 600 {path}); "
        f"secrets mounted by an orchestrator: set {MOUNTED_ENV}=1"
    )


def check(path: str | Path, key: str) -> None:
    """LooseSecretFile when `path` is too open (unless the secrets are mounted)."""
    if not mounted() and (found := problem(path)) is not None:
        raise LooseSecretFile(key, found)


def config_secret_files(config: Config) -> Iterator[tuple[str, Path]]:
    """(key, path) of every secret file the configuration names: each secret given as `*_file`, and each private key
    or secret path (identity_file, key_file, database.url_file)."""

    def walk(obj: Any, prefix: str) -> Iterator[tuple[str, Path]]:
        if is_dataclass(obj) and not isinstance(obj, type):
            for f in fields(obj):
                value = getattr(obj, f.name)
                key = f"{prefix}.{f.name}" if prefix else f.name
                if f.metadata.get("secret") and isinstance(value, str) and value.startswith("file:"):
                    yield f"{key}_file", config.path(value[len("file:") :])
                elif f.metadata.get("path") and f.name in PRIVATE_PATH_KEYS and isinstance(value, str) and value:
                    yield key, config.path(value)
                else:
                    yield from walk(value, key)
        elif isinstance(obj, dict):
            for name, value in obj.items():
                yield from walk(value, f"{prefix}.{name}")
        elif isinstance(obj, list):
            for i, value in enumerate(obj):
                yield from walk(value, f"{prefix}[{i}]")

    yield from walk(config, "")


def refuse_loose_secrets(config: Config) -> None:
    """ConfigError (one line: the key, the file, its mode) for the first secret file of the configuration that is too
    open: what `config check` and every service's start call before anything else."""
    from trading_ops.config import ConfigError

    for key, path in config_secret_files(config):
        try:
            check(path, key)
        except LooseSecretFile as exc:
            raise ConfigError(exc.key, str(exc)) from None
