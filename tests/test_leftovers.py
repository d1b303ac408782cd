"""What a killed run leaves behind is reaped at the next run's start, and only that (tests/docker_engine.py,
tests/nspawn_machine.py): a dockerd still on a data root no live run holds, with what runs in its mount namespace; an
overlay over the cached roots whose owner is dead. Real processes in a mount namespace of their own (unshare) and real
overlay mounts; needs root, as the deployment tests do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from docker_engine import engines_of, reap_engines_of
from nspawn_machine import OWNER_FILE, Overlay, _overlays, reap_overlays
from polling import until

FAKE_DOCKERD = "import os, subprocess, time\nsubprocess.Popen(['sleep', '600'])\ntime.sleep(600)\n"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.fixture
def root_only() -> None:
    if os.geteuid() != 0:
        pytest.fail("reaping what a killed run left needs root (unshare, mount)", pytrace=False)


@pytest.mark.usefixtures("root_only")
def test_a_dockerd_left_on_the_data_root_is_stopped_with_what_runs_in_its_namespace(tmp_path: Path) -> None:
    data_root = tmp_path / "data-root"
    other_root = tmp_path / "other-root"
    script = tmp_path / "dockerd"
    script.write_text(FAKE_DOCKERD)
    argv = ["unshare", "--mount", "--propagation", "slave", "--", sys.executable, str(script)]
    left = subprocess.Popen([*argv, f"--data-root={data_root}"], start_new_session=True)
    kept = subprocess.Popen([*argv, f"--data-root={other_root}"], start_new_session=True)
    try:
        until(
            "both fake engines up",
            lambda: engines_of(data_root) == [left.pid] and engines_of(other_root) == [kept.pid],
            deadline=30,
        )
        engine_ns = os.readlink(f"/proc/{left.pid}/ns/mnt")
        assert engine_ns != os.readlink("/proc/self/ns/mnt")
        members = until("the engine's child in its namespace", lambda: _members(engine_ns)[1:] and _members(engine_ns))
        assert reap_engines_of(data_root, wait=5) == [left.pid]
        left.wait(30)
        until("the engine and its child gone", lambda: not any(_alive(pid) for pid in members), deadline=30)
        assert engines_of(data_root) == []
        assert _alive(kept.pid) and engines_of(other_root) == [kept.pid]  # another data root's engine is not touched
    finally:
        for proc in (left, kept):
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait(30)


def _members(mount_ns: str) -> list[int]:
    return sorted(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ns(p) == mount_ns)


def _ns(proc: Path) -> str:
    try:
        return os.readlink(proc / "ns" / "mnt")
    except OSError:
        return ""


@pytest.mark.usefixtures("root_only")
def test_an_overlay_whose_owner_is_dead_is_unmounted_and_a_live_runs_is_kept(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "root").mkdir(parents=True)
    (cache / "root" / "file").write_text("the cached root")
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = Overlay([cache / "root"], tmp_path / "left")
    live = Overlay([cache / "root"], tmp_path / "live")
    left.mount()
    live.mount()
    try:
        (tmp_path / "left" / OWNER_FILE).write_text(str(dead.pid))  # the run that mounted it was killed
        assert (left.merged / "file").read_text() == "the cached root"
        reaped = reap_overlays(cache)
        assert reaped == [f"overlay {left.merged}"]
        mounted = {mountpoint for mountpoint, _ in _overlays()}
        assert str(left.merged) not in mounted
        assert str(live.merged) in mounted  # this run's own (its owner is this process)
    finally:
        live.unmount()
        if str(left.merged) in {mountpoint for mountpoint, _ in _overlays()}:
            left.unmount()
