"""The off-host copy of each backup: a directory on another host reached over SSH (OpenSSH's `ssh`, key auth only).

A file is streamed through ssh's stdin under a temporary name, synced, renamed, and its sha256 computed there (the
remote's own `sha256sum`, compared with the manifest's by the caller); the copies are listed, fetched back and
pruned the same way. No local shell: ssh gets an argument list; the remote command's words are quoted for the remote
shell (which runs every ssh command), and the names in it are the catalog's own, never user input."""

from __future__ import annotations

import contextlib
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from trading_ops.config import BackupConfig, BackupRemoteConfig

PARTIAL_SUFFIX = ".partial"
# Where the copy of pgBackRest's repository goes in the off-host repository (backup.pitr.repo_path).
PITR_REMOTE_DIRECTORY = "pgbackrest"
# ssh's exit status when the connection (not the remote command) failed.
SSH_CONNECTION_FAILED = 255
STDERR_LIMIT = 500
# Files one `rm` removes (a command line stays far below ARG_MAX).
DELETE_BATCH = 500


class RemoteError(RuntimeError):
    """The off-host repository cannot be reached, or a command there failed; one line naming the host."""


@dataclass(frozen=True)
class Remote:
    """The repository of `settings` (its identity and known-hosts files resolved when the configuration loaded)."""

    settings: BackupRemoteConfig
    timeout: float

    @property
    def location(self) -> str:
        """The repository as messages name it: user@host:path (and the port when it is not 22)."""
        s = self.settings
        where = f"{s.user + '@' if s.user else ''}{s.host}:{s.path}"
        return where if s.port == 22 else f"{where} (port {s.port})"

    def argv(self, command: str) -> list[str]:
        s = self.settings
        argv = [
            s.ssh,
            "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={max(1, round(s.connect_timeout_seconds))}",
            "-o", "ServerAliveInterval=15",
            "-o", "StrictHostKeyChecking=yes",
            "-p", str(s.port),
        ]  # fmt: skip
        if s.identity_file:
            argv += ["-o", "IdentitiesOnly=yes", "-i", s.identity_file]
        if s.known_hosts_file:
            argv += ["-o", f"UserKnownHostsFile={s.known_hosts_file}"]
        if s.user:
            argv += ["-l", s.user]
        return [*argv, "--", s.host, command]

    def run(self, command: str, *, stdin: Path | None = None, stdout: Path | None = None) -> str:
        """Run `command` there; its output (unless written to `stdout`). RemoteError with ssh's last error line."""
        try:
            with contextlib.ExitStack() as files:
                source = files.enter_context(open(stdin, "rb")) if stdin else subprocess.DEVNULL
                target = files.enter_context(open(stdout, "wb")) if stdout else subprocess.PIPE
                proc = subprocess.run(
                    self.argv(command),
                    stdin=source,
                    stdout=target,
                    stderr=subprocess.PIPE,
                    timeout=self.timeout,
                    check=False,
                )
        except subprocess.TimeoutExpired:
            raise RemoteError(f"off-host repository {self.location}: no answer within {self.timeout:g}s") from None
        except OSError as exc:
            raise RemoteError(f"cannot start {self.settings.ssh}: {exc.strerror or exc}") from exc
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.decode(errors="replace").splitlines() if ln.strip()]
            detail = lines[-1].strip() if lines else f"exit status {proc.returncode}"
            what = "unreachable" if proc.returncode == SSH_CONNECTION_FAILED else "command failed"
            raise RemoteError(f"off-host repository {self.location} {what}: {detail[:STDERR_LIMIT]}")
        return "" if stdout else proc.stdout.decode(errors="replace")

    def _file(self, name: str) -> str:
        return shlex.quote(f"{self.settings.path.rstrip('/')}/{name}")

    def put(self, source: Path) -> str:
        """Copy `source` there under its name (a temporary name first, synced, renamed); the sha256 of the copy."""
        directory = shlex.quote(self.settings.path)
        partial, final = self._file(f".{source.name}{PARTIAL_SUFFIX}"), self._file(source.name)
        out = self.run(
            f"mkdir -p -- {directory} && cat > {partial} && sync -- {partial} && mv -f -- {partial} {final} "
            f"&& sha256sum -- {final}",
            stdin=source,
        )
        return out.split()[0] if out.split() else ""

    def sha256(self, name: str) -> str:
        """The sha256 of the copy `name` there ("" when there is none)."""
        final = self._file(name)
        out = self.run(f"if [ -f {final} ]; then sha256sum -- {final}; fi")
        return out.split()[0] if out.split() else ""

    def names(self) -> list[str]:
        """The file names in the repository directory (none when it does not exist yet)."""
        directory = shlex.quote(self.settings.path)
        return sorted(self.run(f"if [ -d {directory} ]; then ls -1A -- {directory}; fi").split())

    def get(self, name: str, target: Path) -> None:
        """Copy `name` from there into the file `target`."""
        self.run(f"cat -- {self._file(name)}", stdout=target)

    def read_text(self, name: str) -> str:
        return self.run(f"cat -- {self._file(name)}")

    def delete(self, names: list[str]) -> None:
        """Remove the files `names` (paths relative to the repository directory), a bounded number per command."""
        for start in range(0, len(names), DELETE_BATCH):
            self.run(f"rm -f -- {' '.join(self._file(n) for n in names[start : start + DELETE_BATCH])}")

    def _rsync_target(self, name: str) -> str:
        host = f"[{self.settings.host}]" if ":" in self.settings.host else self.settings.host  # an IPv6 address
        return f"{host}:{self.settings.path.rstrip('/')}/{name}/"

    def sync_directory(
        self, source: Path, name: str, rsync: str, *, delete: bool = True, protect: tuple[str, ...] = ()
    ) -> None:
        """Make `name` in the repository directory a copy of the local directory `source` (rsync over this ssh:
        files compared by size and time, each transferred file checked by rsync's whole-file checksum; with `delete`,
        files gone here are deleted there, except those matching a `protect` pattern: rsync's filter rules, e.g.
        `/archive/**`)."""
        options = ["--delete", *(f"--filter=P {p}" for p in protect)] if delete else []
        self._rsync(rsync, options, f"{source}/", self._rsync_target(name), source)

    def send_files(self, source: Path, files: list[str], name: str, rsync: str) -> None:
        """Copy the files `files` (paths relative to the local directory `source`) into `name` in the repository
        directory, under the same relative paths (rsync over this ssh, given the list: only these files are compared
        and sent, each under a temporary name there until it is complete; a listed file gone here is skipped)."""
        self._rsync(
            rsync,
            ["--files-from=-", "--from0", "--ignore-missing-args"],
            f"{source}/",
            self._rsync_target(name),
            source,
            files="\0".join(files),
        )

    def files(self, name: str) -> list[str]:
        """The regular files under the directory `name` of the repository, as paths relative to it (none when it does
        not exist)."""
        directory = self._file(name)
        out = self.run(f"if [ -d {directory} ]; then cd {directory} && find . -type f; fi")
        return sorted(line.removeprefix("./") for line in out.splitlines() if line.startswith("./"))

    def fetch_directory(self, name: str, target: Path, rsync: str) -> None:
        """Copy the directory `name` of the repository into the local directory `target` (created; files there that
        the remote does not have are kept)."""
        self._rsync(rsync, [], self._rsync_target(name), f"{target}/", target)

    def _rsync(
        self, rsync: str, options: list[str], source: str, target: str, local: Path, files: str | None = None
    ) -> None:
        ssh = shlex.join(self.argv("")[:-2])  # ssh and its options, without `-- host command`
        argv = [rsync, "-a", *options, "--mkpath", "-e", ssh, "--", source, target]
        try:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL if files is None else None,
                input=None if files is None else files.encode(),  # rsync's --files-from list
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RemoteError(
                f"off-host repository {self.location}: rsync did not finish within {self.timeout:g}s"
            ) from None
        except OSError as exc:
            raise RemoteError(f"cannot start {rsync}: {exc.strerror or exc}") from exc
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.decode(errors="replace").splitlines() if ln.strip()]
            detail = lines[0].strip() if lines else f"exit status {proc.returncode}"
            raise RemoteError(f"off-host repository {self.location}: rsync of {local} failed: {detail[:STDERR_LIMIT]}")


def remote_of(settings: BackupConfig) -> Remote | None:
    """The configured off-host repository (None without a host)."""
    return Remote(settings.remote, settings.timeout_seconds) if settings.remote.host else None
