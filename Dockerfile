# The trading-ops image: the paper bot, the reconciler and every other `trading-ops` subcommand.
#   docker build -t trading-ops .   then   docker run --rm trading-ops --help
# Debian bookworm with Debian's own Python 3.11 and PostgreSQL client: pinned to a Debian point release so a rebuild
# gets the same libraries (tests/deploy/test_docker_compose.py requires the pin); bump it on purpose. The compose test
# (tests/deploy/test_compose_real.py) builds this file on a real Docker engine from a debootstrap root of the same release.
FROM debian:12.15-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/trading-ops/bin:$PATH

# Python (a virtual environment: Debian's interpreter refuses pip installs into its own site-packages), OpenSSH's
# client for the off-host copy of every backup (backup.remote), and PostgreSQL's client programs for `trading-ops backup` of the compose stack's database (pg_dump -Fc, pg_restore).
# pg_dump must be at least the server's major version: Debian bookworm ships PostgreSQL 15, the postgres image of
# docker-compose.yml. Keep PG_MAJOR that image's major version (tests/deploy/test_docker_compose.py checks it); the build
# fails unless pg_dump and pg_restore of that version are on PATH.
ARG PG_MAJOR=15
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv "postgresql-client-${PG_MAJOR}" openssh-client \
    && rm -rf /var/lib/apt/lists/* \
    && pg_dump --version | grep -q "(PostgreSQL) ${PG_MAJOR}\." \
    && pg_restore --version | grep -q "(PostgreSQL) ${PG_MAJOR}\."

WORKDIR /src
# Offline builds (no package index reachable): put the wheels of constraints.txt in ./wheelhouse and build with
# --build-arg WHEELHOUSE=wheelhouse; pip then installs from there only (--no-index). Without it, from the index.
COPY wheelhouse ./wheelhouse
ARG WHEELHOUSE=
COPY pyproject.toml README.md constraints.txt ./
COPY trading_ops ./trading_ops
# The versions the tests passed with (constraints.txt, written by `make lock`), and the PostgreSQL driver: the
# compose stack keeps its journal and ledger in PostgreSQL; aiosmtpd for `trading-ops mailbox` (the local receiver).
RUN python3 -m venv /opt/trading-ops \
    && pip install ${WHEELHOUSE:+--no-index --find-links "$WHEELHOUSE"} -c constraints.txt '.[postgres,mailbox]' \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/trading-ops trading \
    && rm -rf /src

# Unprivileged; the data directory is a volume in docker-compose.yml.
USER trading
WORKDIR /var/lib/trading-ops
EXPOSE 9101 9102

ENTRYPOINT ["trading-ops"]
CMD ["--help"]
