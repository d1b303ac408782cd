# The trading-ops image: the paper bot, the reconciler and every other `trading-ops` subcommand.
#   docker build -t trading-ops .   then   docker run --rm trading-ops --help
# Pinned to a patch release and a Debian release so a rebuild gets the same interpreter and libraries; bump both
# on purpose (the tests in tests/test_docker_compose.py require a full pin).
FROM python:3.11.17-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

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
