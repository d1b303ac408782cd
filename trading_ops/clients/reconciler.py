"""The commands that decide (`reconciler approve|reject`, `ramp promote`, `clear-halt`, `readiness --record` and
`--stop-drill`, `reconciler pause|resume|retry|ack`, `reconciler circuits reset`, `maintenance start|end`) call the
reconciler's API with the person's own token, so the decision is recorded with the principal that authenticated (the
token's name in reconciler.api_tokens), never with a name typed on the command line.

The token is read from --token-file FILE, else from the file named by $TRADING_OPS_TOKEN_FILE, else from
$TRADING_OPS_TOKEN (the value itself). The reconciler is reached at --url, else reconciler.external_url, else the
configured listen address."""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from trading_ops.cli import UsageError, http_url
from trading_ops.config import Config

TOKEN_ENV = "TRADING_OPS_TOKEN"
TOKEN_FILE_ENV = "TRADING_OPS_TOKEN_FILE"
TIMEOUT_SECONDS = 60.0
MAX_ANSWER_BYTES = 1 << 20


class Unreachable(Exception):
    """The reconciler did not answer (one line: why)."""


def add_token_options(parser: Any) -> None:
    parser.add_argument(
        "--token-file",
        default=None,
        metavar="FILE",
        help=f"your own token of reconciler.api_tokens (default: the file ${TOKEN_FILE_ENV} names, else ${TOKEN_ENV})",
    )
    parser.add_argument(
        "--url", type=http_url, default=None, help="the reconciler (default: reconciler.external_url, else its listen)"
    )


def person_token(args: argparse.Namespace, what: str) -> str:
    """The person's token (UsageError, exit 2, when none is given or its file cannot be read)."""
    path = getattr(args, "token_file", None) or os.environ.get(TOKEN_FILE_ENV)
    if path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(f"{what}: cannot read the token file {path}: {exc.strerror}") from None
        if not token:
            raise UsageError(f"{what}: the token file {path} is empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise UsageError(
            f"{what}: needs your own token of reconciler.api_tokens (--token-file FILE, ${TOKEN_FILE_ENV} or "
            f"${TOKEN_ENV}): the decision is recorded under that token's name"
        )
    return token


def reconciler_url(config: Config, given: str | None) -> str:
    if given:
        return given.rstrip("/")
    rc = config.reconciler
    if rc.external_url:
        return rc.external_url.rstrip("/")
    host = "127.0.0.1" if rc.listen.host in ("0.0.0.0", "::", "") else rc.listen.host
    return f"http://{f'[{host}]' if ':' in host else host}:{rc.listen.port}"


def call(method: str, url: str, token: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON answer) of one request with the bearer token; Unreachable when nothing answered."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            status, raw = response.status, response.read(MAX_ANSWER_BYTES)
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read(MAX_ANSWER_BYTES)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        base = url.split("/api/", maxsplit=1)[0]
        raise Unreachable(f"the reconciler at {base} did not answer: {reason}") from None
    try:
        answer = json.loads(raw or b"{}")
    except ValueError:
        answer = {"error": raw[:200].decode("utf-8", "replace").strip() or f"HTTP {status}"}
    return status, answer if isinstance(answer, dict) else {"error": f"HTTP {status}"}


def ask(
    config: Config, args: argparse.Namespace, what: str, method: str, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """One request of a deciding command with the person's own token (UsageError, exit 2, without one): the JSON
    answer of a 200; None, with its one line on stderr (`trading-ops: WHAT: ...`), when the reconciler refused it or
    did not answer (exit 1 for the caller)."""
    import sys

    token = person_token(args, what)
    try:
        status, answer = call(method, f"{reconciler_url(config, getattr(args, 'url', None))}{path}", token, body)
    except Unreachable as exc:
        print(f"trading-ops: {what}: {exc}", file=sys.stderr)
        return None
    if status != 200:
        print(f"trading-ops: {what}: {answer.get('error') or f'HTTP {status}'}", file=sys.stderr)
        return None
    return answer
