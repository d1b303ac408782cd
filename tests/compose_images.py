"""The images the compose deployment test runs on a real Docker engine where no registry is reachable.

- The Dockerfile's base (`FROM debian:12.N-slim`): a debootstrap bookworm root (tests/debian_root.py) imported under
  that name. It holds the packages the Dockerfile installs with apt (Debian's python3, python3-venv, the
  PostgreSQL client and OpenSSH's client), and no apt sources: the build has no network, and `apt-get install` of
  what a root already holds succeeds offline. The image is then built from the Dockerfile as shipped.
- Python packages: the wheelhouse of constraints.txt's pins for Debian's Python 3.11 (tests/debian_root.py's, which the
  systemd test's virtualenv is installed from too) given to the build with `--build-arg WHEELHOUSE=wheelhouse` (the
  Dockerfile's offline path).
- PostgreSQL and the node exporter: Debian bookworm's packages (postgresql-15, prometheus-node-exporter) in one
  debootstrap root, and a small image per service from it (its entrypoint and user); the compose override of the test
  names these images instead of the registry's. The postgres image's entrypoint takes what docker-compose.yml gives the
  official one (POSTGRES_USER, POSTGRES_DB, POSTGRES_PASSWORD_FILE, the data in /var/lib/postgresql/data, started as
  root and switching to the postgres user).
- Prometheus and Alertmanager: the versions docker-compose.yml pins (3.5.3, 0.33.1), Debian sid's packages that
  tests/monitoring_lts.py pins by sha256 and unpacks (dpkg-deb -x) into its cache for the host's tests: each image
  is the same root with its package's files from that cache copied over it, so the packages are fetched once per
  machine and a change of the pins (a new cache) changes the build's input, and with it the image. Bookworm's 2.42 /
  0.25 are not in the root: nothing of the older generation can answer in their place.
- The node exporter: bookworm's 1.5.0, where the file pins 1.11.1 (the same major version; no package of 1.11 is
  pinned here, tests/monitoring_lts.py has Prometheus's and Alertmanager's only). What the compose test asks of it, its
  /metrics scraped and healthy, has not changed since 1.0; NODE_EXPORTER_RUNS is the version the test checks runs.
- Grafana has no Debian package (nor any other source here without a registry): the test does not run it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import monitoring_lts
from debian_root import debian_root, root_key
from docker_engine import DockerEngine
from system_binaries import LTS, REPO_ROOT

# What the Dockerfile installs with apt (its PG_MAJOR: Debian bookworm's PostgreSQL; OpenSSH's client for the
# off-host backup copy). test_the_base_image_holds_what_the_dockerfile_installs keeps the two lists one.
BASE_PACKAGES = ("python3", "python3-venv", "postgresql-client-15", "openssh-client")
SERVICE_PACKAGES = ("postgresql-15", "prometheus-node-exporter", "wget")
# The node exporter the image runs (bookworm's prometheus-node-exporter), which the compose test checks it is.
NODE_EXPORTER_RUNS = "1.5.0"
# The files each LTS image takes from the unpacked packages (tests/monitoring_lts.py's cache), by package: the
# server, and what its package ships beside it that the server reads (the web UI's place, the notification templates).
LTS_FILES = {
    "prometheus": ("usr/bin/prometheus", "usr/share/prometheus/web"),
    "alertmanager": ("usr/bin/prometheus-alertmanager", "usr/share/prometheus/alertmanager"),
}
FROM_LINE = re.compile(r"^FROM (\S+)$", re.MULTILINE)
POSTGRES_ENTRYPOINT = r"""#!/bin/sh
# What docker-compose.yml gives the official postgres image: POSTGRES_USER, POSTGRES_DB, POSTGRES_PASSWORD_FILE (read
# as root, as the official entrypoint does), the data in /var/lib/postgresql/data; the server runs as postgres.
set -eu
export PGDATA=/var/lib/postgresql/data
if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    POSTGRES_PASSWORD="$(cat "$POSTGRES_PASSWORD_FILE")"
    export POSTGRES_PASSWORD
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    echo "CREATE DATABASE \"$POSTGRES_DB\";" | postgres --single -D "$PGDATA" postgres >/dev/null
fi
unset POSTGRES_PASSWORD
exec postgres -c listen_addresses='*' -c unix_socket_directories=/var/run/postgresql
"""

# Each service image: the lines after FROM (the imported services root).
SERVICE_IMAGES = {
    "postgres": (
        "trading-ops-test/postgres:15",
        [
            "ENV PATH=/usr/lib/postgresql/15/bin:$PATH",
            "COPY entrypoint.sh /usr/local/bin/docker-entrypoint.sh",
            "RUN chmod 755 /usr/local/bin/docker-entrypoint.sh"
            " && install -d -o postgres -g postgres -m 700 /var/lib/postgresql/data",
            "STOPSIGNAL SIGINT",
            'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]',
            'CMD ["postgres"]',
        ],
    ),
    "prometheus": (
        f"trading-ops-test/prometheus:{monitoring_lts.PROMETHEUS_VERSION}",
        [
            "COPY lts/ /",
            "RUN install -d -o nobody -g nogroup /prometheus",
            "USER nobody",
            "WORKDIR /prometheus",
            'ENTRYPOINT ["/usr/bin/prometheus"]',
        ],
    ),
    "alertmanager": (
        f"trading-ops-test/alertmanager:{monitoring_lts.ALERTMANAGER_VERSION}",
        [
            "COPY lts/ /",
            "RUN install -d -o nobody -g nogroup /alertmanager && install -d /etc/alertmanager/secrets",
            "USER nobody",
            "WORKDIR /alertmanager",
            'ENTRYPOINT ["/usr/bin/prometheus-alertmanager"]',
        ],
    ),
    "node-exporter": (
        f"trading-ops-test/node-exporter:{NODE_EXPORTER_RUNS}",
        ["USER nobody", 'ENTRYPOINT ["/usr/bin/prometheus-node-exporter"]'],
    ),
}


def base_image_name() -> str:
    found = FROM_LINE.search((REPO_ROOT / "Dockerfile").read_text())
    assert found, "the Dockerfile has no FROM line"
    return found.group(1)


def ensure_base_image(engine: DockerEngine) -> str:
    """The Dockerfile's base image, imported from the cached root (re-imported when the root's key changes)."""
    name = base_image_name()
    root = debian_root(BASE_PACKAGES)
    engine.import_root(root, name, made_key(root, BASE_PACKAGES), changes=['CMD ["bash"]'])
    return name


def made_key(root: Path, packages: tuple[str, ...]) -> str:
    """A root's cache key and when it was made: a root made anew (its cache deleted, newer packages) is imported
    anew."""
    return f"{root_key(packages)}-{(root / '.complete').stat().st_mtime_ns}"


def copy_lts_files(service: str, into: Path) -> None:
    """The files of the service's LTS package, from the unpacked cache (`make monitoring-lts`; a missing one fails the
    test in one line saying so), into `into` as they lie under the image's root."""
    LTS.binary(Path(LTS_FILES[service][0]).name)
    cache = monitoring_lts.CACHE
    shutil.rmtree(into, ignore_errors=True)
    for relative in LTS_FILES[service]:
        source, target = cache / relative, into / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copy2(source, target)


def ensure_service_images(engine: DockerEngine, workdir: Path) -> dict[str, str]:
    """service name -> image, built from the imported services root. Docker's build cache makes a rebuild with
    unchanged inputs a no-op, and a changed one (a new root, a changed entrypoint, other LTS packages) rebuilds."""
    root = debian_root(SERVICE_PACKAGES)
    root_image = f"trading-ops-test/debian-services:{root_key(SERVICE_PACKAGES).rsplit('-', 1)[1]}"
    engine.import_root(root, root_image, made_key(root, SERVICE_PACKAGES))
    images = {}
    for service, (image, lines) in SERVICE_IMAGES.items():
        context = workdir / f"image-{service}"
        context.mkdir(parents=True, exist_ok=True)
        (context / "Dockerfile").write_text("\n".join([f"FROM {root_image}", *lines]) + "\n")
        if service == "postgres":
            (context / "entrypoint.sh").write_text(POSTGRES_ENTRYPOINT)
        if service in LTS_FILES:
            copy_lts_files(service, context / "lts")
        engine.docker("build", "--network=none", "-q", "-t", image, str(context))
        images[service] = image
    return images
