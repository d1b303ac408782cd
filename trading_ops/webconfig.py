"""The web configuration of every HTTP server we ship (`web_config_file`), in the Prometheus exporter-toolkit's format
(TLS, mutual TLS, basic auth with bcrypt hashes), and the TLS of the clients that call those servers."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import re
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from trading_ops import secret_files
from trading_ops.config import ConfigError, TLSClientConfig
from trading_ops.durations import parse_duration

log = logging.getLogger(__name__)

# The exporter-toolkit's keys (docs/web-configuration.md); the ones trading-ops refuses say why in UNSUPPORTED.
TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit")
TLS_KEYS = (
    "cert",
    "key",
    "client_ca",
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "client_allowed_sans",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
)
HTTP_KEYS = ("http2", "headers")
SERVER_TLS = "tls_server_config"  # where a TLS problem is, in its messages
RATE_LIMIT_KEYS = ("interval", "burst")
UNSUPPORTED = {
    "cipher_suites": "not supported: the names are Go's; OpenSSL's defaults for the TLS version apply",
    "curve_preferences": "not supported: the names are Go's; OpenSSL's defaults apply",
}
# Go's tls.ClientAuthType names. Python's ssl module verifies every client certificate it asks for, so the two types
# that accept an unverified certificate map as follows: RequestClientCert does not ask (access is the same: a
# certificate it asked for would be neither checked nor used), RequireAnyClientCert is refused (it would need one).
VERIFY_MODES = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
CLIENT_AUTH_TYPES = ("NoClientCert", "RequestClientCert", "RequireAnyClientCert", *list(VERIFY_MODES)[2:])
TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# The response headers http_server_config.headers may set, and the values Go's exporter-toolkit allows for some.
HEADER_VALUES: dict[str, tuple[str, ...] | None] = {
    "Content-Security-Policy": None,
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-Content-Type-Options": ("nosniff",),
    "X-XSS-Protection": None,
    "Strict-Transport-Security": None,
}
BCRYPT_RE = re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")
# Compared against when the user is unknown, so an unknown user costs what a wrong password costs (bcrypt of "").
DUMMY_HASH = b"$2b$10$TRCoXo6OCW6voZcJrQ5Y6.XQxJRHjVAid1BrUIPug85AiRSUdeq5a"
# Successful checks are remembered (keyed by a SHA-256 of user, hash and password), as the exporter-toolkit does: a
# scrape every second does not pay bcrypt's ~70 ms each time.
AUTH_CACHE_SIZE = 256
BASIC_REALM = 'Basic realm="trading-ops"'


class AlertingSSLObject(ssl.SSLObject):
    """asyncio closes a connection whose handshake failed without sending what OpenSSL wrote for the client: the TLS
    alert that says why ("certificate required", "unknown ca"), so a client (Prometheus) saw only "EOF". When a failed
    handshake left an alert to send, the failure is first reported as "want read": asyncio flushes the alert, the
    client hangs up on it (or asyncio's handshake timeout ends the connection), and a later call raises the failure.
    A failure with nothing to send (plain HTTP on the TLS port) is raised at once. The server context's
    sslobject_class (a documented hook: SSLContext.wrap_bio, which asyncio uses, creates one per connection)."""

    _failure: ssl.SSLError | None = None
    _outgoing: ssl.MemoryBIO | None = None

    @classmethod
    def _create(cls, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, *args: Any, **kwargs: Any) -> Any:
        obj = super()._create(incoming, outgoing, *args, **kwargs)  # type: ignore[misc]
        obj._outgoing = outgoing
        return obj

    def do_handshake(self) -> None:
        if self._failure is not None:
            raise self._failure
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            if self._outgoing is None or not self._outgoing.pending:
                raise
            self._failure = exc
            log.debug("TLS handshake refused: %s", exc.reason or exc)
            raise ssl.SSLWantReadError("handshake failed: the alert goes out first") from exc


class WebConfigError(ValueError):
    """A problem with the file: `where` is the key inside it (tls_server_config.cert_file)."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}" if where else problem)


@dataclass
class WebConfig:
    """A loaded web_config_file: its TLS context (None: plain HTTP), basic-auth users, headers and rate limit."""

    source: Path
    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    allowed_sans: frozenset[str] | None = None
    # The files the TLS context was read from (certificate, key, client CA): a change is picked up (Reloader).
    tls_files: tuple[Path, ...] = ()
    rate_interval: float = 0.0
    rate_burst: int = 0

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"


WEB_CONFIG_KEY = web.AppKey("web_config", WebConfig)


def load_web_config(path: Path, *, load_files: bool = True) -> WebConfig:
    """Parse and validate the file at `path`; with `load_files`, also read its certificates and keys into the TLS
    context. Raises WebConfigError naming the key inside the file, OSError when the file cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise WebConfigError("", "not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise WebConfigError("", f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    data = {} if data is None else data
    _mapping(data, "(top level)", TOP_KEYS)
    config = WebConfig(source=path)
    tls = data.get("tls_server_config") or {}
    _mapping(tls, "tls_server_config", TLS_KEYS)
    http = data.get("http_server_config") or {}
    _mapping(http, "http_server_config", HTTP_KEYS)
    if "http2" in http and not isinstance(http["http2"], bool):
        raise WebConfigError("http_server_config.http2", f"expected true or false, got {http['http2']!r}")
    headers = http.get("headers") or {}
    _mapping(headers, "http_server_config.headers", tuple(HEADER_VALUES))
    for name, value in headers.items():
        allowed = HEADER_VALUES[name]
        if not isinstance(value, str) or (allowed is not None and value.lower() not in allowed):
            expected = f"one of {', '.join(allowed)}" if allowed else "a string"
            raise WebConfigError(f"http_server_config.headers.{name}", f"expected {expected}, got {value!r}")
        if value:
            config.headers[name] = value
    config.users = _users(data.get("basic_auth_users"))
    config.rate_interval, config.rate_burst = _rate_limit(data.get("rate_limit"))
    if tls:
        config.ssl_context, config.allowed_sans = _server_context(tls, path.parent, load_files)
        names = ("cert_file", "key_file", "client_ca_file")
        config.tls_files = tuple(
            Path(_path(tls[n], path.parent)) for n in names if isinstance(tls.get(n), str) and tls[n]
        )
        if load_files and config.ssl_context is not None:
            config.ssl_context.sni_callback = Reloader(config)
    return config


def _mapping(data: Any, where: str, known: Iterable[str]) -> None:
    known = tuple(known)
    if not isinstance(data, dict):
        raise WebConfigError(where, f"expected a mapping, got {type(data).__name__}")
    for key in data:
        if key not in known:
            raise WebConfigError(f"{where}.{key}" if where != "(top level)" else str(key), "unknown key")


def _string(data: dict[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise WebConfigError(f"{where}.{key}", f"expected a string, got {value!r}")
    return value


def _users(data: Any) -> dict[str, bytes]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise WebConfigError("basic_auth_users", f"expected a mapping of user: bcrypt hash, got {type(data).__name__}")
    users: dict[str, bytes] = {}
    for user, hashed in data.items():
        where = f"basic_auth_users.{user}"
        if not isinstance(user, str) or not user or ":" in user:
            raise WebConfigError(where, "a user name is a non-empty string without ':'")
        if not isinstance(hashed, str) or not BCRYPT_RE.match(hashed):
            raise WebConfigError(where, 'expected a bcrypt hash ($2y$10$... as `htpasswd -nBC 10 ""` prints it)')
        users[user] = hashed.encode()
    return users


def _rate_limit(data: Any) -> tuple[float, int]:
    if data is None:
        return 0.0, 0
    _mapping(data, "rate_limit", RATE_LIMIT_KEYS)
    try:
        interval = parse_duration(data.get("interval", 0))
    except ValueError as exc:
        raise WebConfigError("rate_limit.interval", str(exc)) from None
    burst = data.get("burst", 0)
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 0:
        raise WebConfigError("rate_limit.burst", f"expected a whole number of 0 or more, got {burst!r}")
    if interval > 0 and burst < 1:
        raise WebConfigError("rate_limit.burst", "must be at least 1 when rate_limit.interval is set")
    return interval, burst


@dataclass(frozen=True)
class _TLSSources:
    """Where the server's certificate, key and client CA come from: inline PEM (`cert`) or a file (`cert_file`)."""

    pem: dict[str, str]
    files: dict[str, str]

    @property
    def has_ca(self) -> bool:
        return bool(self.pem["client_ca"] or self.files["client_ca_file"])


def _server_context(tls: dict[str, Any], base: Path, load_files: bool) -> tuple[ssl.SSLContext, frozenset[str] | None]:
    for key, problem in UNSUPPORTED.items():
        if tls.get(key):
            raise WebConfigError(f"{SERVER_TLS}.{key}", problem)
    sources = _tls_sources(tls)
    auth = _client_auth_type(tls, sources.has_ca)
    allowed = _allowed_sans(tls, auth)
    min_version, max_version = _tls_versions(tls)
    prefer = tls.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise WebConfigError(f"{SERVER_TLS}.prefer_server_cipher_suites", f"expected true or false, got {prefer!r}")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.sslobject_class = AlertingSSLObject
    context.minimum_version, context.maximum_version = min_version, max_version
    if prefer:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    context.verify_mode = VERIFY_MODES[auth]
    if load_files:
        _load_server_files(context, sources, base)
    return context, allowed


def _tls_sources(tls: dict[str, Any]) -> _TLSSources:
    """The certificate, key and client CA, each given once, inline or as a file; the certificate and key required."""
    pem = {name: _string(tls, name, SERVER_TLS) for name in ("cert", "key", "client_ca")}
    files = {name: _string(tls, name, SERVER_TLS) for name in ("cert_file", "key_file", "client_ca_file")}
    for name in ("cert", "key", "client_ca"):
        if pem[name] and files[f"{name}_file"]:
            raise WebConfigError(f"{SERVER_TLS}.{name}_file", f"give only one of {name} and {name}_file")
    for name in ("cert", "key"):
        if not pem[name] and not files[f"{name}_file"]:
            raise WebConfigError(f"{SERVER_TLS}.{name}_file", f"missing: TLS needs {name}_file (or {name})")
    return _TLSSources(pem, files)


def _client_auth_type(tls: dict[str, Any], has_ca: bool) -> str:
    """The client_auth_type, one Python's TLS can serve, consistent with whether a client CA is given."""
    auth = _string(tls, "client_auth_type", SERVER_TLS) or "NoClientCert"
    if auth == "RequireAnyClientCert":
        raise WebConfigError(
            f"{SERVER_TLS}.client_auth_type",
            "RequireAnyClientCert (an unverified certificate) is not supported: Python's TLS verifies every client "
            "certificate it asks for; use RequireAndVerifyClientCert with client_ca_file",
        )
    if auth not in VERIFY_MODES:
        raise WebConfigError(
            f"{SERVER_TLS}.client_auth_type", f"expected one of {', '.join(CLIENT_AUTH_TYPES)}, got {auth!r}"
        )
    if has_ca and auth == "NoClientCert":
        raise WebConfigError(
            f"{SERVER_TLS}.client_ca_file", "a client CA without client_auth_type (RequireAndVerifyClientCert)"
        )
    if VERIFY_MODES[auth] != ssl.CERT_NONE and not has_ca:
        raise WebConfigError(f"{SERVER_TLS}.client_ca_file", f"missing: client_auth_type {auth} verifies against it")
    return auth


def _allowed_sans(tls: dict[str, Any], auth: str) -> frozenset[str] | None:
    """The client certificate SANs let in (None: any verified certificate)."""
    sans = tls.get("client_allowed_sans")
    if sans is None:
        return None
    if not isinstance(sans, list) or not all(isinstance(s, str) and s for s in sans):
        raise WebConfigError(f"{SERVER_TLS}.client_allowed_sans", "expected a list of strings")
    if auth != "RequireAndVerifyClientCert":
        raise WebConfigError(f"{SERVER_TLS}.client_allowed_sans", "needs client_auth_type RequireAndVerifyClientCert")
    return frozenset(_normal_san(s) for s in sans)


def _tls_versions(tls: dict[str, Any]) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    """min_version and max_version (TLS12 to TLS13 unless given), in order."""
    versions = {}
    for name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        value = _string(tls, name, SERVER_TLS) or default
        if value not in TLS_VERSIONS:
            raise WebConfigError(f"{SERVER_TLS}.{name}", f"expected TLS12 or TLS13, got {value!r}")
        versions[name] = TLS_VERSIONS[value]
    if versions["min_version"] > versions["max_version"]:
        raise WebConfigError(f"{SERVER_TLS}.min_version", "is above max_version")
    return versions["min_version"], versions["max_version"]


def _load_server_files(context: ssl.SSLContext, sources: _TLSSources, base: Path) -> None:
    """Load the certificate, key and client CA into `context`; an unreadable or bad one names its key."""
    pem, files = sources.pem, sources.files
    cert_file = _path(files["cert_file"], base)
    key_file = _path(files["key_file"], base)
    for name, value in files.items():
        if value and not os.access(_path(value, base), os.R_OK):
            raise WebConfigError(f"{SERVER_TLS}.{name}", f"cannot read {_path(value, base)}")
    if files["key_file"]:
        try:  # the server's private key its owner's alone, as PostgreSQL checks its ssl_key_file
            secret_files.check(key_file, f"{SERVER_TLS}.key_file")
        except secret_files.LooseSecretFile as exc:
            raise WebConfigError(exc.key, str(exc)) from None
    try:
        if pem["cert"] or pem["key"]:
            _load_inline_chain(context, pem["cert"], cert_file, pem["key"], key_file)
        else:
            context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        detail = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise WebConfigError(f"{SERVER_TLS}.cert_file", f"cannot load the certificate and key: {detail}") from None
    if not sources.has_ca:
        return
    ca_key = "client_ca_file" if files["client_ca_file"] else "client_ca"
    try:
        if files["client_ca_file"]:
            context.load_verify_locations(cafile=_path(files["client_ca_file"], base))
        else:
            context.load_verify_locations(cadata=pem["client_ca"])
    except (OSError, ssl.SSLError) as exc:
        detail = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise WebConfigError(f"{SERVER_TLS}.{ca_key}", f"cannot load the CA certificates: {detail}") from None


def _path(value: str, base: Path) -> str:
    """A path of the file, relative ones against the file's own directory (as the exporter-toolkit resolves them)."""
    if not value:
        return ""
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def _load_inline_chain(context: ssl.SSLContext, cert: str, cert_file: str, key: str, key_file: str) -> None:
    """load_cert_chain reads files only: inline PEM goes through a private temporary file, removed at once."""
    with tempfile.TemporaryDirectory(prefix="trading-ops-tls-") as tmp:
        if cert:
            cert_file = os.path.join(tmp, "cert.pem")
            Path(cert_file).write_text(cert)
        if key:
            key_file = os.path.join(tmp, "key.pem")
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(key)
        context.load_cert_chain(cert_file, key_file)


def _normal_san(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return value.strip()


class Reloader:
    """Serves renewed certificates without a restart, as the exporter-toolkit does (it rereads the file per request):
    at each new connection (OpenSSL's ClientHello callback, called with or without SNI), when the web configuration or
    a certificate, key or CA file it names has changed, the file is read again and the connection, and the next ones,
    get the new TLS context; basic_auth_users and client_allowed_sans follow. What cannot change on a connection
    already begun (client_auth_type, the TLS versions) applies from the next restart; a file that no longer loads is
    logged and the previous context kept (a renewal written half-way must not stop the server)."""

    def __init__(self, config: WebConfig) -> None:
        self.config = config
        self.context = config.ssl_context
        self._stamp = self._stamps()

    def _stamps(self) -> tuple[tuple[int, int] | None, ...]:
        stamps: list[tuple[int, int] | None] = []
        for path in (self.config.source, *self.config.tls_files):
            try:
                st = path.stat()
                stamps.append((st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def __call__(self, connection: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext) -> None:
        stamp = self._stamps()
        if stamp != self._stamp:
            self._stamp = stamp
            self._reload()
        if self.context is not None and connection.context is not self.context:
            connection.context = self.context

    def _reload(self) -> None:
        try:
            fresh = load_web_config(self.config.source)
        except (OSError, WebConfigError) as exc:
            log.error("web config %s not reloaded, the previous one stays: %s", self.config.source, exc)
            return
        if fresh.ssl_context is None:
            log.error("web config %s has no tls_server_config any more: restart to serve plain HTTP", fresh.source)
            return
        fresh.ssl_context.sni_callback = self
        self.context = fresh.ssl_context
        self.config.users, self.config.allowed_sans = fresh.users, fresh.allowed_sans
        self.config.tls_files = fresh.tls_files
        self._stamp = self._stamps()
        log.info("web config %s reloaded (certificates of new connections)", self.config.source)


# ---- the configuration's side: which file, loaded for which server ----------------------------------------------


def server_web_config(listen: Any, key: str, *, load_files: bool = True) -> WebConfig | None:
    """The web configuration of the server listening per `listen` (a ListenConfig at `key`, e.g. bot.listen), or None
    without one (plain HTTP as ever). Problems are a ConfigError naming `key`.web_config_file, the file and the key
    inside it."""
    if not listen.web_config_file:
        return None
    path = Path(listen.web_config_file)
    try:
        return load_web_config(path, load_files=load_files)
    except OSError as exc:
        raise ConfigError(f"{key}.web_config_file", f"cannot read {path}: {exc.strerror or exc}") from None
    except WebConfigError as exc:
        raise ConfigError(f"{key}.web_config_file", f"{path}: {exc}") from None


def client_ssl_context(tls: TLSClientConfig, key: str, *, load_files: bool = True) -> ssl.SSLContext | None:
    """The TLS context of a client (the reconciler's): CA to verify servers with, a certificate for mutual TLS. None
    when nothing is configured (https URLs then verify against the system's CAs, as before)."""
    if not (tls.ca_file or tls.cert_file or tls.key_file):
        return None
    if bool(tls.cert_file) != bool(tls.key_file):
        missing = "key_file" if tls.cert_file else "cert_file"
        raise ConfigError(f"{key}.{missing}", "cert_file and key_file go together (the client certificate and its key)")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if not load_files:
        return context
    if tls.ca_file:
        try:
            context.load_verify_locations(cafile=tls.ca_file)
        except (OSError, ssl.SSLError) as exc:
            detail = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
            raise ConfigError(f"{key}.ca_file", f"cannot load {tls.ca_file}: {detail}") from None
    if tls.cert_file:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ssl.SSLError) as exc:
            detail = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
            raise ConfigError(f"{key}.cert_file", f"cannot load the certificate and key: {detail}") from None
    return context


# ---- the server's side: basic auth, allowed SANs, headers, rate limit ------------------------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    """The user and password of a Basic Authorization header, None when it is absent or malformed."""
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


class _Guard:
    """What a web configuration asks of every request, except those of the routes that check a bearer token
    themselves (`bearer_routes`, by route prefix): basic auth there would take the same Authorization header."""

    def __init__(self, config: WebConfig, bearer_routes: tuple[str, ...]) -> None:
        self.config = config
        self.bearer_routes = bearer_routes
        self._ok: dict[bytes, None] = {}
        self._bcrypt = ThreadPoolExecutor(max_workers=1, thread_name_prefix="basic-auth")
        self._tokens = float(config.rate_burst)
        self._refilled = time.monotonic()

    def _is_bearer_route(self, request: web.Request) -> bool:
        resource = request.match_info.route.resource
        canonical = resource.canonical if resource is not None else ""
        return bool(canonical) and canonical.startswith(self.bearer_routes)

    def _rate_limited(self) -> float:
        """0 when the request may go (a token taken), else the seconds until the bucket holds a token again."""
        now = time.monotonic()
        self._tokens = min(
            float(self.config.rate_burst), self._tokens + (now - self._refilled) / self.config.rate_interval
        )
        self._refilled = now
        if self._tokens < 1:
            return (1 - self._tokens) * self.config.rate_interval
        self._tokens -= 1
        return 0.0

    async def _password_ok(self, header: str | None) -> bool:
        credentials = _basic_credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self.config.users.get(user)
        cache_key = hashlib.sha256(b"\0".join((user.encode(), hashed or b"", password.encode()))).digest()
        if hashed is not None and cache_key in self._ok:
            return True
        import bcrypt

        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._bcrypt, bcrypt.checkpw, password.encode(), hashed or DUMMY_HASH)
        if ok and hashed is not None:
            if len(self._ok) >= AUTH_CACHE_SIZE:
                self._ok.pop(next(iter(self._ok)))
            self._ok[cache_key] = None
            return True
        return False

    def _san_allowed(self, request: web.Request) -> bool:
        transport = request.transport
        cert = transport.get_extra_info("peercert") if transport is not None else None
        names = [_normal_san(value) for _kind, value in (cert or {}).get("subjectAltName", ())]
        assert self.config.allowed_sans is not None
        return any(hmac.compare_digest(n.encode(), a.encode()) for n in names for a in self.config.allowed_sans)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.config.rate_interval > 0 and (wait := self._rate_limited()):
            # RFC 6585: a 429 may say when to come back; whole seconds (RFC 9110's delay-seconds), at least one.
            retry = str(max(1, math.ceil(wait)))
            return web.Response(status=429, text="Too Many Requests\n", headers={"Retry-After": retry})
        if self.config.allowed_sans is not None and not self._san_allowed(request):
            log.warning("refused %s from %s: no allowed SAN in its client certificate", request.path, request.remote)
            return web.Response(status=403, text="client certificate not allowed\n")
        if self.config.users and not self._is_bearer_route(request):
            if not await self._password_ok(request.headers.get("Authorization")):
                return web.Response(status=401, text="Unauthorized\n", headers={"WWW-Authenticate": BASIC_REALM})
        return await handler(request)

    async def add_headers(self, _request: web.Request, response: web.StreamResponse) -> None:
        for name, value in self.config.headers.items():
            response.headers.setdefault(name, value)

    async def close(self, _app: web.Application) -> None:
        self._bcrypt.shutdown(wait=False, cancel_futures=True)


def secure_app(app: web.Application, config: WebConfig | None, bearer_routes: tuple[str, ...] = ()) -> None:
    """Apply `config` to `app` before it starts: basic auth on every route but `bearer_routes` (route prefixes such
    as "/control/"), the allowed client SANs, headers, rate limit. Without a configuration, nothing changes."""
    if config is None:
        return
    app[WEB_CONFIG_KEY] = config
    guard = _Guard(config, bearer_routes)
    # Always, even without users: a reloaded file may add them (Reloader).
    app.middlewares.insert(0, guard.middleware)
    if config.headers:
        app.on_response_prepare.append(guard.add_headers)
    app.on_cleanup.append(guard.close)


def app_ssl_context(app: web.Application) -> ssl.SSLContext | None:
    """The TLS context secure_app gave `app` (None: plain HTTP)."""
    config = app.get(WEB_CONFIG_KEY)
    return config.ssl_context if config is not None else None


def describe(config: WebConfig | None) -> str:
    """How a server serves, for its start-up log line."""
    if config is None:
        return "http"
    parts = [config.scheme]
    if config.ssl_context is not None and config.ssl_context.verify_mode == ssl.CERT_REQUIRED:
        parts.append("mutual TLS")
    if config.users:
        parts.append(f"basic auth ({len(config.users)} users)")
    return ", ".join(parts)
