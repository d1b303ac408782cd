"""Signed decisions: what the reconciler signs (Ed25519) once people approved a widening of risk, and a bot verifies.

A decision says what was decided (kind), for which bot (and stage), who asked (the requester's principal), who
approved (the approvers' principals), the count rule that applied, when it was issued, until when it holds and a
unique id. On the wire it is `<payload>.<signature>`, both base64url without padding: the payload is the decision's
JSON, the signature Ed25519's over the payload's bytes. The bot trusts the public keys of its configuration
(bot.decision_keys), remembers every id it acted on (UsedDecisions, in its data dir) and refuses any other.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

if TYPE_CHECKING:
    from trading_ops.config import Config

# What a decision may allow: a ramp's next stage, a live start, and clearing a loss-limit halt.
RAMP_PROMOTE, LIVE_START, CLEAR_HALT = "ramp_promote", "live_start", "clear_halt"
KINDS = (RAMP_PROMOTE, LIVE_START, CLEAR_HALT)
# The payload's format; a bot refuses any other.
VERSION = 1
# What a decision decided with zero other approvers configured says (the audit, the ramp history, the verdict).
SELF_APPROVED = "approved by its requester (allowed by configuration)"
# A key written in the configuration itself (bot.decision_keys): this prefix, then the raw 32 bytes in base64.
INLINE_KEY_PREFIX = "ed25519:"
# A decision issued this far in the future of the bot's clock is refused (the two clocks disagree too much).
CLOCK_SKEW_SECONDS = 60.0
# Longest token a bot reads (a decision is about 500 bytes).
MAX_TOKEN_CHARS = 8192
# Most approvers a decision names, and the longest principal.
MAX_APPROVERS = 16
PRINCIPAL_MAX = 255
# The ids a bot acted on, in its data dir; each kept a day past its decision's expiry (then the expiry refuses it).
USED_FILE = "decisions-used.json"
USED_KEEP_SECONDS = 86_400.0


class DecisionRefused(Exception):
    """A decision the bot does not act on (one line: which check failed)."""


class DecisionKeyError(ValueError):
    """A key that cannot be read or is not an Ed25519 key (one line)."""


def count_rule(required: int) -> str:
    """The rule a decision was taken under, as the audit, the ramp history and the logs say it."""
    if required <= 0:
        return SELF_APPROVED
    return (
        f"approved by {required} other than its requester"
        if required == 1
        else (f"approved by {required} others than its requester")
    )


@dataclass(frozen=True)
class Decision:
    id: str
    kind: str
    bot: str
    requested_by: str
    approvers: tuple[str, ...]
    # How many principals other than the requester had to approve (0: the configuration allows the requester alone).
    required: int
    issued_at: float
    expires_at: float
    # The stage a ramp_promote takes ("" for the other kinds).
    stage: str = ""
    # The readiness record a live_start answers (0: none).
    record: int = 0
    # Which key signed it (key_id of its public key).
    key: str = ""
    version: int = VERSION
    rule: str = field(default="")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["approvers"] = list(self.approvers)
        return data

    def summary(self) -> str:
        """One line for the log: which decision, who asked, who approved, under which rule."""
        what = f"{self.kind} {self.bot}" + (f" to {self.stage}" if self.stage else "")
        what += f" (readiness record {self.record})" if self.record else ""
        return (
            f"decision {self.id}: {what}, requested by {self.requested_by}, approved by "
            f"{', '.join(self.approvers)} ({self.rule})"
        )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    """A short name of a public key (its raw bytes' SHA-256, 16 hex digits): which of a bot's keys signed."""
    return hashlib.sha256(_raw(public)).hexdigest()[:16]


# -- keys -----------------------------------------------------------------------------------------------------------
def load_private_key(pem: str | bytes, where: str = "the key") -> Ed25519PrivateKey:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise DecisionKeyError(f"{where} is not an unencrypted PEM private key ({str(exc)[:80]})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise DecisionKeyError(f"{where} is a {type(key).__name__.lstrip('_')}, not an Ed25519 private key")
    return key


def load_public_key(value: str, base_dir: Path | None = None, where: str = "the key") -> Ed25519PublicKey:
    """A trusted key as bot.decision_keys gives it: `ed25519:<base64 of the 32 raw bytes>`, or a PEM file's path
    (relative to `base_dir`)."""
    if value.startswith(INLINE_KEY_PREFIX):
        try:
            raw = base64.b64decode(value[len(INLINE_KEY_PREFIX) :], validate=True)
            return Ed25519PublicKey.from_public_bytes(raw)
        except (binascii.Error, ValueError):
            raise DecisionKeyError(
                f"{where}: not 32 bytes of an Ed25519 key in base64 after {INLINE_KEY_PREFIX}"
            ) from None
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DecisionKeyError(f"{where}: cannot read {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise DecisionKeyError(f"{where}: {path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise DecisionKeyError(f"{where}: {path} is not an Ed25519 public key")
    return key


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def inline_public_key(public: Ed25519PublicKey) -> str:
    """The key as it may be written in bot.decision_keys."""
    return INLINE_KEY_PREFIX + base64.b64encode(_raw(public)).decode("ascii")


def ensure_key_files(private_path: Path, public_path: Path) -> Ed25519PublicKey:
    """The reconciler's signing key in `private_path` (PEM, mode 600, its directory 700 when created) and its public
    key in `public_path`, generated when the private key is missing; the public file is rewritten from it."""
    if private_path.exists():
        key = load_private_key(private_path.read_bytes(), str(private_path))
    else:
        private_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
    public = key.public_key()
    text = public_pem(public)
    if not public_path.exists() or public_path.read_text(encoding="utf-8") != text:
        public_path.write_text(text, encoding="utf-8")
    return public


# -- signing (the reconciler) ---------------------------------------------------------------------------------------
class DecisionSigner:
    """Issues decisions under the reconciler's private key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key = key
        self.key_id = key_id(key.public_key())

    def issue(
        self,
        kind: str,
        bot: str,
        *,
        requested_by: str,
        approvers: list[str] | tuple[str, ...],
        required: int,
        ttl_seconds: float,
        stage: str = "",
        record: int = 0,
        now: float | None = None,
    ) -> tuple[Decision, str]:
        """(The decision, its signed token). ValueError when it could never be valid (an unknown kind, no
        approver, an approver count under `required`): the reconciler never signs what a bot must refuse."""
        if kind not in KINDS:
            raise ValueError(f"unknown decision kind {kind!r} (known: {', '.join(KINDS)})")
        people = tuple(dict.fromkeys(a.strip()[:PRINCIPAL_MAX] for a in approvers if a and a.strip()))
        requester = requested_by.strip()[:PRINCIPAL_MAX]
        problem = approval_problem(requester, people, required)
        if problem is not None:
            raise ValueError(problem)
        issued = time.time() if now is None else now
        decision = Decision(
            id=secrets.token_hex(16),
            kind=kind,
            bot=bot,
            requested_by=requester,
            approvers=people,
            required=max(0, required),
            issued_at=issued,
            expires_at=issued + ttl_seconds,
            stage=stage,
            record=record,
            key=self.key_id,
            rule=count_rule(required),
        )
        payload = json.dumps(decision.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return decision, f"{_b64(payload)}.{_b64(self.key.sign(payload))}"


def approval_problem(requester: str, approvers: tuple[str, ...], required: int) -> str | None:
    """Why these approvers do not make a decision under the count rule `required`, or None."""
    problem = None
    if not requester or not approvers:
        problem = "no requester" if not requester else "no approver"
    elif len(approvers) > MAX_APPROVERS:
        problem = f"more than {MAX_APPROVERS} approvers"
    elif required > 0 and requester in approvers:
        problem = f"its requester ({requester}) approved it, and {required} other approval(s) are required"
    elif required > 0 and len(approvers) < required:
        problem = f"{len(approvers)} approver(s), {required} other than the requester required"
    return problem


def config_signer(config: Config) -> DecisionSigner | None:
    """The signer of reconciler.decision_key (decision_key_file or _env), or None when none is configured;
    ConfigError when it cannot be read or is no Ed25519 private key."""
    from trading_ops.config import ConfigError, resolve_secret

    pem = resolve_secret(config, config.reconciler, "decision_key", "reconciler.decision_key")
    if not pem:
        return None
    try:
        return DecisionSigner(load_private_key(pem, "reconciler.decision_key"))
    except DecisionKeyError as exc:
        raise ConfigError("reconciler.decision_key_file", str(exc)) from None


# -- verifying (the bot) --------------------------------------------------------------------------------------------
class UsedDecisions:
    """The ids of the decisions a bot acted on, durable in its data dir (written and fsynced before the change it
    allows): a decision is acted on once."""

    def __init__(self, data_dir: Path, wall: Any = time.time) -> None:
        self.path = Path(data_dir) / USED_FILE
        self.wall = wall
        self.used: dict[str, float] = {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                self.used = {str(k): float(v) for k, v in data.items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError):
            # An unreadable file remembers nothing: every decision still expires (minutes), and a lost id can only be
            # used again until then.
            self.used = {}

    def seen(self, decision_id: str) -> bool:
        return decision_id in self.used

    def remember(self, decision_id: str, expires_at: float) -> None:
        """An id another durable record keeps (the ramp's state file): known here, not written here."""
        self.used[decision_id] = expires_at

    def spend(self, decision: Decision) -> None:
        """Remember `decision` (durable before this returns); old ids are forgotten a day past their expiry."""
        now = self.wall()
        kept = {k: v for k, v in self.used.items() if v + USED_KEEP_SECONDS > now}
        kept[decision.id] = decision.expires_at
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(kept))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self.used = kept


class DecisionVerifier:
    """Checks a decision token against the trusted keys, what it must allow and the clock; and spends it once."""

    def __init__(self, keys: list[Ed25519PublicKey], used: UsedDecisions | None, wall: Any = time.time) -> None:
        self.keys = {key_id(k): k for k in keys}
        self.used = used
        self.wall = wall

    def verify(self, token: Any, kind: str, bot: str, stage: str | None = None, *, check_time: bool = True) -> Decision:
        """The decision `token` carries when it is signed by a trusted key and allows `kind` for `bot` (and `stage`)
        now, unspent; DecisionRefused (one line) otherwise. Nothing is spent here: `spend` once the change is sure.
        `check_time` False: neither its expiry nor whether it was spent is looked at (a live start's decision, read
        again when the bot restarts)."""
        if not self.keys:
            raise DecisionRefused(f"{kind}: this bot trusts no decision key (bot.decision_keys)")
        decision = _decision(self._signed(token, kind), kind)
        if decision.kind != kind:
            raise DecisionRefused(f"{kind}: the decision allows {decision.kind[:32]}, not {kind}")
        if decision.bot != bot:
            raise DecisionRefused(f"{kind}: the decision is for bot {decision.bot[:64]!r}, not {bot!r}")
        if stage is not None and decision.stage != stage:
            raise DecisionRefused(f"{kind}: the decision is for stage {decision.stage[:64]!r}, not {stage[:64]!r}")
        problem = approval_problem(decision.requested_by, decision.approvers, decision.required)
        if problem is not None:
            raise DecisionRefused(f"{kind}: decision {decision.id}: {problem}")
        if not check_time:
            return decision
        now = self.wall()
        if decision.expires_at <= now:
            raise DecisionRefused(f"{kind}: decision {decision.id} expired {now - decision.expires_at:.0f} s ago")
        if decision.issued_at > now + CLOCK_SKEW_SECONDS:
            raise DecisionRefused(f"{kind}: decision {decision.id} is issued in the future (the clocks disagree)")
        if self.used is not None and self.used.seen(decision.id):
            raise DecisionRefused(f"{kind}: decision {decision.id} was acted on already (replayed)")
        return decision

    def _signed(self, token: Any, kind: str) -> dict[str, Any]:
        """The payload of `token` once its signature verifies under a trusted key; DecisionRefused otherwise."""
        if not isinstance(token, str) or not token:
            raise DecisionRefused(f'{kind} needs a signed decision ("decision"), issued by the reconciler')
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
            raise DecisionRefused(f"{kind}: the decision is not a signed decision (<payload>.<signature>)")
        head, sig = token.split(".")
        try:
            payload, signature = _unb64(head), _unb64(sig)
            data = json.loads(payload)
        except (binascii.Error, ValueError):
            raise DecisionRefused(f"{kind}: the decision is not a signed decision (<payload>.<signature>)") from None
        if not isinstance(data, dict):
            raise DecisionRefused(f"{kind}: the decision's payload is not an object")
        public = self.keys.get(str(data.get("key", "")))
        if public is None:
            raise DecisionRefused(
                f"{kind}: the decision is signed by key {str(data.get('key'))[:20]!r}, not one this "
                "bot trusts (bot.decision_keys)"
            )
        try:
            public.verify(signature, payload)
        except InvalidSignature:
            raise DecisionRefused(f"{kind}: the decision's signature does not verify (forged or altered)") from None
        return data

    def spend(self, decision: Decision) -> None:
        if self.used is not None:
            self.used.spend(decision)


def _decision(data: dict[str, Any], kind: str) -> Decision:
    """The payload's fields, typed; DecisionRefused naming the first wrong one."""

    def text(name: str, limit: int = PRINCIPAL_MAX) -> str:
        value = data.get(name, "")
        if not isinstance(value, str) or len(value) > limit:
            raise DecisionRefused(f"{kind}: the decision's {name} is not a text")
        return value

    def number(name: str) -> float:
        value = data.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DecisionRefused(f"{kind}: the decision's {name} is not a number")
        return float(value)

    if data.get("version") != VERSION:
        raise DecisionRefused(f"{kind}: the decision's version is {str(data.get('version'))[:8]}, not {VERSION}")
    approvers = data.get("approvers")
    if not isinstance(approvers, list) or not all(isinstance(a, str) and a for a in approvers):
        raise DecisionRefused(f"{kind}: the decision's approvers are not a list of principals")
    return Decision(
        id=text("id", 64),
        kind=text("kind", 32),
        bot=text("bot", 128),
        requested_by=text("requested_by"),
        approvers=tuple(approvers),
        required=int(number("required")),
        issued_at=number("issued_at"),
        expires_at=number("expires_at"),
        stage=text("stage", 64),
        record=int(number("record")),
        key=text("key", 32),
        rule=text("rule"),
    )
