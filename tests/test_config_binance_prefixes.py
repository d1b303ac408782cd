"""Order-id prefixes on Binance (trading_ops.config): its client order ids are at most 36 characters, so a bot's
prefix there is at most 16 (a derived one always is), and a longer configured one is refused in one line (exit 2)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from trading_ops.cli import main
from trading_ops.config import ConfigError, bot_order_id_prefix, load_config, order_id_prefix

BINANCE_CLIENT_ID = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
# The largest run stamp (milliseconds in hex) for centuries and a run's ten-millionth order.
LONGEST_RUN, LONGEST_COUNT = f"{2**44 - 1:x}", 9_999_999


def fleet(exchange: str, prefix: str = "") -> str:
    venue = {"exchange": exchange, "api_key_file": "key", "api_secret_file": "secret", "symbols": ["BTC-USD"]}
    if prefix:
        venue["order_id_prefix"] = prefix
    return yaml.safe_dump({"bots": [{"kind": "ccxt", "name": "bot-a", "instance": "10.0.0.1:9101", "venue": venue}]})


@pytest.mark.parametrize("name", ["b", "binance-production-east-1", "x" * 64])
def test_derived_prefixes_make_client_order_ids_binance_takes(name: str) -> None:
    prefix = order_id_prefix(name)
    assert BINANCE_CLIENT_ID.match(f"{prefix}-{LONGEST_RUN}-{LONGEST_COUNT}")


def test_a_configured_prefix_too_long_for_binance_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long = "binance-bot-prefix-17"
    path = tmp_path / "fleet.yaml"
    path.write_text(fleet("binance", long))
    with pytest.raises(ConfigError, match=r"bots\[0\]\.venue\.order_id_prefix: .* at most 16"):
        load_config(path)
    assert main(["--config", str(path), "config", "check"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    own = tmp_path / "bot.yaml"
    own.write_text(yaml.safe_dump({"ccxt": {"exchange": "binance"}, "bot": {"order_id_prefix": long}}))
    with pytest.raises(ConfigError, match=r"bot\.order_id_prefix: .* at most 16"):
        load_config(own)
    path.write_text(fleet("kraken", long))  # Kraken takes it
    assert load_config(path).bots[0].venue.order_id_prefix == long
    path.write_text(fleet("binance", "bin-bot-a"))
    config = load_config(path)
    config.bot.name = "bot-a"
    assert bot_order_id_prefix(config) == "bin-bot-a"


def two_bots(first: dict[str, str], second: dict[str, str]) -> str:
    """Two Binance bots, `binance-1` and `binance-2` (prefixes of their own, 16 characters each: client order ids of
    36), whose venues add `first` and `second` (the reconciler's key files, an `account`)."""
    bots = []
    for i, extra in enumerate((first, second), 1):
        venue = {"exchange": "binance", "symbols": ["BTC-USD"], "order_id_prefix": f"binance-bot-{i}-ab", **extra}
        bots.append({"kind": "ccxt", "name": f"binance-{i}", "instance": f"10.0.0.{i}:9101", "venue": venue})
    return yaml.safe_dump({"bots": bots})


KEY = {"api_key_file": "key", "api_secret_file": "secret"}


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (KEY, KEY),
        ({**KEY, "account": "main"}, {"api_key_file": "key-2", "api_secret_file": "secret-2", "account": "main"}),
    ],
    ids=["one reconciler key", "one named account"],
)
def test_two_bots_on_one_binance_account_are_refused_even_with_prefixes_of_their_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], first: dict[str, str], second: dict[str, str]
) -> None:
    """Binance has no dead man's switch for two bots to share, but its account's balances and order list are the
    account's: one account per bot on Binance too. Prefixes of their own (their client order ids of 36 characters,
    Binance's most) do not make two bots on one account acceptable: `config check` refuses in one line, exit 2,
    naming what to give each bot (a Binance sub-account, not Kraken's)."""
    longest = f"binance-bot-1-ab-{LONGEST_RUN}-{LONGEST_COUNT}"
    assert len(longest) == 36 and BINANCE_CLIENT_ID.match(longest)
    path = tmp_path / "fleet.yaml"
    path.write_text(two_bots(first, second))
    message = (
        "bots[1].venue: the binance account of bots[0] (binance-1): one account per bot (a Binance sub-account "
        "each), the reconciler holding a key of its own on it"
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)
    assert main(["--config", str(path), "config", "check"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"trading-ops: config: {message}"
    # Each on an account of its own (a sub-account, the reconciler's key on each): accepted.
    path.write_text(two_bots({**KEY, "account": "sub-1"}, {**KEY, "account": "sub-2"}))
    prefixes = [t.venue.order_id_prefix for t in load_config(path).reconciler.targets.values()]
    assert prefixes == ["binance-bot-1-ab", "binance-bot-2-ab"]
