# The trading-ops image: the paper bot, the reconciler and every other `trading-ops` subcommand.
#   docker build -t trading-ops .   then   docker run --rm trading-ops --help
# Pinned to a patch release and a Debian release so a rebuild gets the same interpreter and libraries; bump both
# on purpose (the tests in tests/test_docker_compose.py require a full pin).
FROM python:3.11.17-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# OpenSSH's client, for the off-host copy of every backup (backup.remote), and PostgreSQL's client programs, for
# `trading-ops backup` of the compose stack's database (pg_dump -Fc, pg_restore):
# pg_dump must be at least the server's major version and Debian bookworm ships 15, so the client comes from the
# PostgreSQL project's apt repository (apt.postgresql.org; apt checks its signature against the project's key).
# Keep PG_MAJOR the major version of the postgres image in docker-compose.yml (tests/test_docker_compose.py checks
# it); the build fails unless pg_dump and pg_restore of that version are on PATH.
ARG PG_MAJOR=16
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && install -d /usr/share/postgresql-common/pgdg \
    && curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
        https://www.postgresql.org/media/keys/ACCC4CF8.asc \
    && . /etc/os-release \
    && echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt ${VERSION_CODENAME}-pgdg main" \
        > /etc/apt/sources.list.d/pgdg.list \
    && apt-get update \
    && apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}" openssh-client \
    && apt-get purge -y --auto-remove curl \
    && rm -rf /var/lib/apt/lists/* \
    && pg_dump --version | grep -q "(PostgreSQL) ${PG_MAJOR}\." \
    && pg_restore --version | grep -q "(PostgreSQL) ${PG_MAJOR}\."

WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY trading_ops ./trading_ops
# The versions the tests passed with (constraints.txt, written by `make lock`), and the PostgreSQL driver: the
# compose stack keeps its journal and ledger in PostgreSQL.
RUN pip install -c constraints.txt '.[postgres]' \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/trading-ops trading \
    && rm -rf /src

# Unprivileged; the data directory is a volume in docker-compose.yml.
USER trading
WORKDIR /var/lib/trading-ops
EXPOSE 9101 9102

ENTRYPOINT ["trading-ops"]
CMD ["--help"]
