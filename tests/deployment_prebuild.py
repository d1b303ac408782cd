"""What the deployment tests build on a new machine (the debootstrap roots, the wheelhouse, the systemd test's
virtualenv layer: minutes), built in the background from the start of a test run that includes them, so that the work
overlaps with other tests instead of waiting for the test that needs it: tests/conftest.py starts it (`start`) and
stops it by its pid at the end of the run (`stop`). Each piece takes the file lock the test would take: a test that
needs a piece still being built waits for that build, never makes it twice; a cached piece costs nothing. A piece
that fails here is left to its test, which builds it again and fails with its own one line.

Run as a script (what `start` does): `python tests/deployment_prebuild.py compose systemd`, at a lower priority
(nice 10) than the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent
# The test modules whose pieces this builds, by what they need.
MODULES = {
    "compose": TESTS / "deploy" / "test_compose_real.py",
    "systemd": TESTS / "deploy" / "test_systemd_real.py",
    "debian13": TESTS / "deploy" / "test_debian13_real.py",
    "remote": TESTS / "deploy" / "test_remote_hosts_real.py",
    "ha_topology": TESTS / "deploy" / "test_ha_topology_e2e.py",
}
# The pieces only tests marked `hosts` (`make test-hosts`) need.
HOSTS_ONLY = {"debian13", "ha_topology"}
STOP_SECONDS = 60.0
NICENESS = 10


def wanted(args: list[str], invocation_dir: Path) -> list[str]:
    """Which deployment tests a run given `args` (pytest's file or directory arguments) includes."""
    paths = [(invocation_dir / arg.split("::", 1)[0]).resolve() for arg in args if not arg.startswith("-")]
    return [name for name, module in MODULES.items() if any(module == p or p in module.parents for p in paths)]


def selected(markexpr: str, name: str) -> bool:
    """Whether `-m markexpr` keeps the tests of piece `name`: every one is under tests/deploy/ (marked `deploy`), and
    those of HOSTS_ONLY are marked `hosts` too."""
    if not markexpr:
        return True
    from _pytest.mark.expression import Expression

    marks = {"deploy", "slow"} | ({"hosts"} if name in HOSTS_ONLY else set())
    return Expression.compile(markexpr).evaluate(lambda mark, /, **kwargs: mark in marks)


def start(config: Any) -> subprocess.Popen[bytes] | None:
    """The background build for the deployment tests this pytest run includes (as root, in the run's main process
    only: not in an xdist worker, not for --collect-only), or None."""
    if os.geteuid() != 0 or hasattr(config, "workerinput") or config.option.collectonly:
        return None
    names = [
        name
        for name in wanted([str(a) for a in config.args], Path(config.invocation_params.dir))
        if selected(config.option.markexpr or "", name)  # `make test` leaves the `deploy` and `hosts` tests out
    ]
    if not names:
        return None
    reap_killed_runs(config)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        ["nice", "-n", str(NICENESS), sys.executable, str(Path(__file__)), *names],
        cwd=TESTS.parent,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def reap_killed_runs(config: Any) -> list[str]:
    """What a killed earlier run left that would fail this run's deployment tests, stopped before they start (a dockerd
    holding the cached data root, a booted nspawn machine, its overlay still mounted over the cached roots): only what
    no live run owns (tests/docker_engine.py, tests/nspawn_machine.py). Each thing reaped is reported in one line."""
    from docker_engine import reap_killed_runs as reap_engines
    from nspawn_machine import reap_killed_runs as reap_machines

    reaped = [f"dockerd {pid} on the cached data root" for pid in reap_engines()] + reap_machines()
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    for line in reaped:
        if reporter is not None:
            reporter.write_line(f"reaped what a killed run left: {line}")
    return reaped


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop the background build by its pid when it is still running (SIGTERM: it unmounts and removes what it was
    building; SIGKILL after STOP_SECONDS)."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)


def lts_packages() -> Path:
    """tests/monitoring_lts.py's fill, its one-line refusal (a SystemExit with its message) made a failure of the piece;
    the SystemExit of a SIGTERM (`terminated`, code 1) still ends the build."""
    import monitoring_lts

    try:
        return monitoring_lts.fill()
    except SystemExit as exc:
        if isinstance(exc.code, str):
            raise RuntimeError(exc.code) from None
        raise


def pieces(names: list[str]) -> list[tuple[str, Callable[[], object]]]:
    """What to build, in the order the tests come to need them: the systemd test starts at the run's start (it is
    marked slow) and builds its own pieces if they are not there; the compose test comes later."""
    from compose_images import BASE_PACKAGES, SERVICE_PACKAGES
    from debian_root import debian_root, wheelhouse
    from nspawn_machine import prepared_root

    found: list[tuple[str, Callable[[], object]]] = []
    if "compose" in names:
        found += [
            ("the compose base root", lambda: debian_root(BASE_PACKAGES)),
            ("the compose services root", lambda: debian_root(SERVICE_PACKAGES)),
            # Prometheus's and Alertmanager's images take their packages from it (`make test` fills it first).
            ("the LTS packages", lts_packages),
        ]
    if "compose" in names or "systemd" in names:
        found.append(("the wheelhouse", wheelhouse))
    if "systemd" in names:
        found.append(("the systemd root and its virtualenv layer", prepared_root))
    if "remote" in names:
        from nspawn_machine import SSH_ROOT_PACKAGES

        found.append(("the remote host's root with its sshd", lambda: debian_root(SSH_ROOT_PACKAGES)))
    if "debian13" in names:
        from debian13_root import prepared_root as debian13_root

        found.append(("the Debian 13 root and its run-deps layer", debian13_root))
    if "ha_topology" in names:
        from debian13_root import ha_layer
        from debian13_root import prepared_root as debian13_root

        found.append(
            ("the Debian 13 root's HA layer (etcd, Patroni, PostgreSQL, ...)", lambda: ha_layer(*debian13_root()))
        )
    return found


def main(names: list[str]) -> int:
    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(1)  # unwinds: a debootstrap's mounts and a half-made layer are cleaned up on the way

    signal.signal(signal.SIGTERM, terminated)
    sys.path[:0] = [str(TESTS)]
    failed = 0
    for what, build in pieces(names):
        try:
            build()
        except (Exception, pytest.fail.Exception) as exc:  # the test that needs the piece will say it again
            print(f"deployment prebuild: {what}: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
