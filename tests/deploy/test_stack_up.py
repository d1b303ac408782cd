"""`trading-ops up` and `make run` as processes: the whole local stack started, its children restarted and stopped,
Ctrl-C and SIGTERM obeyed, a second stack refused, a killed up taking its children with it (whole-stack runs: the
deploy tier, `make test-deploy`). The stack's files and their parts, without processes: tests/stack/test_stack.py."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ports import free_port, free_ports
from system_binaries import GENERATIONS, REPO_ROOT, Generation, require_binary
from up_process import CHILDREN, STARTED_RE, STARTUP_SECONDS, STOP_SECONDS, UpProcess, alive

from trading_ops.db import migrate
from trading_ops.stack.layout import Ports


@pytest.fixture
def up_process(tmp_path: Path) -> Iterator[Callable[..., UpProcess]]:
    started: list[UpProcess] = []

    def start(*extra: str, **kwargs: Any) -> UpProcess:
        started.append(UpProcess(tmp_path, *extra, **kwargs))
        return started[-1]

    yield start
    for process in started:
        process.close()


@pytest.mark.slow
@pytest.mark.prometheus
@pytest.mark.alertmanager
@pytest.mark.parametrize("generation", GENERATIONS, ids=lambda g: g.name)
def test_up_starts_four_healthy_children_and_ctrl_c_stops_them_all(
    up_process: Callable[..., UpProcess], generation: Generation
) -> None:
    # On the system's Prometheus 2 / Alertmanager 0.25 and on the LTS pair: `up` runs those first on PATH.
    up = up_process(generation=generation)
    up.wait_up()
    pids = up.pids()
    assert set(pids) == set(CHILDREN)
    for server, binary in (("prometheus", "prometheus"), ("alertmanager", "prometheus-alertmanager")):
        assert os.readlink(f"/proc/{pids[server]}/exe") == os.path.realpath(generation.binary(binary)), server
    for child in CHILDREN:
        assert up.healthy(child), f"{child} is not healthy:\n{up.output}"
    for child in CHILDREN:
        assert up.wait_line(lambda line, c=child: line.startswith(f"started {c}: pid") and f"{c}.log" in line)
        assert (up.state_dir / "logs" / f"{child}.log").stat().st_size > 0
    # The URLs printed are the stack's.
    assert up.url("prometheus") in up.output and up.url("alertmanager") in up.output
    # The episodes come from the reconciler's API, read with its read token: a number, not "?".
    assert up.wait_line(lambda line: "status: alerts firing" in line and "episodes open: ?" not in line)
    # The banner's commands work as printed (from the directory `up` ran in).
    fault = up.wait_line(lambda line: line.startswith("inject a fault: "))
    command = shlex.split(fault.removeprefix("inject a fault: ").split("  (see")[0])
    assert command[-1] == "drop_connection"
    status = subprocess.run(
        [*command[:-1], "status", "--json"], check=False, cwd=up.root, capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0 and json.loads(status.stdout)["state"], status.stderr
    history = up.wait_line(lambda line: line.startswith("what it did: "))
    shown = subprocess.run(
        shlex.split(history.removeprefix("what it did: ")),
        check=False,
        cwd=up.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0 and shown.stdout.startswith("ID"), shown.stderr
    assert up.stop(signal.SIGINT) == 0, up.output
    for child, pid in pids.items():
        assert not alive(pid), f"{child} (pid {pid}) survived Ctrl-C"
        assert re.search(rf"^  {child} \(pid {pid}\) exited with status 0$", up.output, re.MULTILINE), up.output
    for port in (up.ports.bot, up.ports.reconciler, up.ports.prometheus, up.ports.alertmanager):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))  # free again


# What `make run` writes into a checkout: all of it must be git-ignored (a user's `git status` stays clean).
WRITTEN_BY_MAKE_RUN = (
    "trading-ops.yaml",
    "var/secrets/control-token",
    "var/secrets/reconciler-token",
    "var/secrets/reconciler-read-token",
    "var/secrets/reconciler-approve-token",
    "var/secrets/alice-token",
    "var/secrets/bob-token",
    "var/secrets/reconciler-operate-token",
    "var/secrets/reconciler-destructive-token",
    "var/stack/trading-ops.yaml",
    "var/stack/prometheus/prometheus.yml",
    "var/stack/alertmanager/alertmanager.yml",
    "var/stack/logs/reconciler.log",
    "var/trading-ops.db",
)
# What a fresh checkout's own `make run` also creates (this test reuses the running Python's venv instead).
VENV_FILE = ".venv/bin/python"
# The files of this worktree a new clone must carry, uncommitted edits included: they decide what `make run` writes
# and what git ignores.
MAKE_RUN_FILES = (".gitignore", "Makefile", "trading-ops.example.yaml")


def git(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def fresh_clone(tmp_path: Path) -> Path:
    """A clone of this checkout (a local clone: hard links, well under a second), as a new user gets it."""
    clone = tmp_path / "clone"
    done = git("clone", "-q", str(REPO_ROOT), str(clone), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for name in MAKE_RUN_FILES:
        shutil.copy2(REPO_ROOT / name, clone / name)
    return clone


@pytest.mark.slow
@pytest.mark.prometheus
@pytest.mark.alertmanager
@pytest.mark.parametrize(
    "how", ["SIGTERM to make", "SIGTERM to make's process group", "SIGINT to up's pid from its banner"]
)
def test_make_run_in_the_background_stops_cleanly(tmp_path: Path, how: str) -> None:
    """`make run &` in a fresh clone, as a new user runs it (the default configuration, database and state directory;
    only the ports are free ones): make passes no SIGINT on to its recipe and starts with SIGINT ignored, as a shell's
    background job does; it passes SIGTERM on, and `up` takes SIGINT although it inherited it ignored. SIGTERM to the
    process group (`timeout make run`, systemd stopping a unit) reaches `up` twice, directly and through make: still
    one graceful stop (not a second Ctrl-C's SIGKILL for all). It migrates
    the new database once (each Alembic "Running upgrade" line once), and leaves `git status` as it found it."""
    require_binary("prometheus")
    ports = Ports(bot=free_port(), reconciler=free_port(), prometheus=free_port(), alertmanager=free_port())
    clone = fresh_clone(tmp_path)
    status_before = git("status", "--porcelain", "--untracked-files=all", cwd=clone).stdout
    up_args = "--ready-timeout 90 " + " ".join(
        f"--{name}-port={getattr(ports, name)}" for name in ("bot", "reconciler", "prometheus", "alertmanager")
    )
    venv = Path(sys.executable).parent.parent
    make = [
        "make", "--no-print-directory", "-C", str(clone), "-o", f"{venv}/.installed", "run",
        f"VENV={venv}", f"UP_ARGS={up_args}",
    ]  # fmt: skip
    proc = subprocess.Popen(
        make,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # The code under test is this checkout's; the clone gives the files a user has (prometheus/, the Makefile).
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # noqa: PLW1509 - as `&` does
        start_new_session=how.endswith("process group"),  # a group of make's own, as `timeout` makes one
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("Ctrl-C stops everything"):
                break
        banner = "\n".join(lines)
        found = re.search(r"kill -INT (\d+)\)", banner)
        assert found, banner
        up_pid = int(found.group(1))
        children = {m["name"]: int(m["pid"]) for line in lines if (m := STARTED_RE.match(line))}
        assert set(children) == set(CHILDREN), banner
        if how == "SIGTERM to make":
            proc.send_signal(signal.SIGTERM)
        elif how.endswith("process group"):
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGINT)  # ignored, as for a background job: nothing happens ...
            os.kill(up_pid, signal.SIGINT)  # ... but up's own pid takes it
        rest = proc.stdout.read()
        proc.wait(STOP_SECONDS)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert not alive(up_pid)
    for child, pid in children.items():
        assert not alive(pid), f"{child} survived"
        assert re.search(rf"^  {child} \(pid {pid}\) exited with status 0$", rest, re.MULTILINE), rest
    assert "killing every child now" not in rest, rest
    # SIGINT to up: make exits with up's status; SIGTERM to make: make dies of it once up has stopped.
    assert proc.returncode == (0 if how.startswith("SIGINT") else -signal.SIGTERM), rest

    # The new database was migrated by `up`, each revision once, and its log lines were printed once.
    revisions = [r.revision for r in migrate.script_directory().walk_revisions()]
    upgrades = [line for line in lines if "Running upgrade" in line]
    assert sorted(line.split("-> ", 1)[1].split(",")[0] for line in upgrades) == sorted(revisions), banner

    # Everything `make run` wrote is git-ignored: a user's `git status` is as it was.
    for name in WRITTEN_BY_MAKE_RUN:
        assert (clone / name).exists(), f"make run did not write {name}"
    ignored = git("check-ignore", *WRITTEN_BY_MAKE_RUN, VENV_FILE, cwd=clone).stdout.split()
    assert sorted(ignored) == sorted([*WRITTEN_BY_MAKE_RUN, VENV_FILE])
    assert git("status", "--porcelain", "--untracked-files=all", cwd=clone).stdout == status_before


@pytest.mark.slow
@pytest.mark.alertmanager
def test_a_missing_prometheus_is_named_with_its_package_and_the_rest_starts(
    tmp_path: Path, up_process: Callable[..., UpProcess]
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    alertmanager = shutil.which("prometheus-alertmanager") or require_binary("prometheus-alertmanager")
    (bin_dir / "prometheus-alertmanager").symlink_to(alertmanager)
    up = up_process(env={**os.environ, "PATH": str(bin_dir)})
    up.wait_up()
    assert "apt-get install prometheus" in up.output
    assert re.search(r"prometheus: no prometheus on PATH", up.output)
    assert set(up.pids()) == {"paper-bot", "reconciler", "alertmanager"}
    for child in ("paper-bot", "reconciler", "alertmanager"):
        assert up.healthy(child), child
    assert re.search(r"^  prometheus +not running \(binary missing\)$", up.output, re.MULTILINE)
    pids = up.pids()
    assert up.stop() == 0, up.output
    assert not any(alive(pid) for pid in pids.values())


@pytest.mark.slow
@pytest.mark.prometheus
@pytest.mark.alertmanager
def test_a_pipeline_child_is_restarted_and_one_that_keeps_dying_stops_the_stack(
    up_process: Callable[..., UpProcess],
) -> None:
    """As systemd does with the reconciler's unit: a crash is restarted (RestartSec), a crash loop hits the start
    limit, and then the alerting pipeline is broken: everything stops, exit 1."""
    up = up_process()
    up.wait_up()
    for kill in range(1, 6):  # the 5th start is the unit's StartLimitBurst: the 6th is refused
        pid = up.pids()["reconciler"]
        os.kill(pid, signal.SIGKILL)
        if kill < 5:
            up.wait_line(lambda line, n=kill: f"trading-ops-reconciler.service: restarted (restart {n})" in line)
            up.wait_line(lambda line, old=pid: line.startswith("started reconciler: pid") and f"pid {old}," not in line)
            end = time.monotonic() + STARTUP_SECONDS
            while not up.healthy("reconciler"):
                assert time.monotonic() < end, up.output
                time.sleep(0.2)
    assert up.proc.wait(STOP_SECONDS) == 1
    up.reader.join(10)
    assert "trading-ops-reconciler.service: start request repeated too quickly" in up.output, up.output
    assert "stopping the stack" in up.output
    assert not any(alive(pid) for pid in up.pids().values())


@pytest.mark.slow
def test_a_child_that_cannot_start_fails_up_with_its_log(tmp_path: Path, up_process: Callable[..., UpProcess]) -> None:
    playbook = tmp_path / "broken-playbook.yml"
    playbook.write_text("version: 1\nrules:\n  - name: no-steps\n    match: ['alertname=\"X\"']\n")
    up = up_process(reconciler={"playbook": str(playbook)})
    assert up.proc.wait(STOP_SECONDS) == 1, up.output
    up.reader.join(10)
    assert re.search(
        r"^!!! trading-ops up: reconciler exited with status \d+ while starting; last lines of ", up.output, re.M
    )
    assert "steps" in up.output and "reconciler.playbook" in up.output  # the reconciler's complaint, from its log
    assert "local stack is up" not in up.output
    assert not any(alive(pid) for pid in up.pids().values())


@pytest.mark.slow
@pytest.mark.prometheus
@pytest.mark.alertmanager
def test_a_killed_up_takes_its_children_with_it(up_process: Callable[..., UpProcess]) -> None:
    """Even SIGKILL, which `up` cannot handle, leaves no server behind: the children asked the kernel for SIGTERM
    when their parent dies."""
    up = up_process()
    up.wait_up()
    pids = up.pids()
    up.proc.kill()
    up.proc.wait(STOP_SECONDS)
    end = time.monotonic() + STOP_SECONDS
    while any(alive(pid) for pid in pids.values()) and time.monotonic() < end:
        time.sleep(0.2)
    assert not [name for name, pid in pids.items() if alive(pid)]


@pytest.mark.slow
def test_a_port_in_use_is_bad_usage(up_process: Callable[..., UpProcess]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        up = up_process(f"--prometheus-port={port}")
        assert up.proc.wait(STOP_SECONDS) == 2
        up.reader.join(10)
    assert up.output.splitlines()[-1] == (
        f"trading-ops: up: port {port} (prometheus) is in use on 127.0.0.1: free it or pass --prometheus-port "
        "or --base-port"
    )
    assert not up.pids()


def _files_of(directory: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `directory` but the logs (which a running stack writes on): its mtime and content."""
    return {
        str(path.relative_to(directory)): (path.stat().st_mtime_ns, path.read_bytes())
        for path in sorted(directory.rglob("*"))
        if path.is_file() and "logs" not in path.relative_to(directory).parts and "data" not in path.parts
    }


@pytest.mark.slow
@pytest.mark.prometheus
@pytest.mark.alertmanager
def test_a_second_up_in_the_same_checkout_is_refused_before_it_writes_anything(
    up_process: Callable[..., UpProcess],
) -> None:
    """A second `up` beside a running one, on other ports, with the same state directory: one line naming the stack
    that runs (its pid and ports) and how to start another, exit 2, and not one of the running stack's files
    rewritten (its Prometheus would otherwise scrape a bot that does not exist)."""
    require_binary("prometheus")
    first = up_process()
    first.wait_up()
    written = _files_of(first.state_dir)
    assert "trading-ops.yaml" in written and "prometheus/targets/tradingbot.yml" in written
    base = free_ports(9)
    second = subprocess.run(
        [
            *[sys.executable, "-m", "trading_ops", "--config", str(first.config), "up"],
            *["--state-dir", str(first.state_dir), "--base-port", str(base)],
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=first.root,
        check=False,
    )
    assert second.returncode == 2, second.stderr
    assert second.stdout == ""
    assert second.stderr.splitlines() == [
        f"trading-ops: up: a stack already runs with state directory {first.state_dir} (pid {first.proc.pid}, bot "
        f"paper, ports bot {first.ports.bot}, reconciler {first.ports.reconciler}, prometheus "
        f"{first.ports.prometheus}, alertmanager {first.ports.alertmanager}): one stack per checkout at a time; stop "
        "it first (Ctrl-C, or kill -INT its pid), or start another from a directory of its own (another checkout) "
        "with other ports (--base-port N)"
    ]
    assert _files_of(first.state_dir) == written
    # The running stack is untouched: its children answer, and Ctrl-C still stops it cleanly.
    for child in CHILDREN:
        assert first.healthy(child), f"{child} is not healthy:\n{first.output}"
    assert first.stop(signal.SIGINT) == 0, first.output
