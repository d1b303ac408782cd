"""`make setup` and `make run` on a fresh Debian 13 (trixie) machine, as on Debian 12: a debootstrap trixie root booted
under systemd-nspawn (Debian 13's systemd and Python 3.13), this checkout copied in as a clone has it, `make setup` run
there (every pin of constraints.txt installed at its locked version on Python 3.13), `make run`'s stack healthy (every
Prometheus target up, the paper bot's orders reaching the venue) and a smoke subset of the tests run inside, among them
the pins' check and docker-compose v2's `config` of docker-compose.yml. The Debian packages the Makefile's
system-deps names, and those the deployment pages (docs/deploy-*.md) install, are looked up in Debian 13's archive:
each one must be there.

Caches, made once per machine under ~/.cache/trading-ops, so that a warm run downloads nothing:
- the root (tests/debian_root.py, suite trixie);
- a layer over it holding what `make run-deps` installed there (Debian 13's prometheus and prometheus-alertmanager,
  the Makefile's own recipe run in the root) and docker-compose v2 for the smoke subset; apt's lists stay in it;
- pip's and uv's download caches (`debian13-home-cache`), the machine's /root/.cache;
- the virtualenv the first run's `make setup` installed in the machine, kept as a layer over the two above (keyed by
  them, constraints.txt and pyproject.toml: tests/debian13_root.py): a later run with the same lock starts with it,
  and its `make setup` has nothing to do (the smoke subset still checks every pin's installed version).

The machine shares the host's network (pip and uv reach the package index): `make run` gets free ports of the host
through UP_ARGS. Needs root, systemd-container, debootstrap and a reachable Debian mirror and package index."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from debian13_root import makefile_pairs, prepared_root, save_venv_layer, venv_layer, venv_layer_complete
from debian_root import cache_dir
from doc_commands import apt_packages, page_blocks
from nspawn_machine import Machine, Overlay
from polling import until
from ports import free_port
from system_binaries import REPO_ROOT, require_binary

from trading_ops.stack.layout import PORT_ORDER, Ports, port_option

# A cold run debootstraps the root, fills the download caches and installs the virtualenv (minutes); a warm one boots
# with the cached virtualenv and runs the stack (about a minute).
pytestmark = [pytest.mark.hosts, pytest.mark.slow, pytest.mark.timeout(2400)]

CHECKOUT = "/root/trading-ops"
STAMP = ".venv/.installed"  # the Makefile's: what `make setup` made, newer than constraints.txt and pyproject.toml
# The environment of a login on a fresh machine, not this test's (its virtualenv, PYTHONPATH and caches stay out).
ENV = ("env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8")
# The CA certificates this machine trusts (its bundle, the workplace's own authorities included: the package index may
# be reached through a TLS proxy) and the variables that name them, given to the machine as a machine of this project
# has them.
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CA_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "PIP_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
# Debian's own services of the packages run-deps installed: the machine shares the host's network, and `make run`
# starts a Prometheus and an Alertmanager of its own on the ports it is given.
MASKED_UNITS = ("prometheus.service", "prometheus-alertmanager.service")
MAKE_RUN_UNIT = "trading-ops-make-run.service"
# The smoke subset, pure tests (no server of their own), few on purpose (a busy 2-core machine runs them in minutes):
# every pin installed at its locked version on this Python, and docker-compose v2 taking docker-compose.yml.
SMOKE_TESTS = (
    "tests/test_dependencies.py::test_this_environment_was_installed_with_the_constraints",
    "tests/test_dependencies.py::test_constraints_pin_every_dependency_of_the_test_environment_within_its_bounds",
    "tests/deploy/test_docker_compose.py",
)
SETUP_SECONDS = 1800.0
HEALTHY_SECONDS = 180.0
SMOKE_SECONDS = 900.0


@dataclass
class Timings:
    """Seconds per step, printed as JSON at the end of the run (the cold and warm figures of docs/development.md)."""

    steps: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def mark(self, step: str, since: float) -> float:
        now = time.monotonic()
        self.steps[step] = round(now - since, 1)
        return now


def copy_checkout(into: Path) -> None:
    """This checkout's files as a clone has them (tracked, and new files not ignored: no .venv, var/ or caches)."""
    listed = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if not source.is_file():  # removed in the work tree, not yet committed
            continue
        destination = into / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


@dataclass
class Debian13:
    machine: Machine
    ports: Ports
    timings: Timings
    overlay: Overlay
    venv_layer: Path  # where the virtualenv `make setup` installed is cached (tests/debian13_root.py)
    venv_cached: bool  # the machine started with it: `make setup` has nothing to do

    def shell(self, script: str, timeout: float) -> subprocess.CompletedProcess[str]:
        env = [f"{name}={os.environ[name]}" for name in CA_VARIABLES if name in os.environ]
        return self.machine.run(*ENV, *env, "sh", "-euc", script, check=False, timeout=timeout)


@pytest.fixture(scope="module")
def debian13(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Debian13]:
    for binary in ("systemd-nspawn", "nsenter", "git"):
        require_binary(binary)
    timings = Timings()
    root, layer = prepared_root()
    venv = venv_layer(root, layer, CHECKOUT)
    cached = venv_layer_complete(venv)
    start = timings.mark("cached root and run-deps layer", timings.started)
    tmp = tmp_path_factory.mktemp("debian13")
    home_cache = cache_dir().parent / "debian13-home-cache"
    home_cache.mkdir(parents=True, exist_ok=True)
    overlay = Overlay([venv, layer, root] if cached else [layer, root], tmp / "machine")
    machine: Machine | None = None
    try:
        merged = overlay.mount()
        copy_checkout(merged / CHECKOUT.lstrip("/"))
        if cached:
            # Installed by `make setup` from these very constraints.txt and pyproject.toml (the layer's key): up to
            # date for Make, whatever times the copy's files have.
            (merged / CHECKOUT.lstrip("/") / STAMP).touch()
        for unit in MASKED_UNITS:
            (merged / "etc/systemd/system" / unit).symlink_to("/dev/null")
        options = [f"--bind={home_cache}:/root/.cache"]
        if CA_BUNDLE.exists():
            options.append(f"--bind-ro={CA_BUNDLE}")
        machine = Machine(merged, tmp / "console.log", options=options)
        machine.boot()
        start = timings.mark("boot", start)
        ports = Ports(**{name: free_port() for name in PORT_ORDER})
        yield Debian13(machine, ports, timings, overlay, venv, cached)
    finally:
        try:
            if machine is not None:
                machine.run("systemctl", "stop", MAKE_RUN_UNIT, check=False, timeout=90)
                machine.poweroff()
        finally:
            overlay.unmount()
            timings.steps["total"] = round(time.monotonic() - timings.started, 1)
            print(json.dumps({"debian13_seconds": timings.steps}))


def deployment_page_packages() -> set[str]:
    """What the deployment pages' `apt-get install` lines install (docs/deploy-*.md, written for Debian 12 and 13)."""
    pages = sorted((REPO_ROOT / "docs").glob("deploy-*.md"))
    assert pages, "no docs/deploy-*.md"
    return {package for page in pages for package in apt_packages(page_blocks(page.read_text(encoding="utf-8")))}


def test_debian13_archive_has_every_package_the_makefile_and_the_deployment_pages_name(debian13: Debian13) -> None:
    """system-deps and run-deps name packages of Debian 13 too, and so do the deployment pages' installs (apt's lists
    of the trixie archive, in the layer)."""
    makefile = set(makefile_pairs("SYSTEM_DEPS").values()) | set(makefile_pairs("BENCH_DEPS").values())
    packages = sorted(makefile | deployment_page_packages())
    shown = debian13.machine.run("apt-cache", "show", "--no-all-versions", *packages, check=False, timeout=60)
    found = set(re.findall(r"^Package: (\S+)$", shown.stdout, re.MULTILINE))
    assert found == set(packages), f"not in Debian 13's archive: {sorted(set(packages) - found)}"


def test_make_setup_and_make_run_on_debian13(debian13: Debian13) -> None:
    """`make setup` installs every pin on Python 3.13, `make run`'s stack comes up healthy and trades, and the smoke
    subset passes there."""
    timings, ports = debian13.timings, debian13.ports
    python = debian13.machine.run("python3", "-V").stdout.strip()
    assert python.startswith("Python 3.13."), python

    start = time.monotonic()
    setup = debian13.shell(f"make -C {CHECKOUT} setup", SETUP_SECONDS)
    assert setup.returncode == 0, (setup.stdout + setup.stderr)[-3000:]
    if debian13.venv_cached:
        assert "Nothing to be done" in setup.stdout, setup.stdout[-1000:]
    start = timings.mark("make setup (the cached virtualenv)" if debian13.venv_cached else "make setup", start)
    if not debian13.venv_cached:
        save_venv_layer(debian13.overlay.upper, CHECKOUT, debian13.venv_layer)
        start = timings.mark("the virtualenv kept as a layer", start)

    up_args = " ".join(f"{port_option(name)}={getattr(ports, name)}" for name in PORT_ORDER)
    debian13.machine.run(
        "systemd-run",
        f"--unit={MAKE_RUN_UNIT}",
        f"--working-directory={CHECKOUT}",
        "--setenv=HOME=/root",
        "--setenv=LANG=C.UTF-8",
        "make",
        "run",
        f"UP_ARGS={up_args}",
    )

    def targets() -> list[dict[str, Any]] | None:
        try:
            active = get_json(ports.url("prometheus") + "/api/v1/targets")["data"]["activeTargets"]
        except OSError:
            return None
        return list(active) if active and all(t["health"] == "up" for t in active) else None

    def journal() -> str:
        return debian13.machine.journal(MAKE_RUN_UNIT)[-3000:]

    try:
        up = until("every Prometheus target of make run's stack up", targets, deadline=HEALTHY_SECONDS)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{journal()}") from None
    jobs = {t["labels"]["job"] for t in up}
    assert {"tradingbot", "trading-ops-reconciler", "alertmanager", "prometheus"} <= jobs, jobs
    start = timings.mark("make run: every target up", start)

    def submitted() -> float | None:
        query = urllib.parse.quote("sum(tradingbot_orders_submitted_total)")
        result = get_json(f"{ports.url('prometheus')}/api/v1/query?query={query}")["data"]["result"]
        value = float(result[0]["value"][1]) if result else 0.0
        return value if value > 0 else None

    until("the paper bot's orders seen by Prometheus", submitted, deadline=HEALTHY_SECONDS)
    for role, path in (("bot", "/healthz"), ("reconciler", "/readyz")):
        with urllib.request.urlopen(ports.url(role) + path, timeout=5) as resp:
            assert resp.status == 200, role
    start = timings.mark("make run: the bot trading", start)
    stopped = debian13.machine.run("systemctl", "stop", MAKE_RUN_UNIT, check=False, timeout=90)
    assert stopped.returncode == 0, stopped.stderr
    timings.mark("make run: stopped", start)

    start = time.monotonic()
    smoke = debian13.shell(
        f"cd {CHECKOUT} && .venv/bin/python -m pytest -p no:cacheprovider -q {' '.join(SMOKE_TESTS)}",
        SMOKE_SECONDS,
    )
    timings.mark("smoke subset", start)
    assert smoke.returncode == 0, (smoke.stdout + smoke.stderr)[-3000:]
    assert re.search(r"^\d+ passed", smoke.stdout.splitlines()[-1]), smoke.stdout[-500:]
