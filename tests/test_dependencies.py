"""What gets installed: constraints.txt pins every package (used by the Makefile, CI and the Dockerfile), and
PostgreSQL's driver is the `postgres` extra: without it everything but a PostgreSQL URL works."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from secret_file import write_secret
from system_binaries import REPO_ROOT

from trading_ops.config import POSTGRESQL_DRIVER_MISSING

CONSTRAINTS = REPO_ROOT / "constraints.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)$")
# Runs the CLI as an installation without the `postgres` extra: `import psycopg` fails as if it were not installed.
WITHOUT_PSYCOPG = (
    "import sys\n"
    "sys.modules['psycopg'] = None\n"
    "from trading_ops.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "assert 'psycopg' not in sys.modules or sys.modules['psycopg'] is None\n"
    "sys.exit(code)\n"
)


def pyproject() -> dict[str, object]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def pins() -> dict[str, str]:
    """constraints.txt as {canonical name: version}; a line that is not `name==version` fails the test."""
    found = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"constraints.txt: not an exact pin: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in found, f"constraints.txt pins {name} twice"
        found[name] = match[2]
    return found


def requirements(*extras: str) -> list[Requirement]:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    listed = list(project["dependencies"])
    for extra in extras:
        listed += project["optional-dependencies"][extra]
    return [Requirement(r) for r in listed]


def test_constraints_pin_every_dependency_of_the_test_environment_within_its_bounds() -> None:
    pinned = pins()
    assert "pip" in pinned
    assert "trading-ops" not in pinned
    for requirement in requirements("test", "postgres", "mailbox"):
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is not in constraints.txt: run `make lock` and commit it"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {name}=={pinned[name]}, outside pyproject's {requirement}: run `make lock`"
        )


def test_this_environment_was_installed_with_the_constraints() -> None:
    """What `make setup` (and so CI) installed is exactly what constraints.txt says."""
    differ = {}
    for name, version in pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            differ[name] = (version, None)
            continue
        if installed != version:
            differ[name] = (version, installed)
    assert not differ, f"pinned vs installed: {differ} (run `make setup`)"


def test_makefile_and_dockerfile_install_with_the_constraints() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^\$\(STAMP\): .*\$\(CONSTRAINTS\)", makefile, re.MULTILINE), "setup must rerun on a new lock"
    installs = [line for line in makefile.splitlines() if "pip install" in line and "$(PY)" in line]
    assert installs and all("-c $(CONSTRAINTS)" in line for line in installs), installs
    assert "CONSTRAINTS := constraints.txt" in makefile
    assert "exec make test" in (REPO_ROOT / ".ci" / "run").read_text()
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "COPY pyproject.toml README.md constraints.txt" in dockerfile
    # From the package index, or from the wheelhouse of an offline build (--build-arg WHEELHOUSE): the same pins.
    # The image's extras: the PostgreSQL driver and `trading-ops mailbox` (the compose stack's local receiver).
    assert re.search(r"pip install \S*(?: \S+)*? -c constraints\.txt '\.\[postgres,mailbox\]'", dockerfile)
    assert "constraints.txt" not in (REPO_ROOT / ".dockerignore").read_text()


def test_psycopg_is_the_postgres_extra_not_a_core_dependency() -> None:
    core = {canonicalize_name(r.name) for r in requirements()}
    assert "psycopg" not in core
    project = pyproject()["project"]
    assert isinstance(project, dict)
    for extra in ("postgres", "test"):
        assert any(Requirement(r).name == "psycopg" for r in project["optional-dependencies"][extra]), extra


def run_without_psycopg(tmp_path: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "trading-ops.yaml"
    write_secret(tmp_path / "token", "a-token-long-enough-for-config-check")
    config.write_text(
        f"database:\n  url: {database_url}\nbot:\n  control_token_file: token\nreconciler:\n  token_file: token\n"
    )
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_PSYCOPG, "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )


def test_without_psycopg_sqlite_works(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    for args in (("config", "check"), ("db", "upgrade"), ("db", "check")):
        result = run_without_psycopg(tmp_path, url, *args)
        assert result.returncode == 0, (args, result.stderr)


@pytest.mark.parametrize(
    "args", [("config", "check"), ("db", "upgrade"), ("reconciler",), ("paper-bot",)], ids=" ".join
)
def test_without_psycopg_a_postgresql_url_is_one_clear_line(tmp_path: Path, args: tuple[str, ...]) -> None:
    for url in ("postgresql://trading@127.0.0.1:5432/trading", "postgresql+psycopg://trading@127.0.0.1:5432/x"):
        result = run_without_psycopg(tmp_path, url, *args)
        assert result.returncode == 2, result.stderr
        # The last line names the problem (the reconciler logs where it will listen before it opens the database).
        assert result.stderr.splitlines()[-1] == f"trading-ops: config: database.url: {POSTGRESQL_DRIVER_MISSING}"
        assert "Traceback" not in result.stderr and "psycopg" not in result.stderr.replace("psycopg driver", "")


@pytest.mark.slow
# A resolution of every extra (freqtrade's included) downloads metadata: 4-5 minutes on a new machine (pip's resolution,
# waiting on the index, 35 CPU-s), then uv's for Python 3.11 and 3.13: in `make test-deploy`, as a fresh install is.
@pytest.mark.deploy
@pytest.mark.timeout(720)
def test_make_lock_writes_exact_pins_of_a_fresh_install(tmp_path: Path) -> None:
    """`make lock` (into a scratch file here) pins what a fresh install of the project would get, resolved by pip
    without installing anything."""
    out = tmp_path / "constraints.txt"
    result = subprocess.run(
        ["make", "-s", "-C", str(REPO_ROOT), "lock", f"CONSTRAINTS={out}", f"PYTHON={sys.executable}"],
        capture_output=True,
        text=True,
        timeout=690,  # within the test's own 720 s
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in out.read_text().splitlines() if line and not line.startswith("#")]
    assert lines and all(PIN.match(line) for line in lines), lines
    fresh = {canonicalize_name(PIN.match(line)[1]) for line in lines}  # type: ignore[index]
    assert "pip" in fresh and "trading-ops" not in fresh and "setuptools" not in fresh
    assert {canonicalize_name(r.name) for r in requirements("test")} <= fresh
    # The committed file names the same packages (versions may have moved on since it was written).
    assert fresh == set(pins()), f"constraints.txt is stale: run `make lock` ({sorted(fresh ^ set(pins()))})"


def makefile_pairs(name: str) -> dict[str, str]:
    """The Makefile's `NAME := binary:package ...` as binary -> package."""
    text = (REPO_ROOT / "Makefile").read_text().replace("\\\n", " ")
    (line,) = re.findall(rf"^{name} := (.*)$", text, re.MULTILINE)
    return dict(pair.split(":", 1) for pair in line.split())


def test_system_deps_map_each_binary_to_the_package_the_tests_name() -> None:
    from system_binaries import DEBIAN_PACKAGES

    pairs = makefile_pairs("SYSTEM_DEPS")
    assert {b: p for b, p in DEBIAN_PACKAGES.items() if b in pairs} == pairs
    assert makefile_pairs("RUN_DEPS").items() <= pairs.items()
    assert set(makefile_pairs("RUN_DEPS").values()) == {"prometheus", "prometheus-alertmanager"}


@pytest.mark.parametrize(
    ("present", "asked"),
    [
        (("prometheus", "promtool", "prometheus-alertmanager"), "prometheus-alertmanager"),  # amtool's
        (("prometheus-alertmanager", "amtool"), "prometheus"),  # prometheus's and promtool's, once
    ],
)
def test_run_deps_installs_only_the_packages_of_the_missing_binaries(
    tmp_path: Path, present: tuple[str, ...], asked: str
) -> None:
    """`make run` installs what is missing for it, not the tests' whole list: here without apt-get on PATH, where it
    names the packages to install, one line each time."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for binary in present:
        (bin_dir / binary).symlink_to("/bin/true")
    done = subprocess.run(
        ["/usr/bin/make", "-s", "--no-print-directory", "-f", str(REPO_ROOT / "Makefile"), "run-deps"],
        cwd=tmp_path,
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert done.stdout.splitlines()[-1] == f"install them with: sudo apt-get install {asked}", done.stdout
