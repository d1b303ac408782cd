"""Order-id prefixes on Binance (trading_ops.config): its client order ids are at most 36 characters, so a bot's
prefix there is at most 16 (a derived one always is), and a longer configured one is refused in one line (exit 2).
Two bots may share one Binance account (no dead man's switch there) with prefixes and base assets of their own."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from trading_ops.cli import main
from trading_ops.config import ConfigError, bot_order_id_prefix, load_config, order_id_prefix, shared_account

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


def two_bots(first: dict[str, Any], second: dict[str, Any], symbols: tuple[str, str] = ("BTC-USD", "ETH-USD")) -> str:
    """Two Binance bots, `binance-1` and `binance-2` (prefixes of their own, 16 characters each: client order ids of
    36), trading `symbols` (one each), whose venues add `first` and `second` (the reconciler's key files, an
    `account`)."""
    bots = []
    for i, (extra, symbol) in enumerate(zip((first, second), symbols, strict=True), 1):
        venue = {"exchange": "binance", "symbols": [symbol], "order_id_prefix": f"binance-bot-{i}-ab", **extra}
        bots.append({"kind": "ccxt", "name": f"binance-{i}", "instance": f"10.0.0.{i}:9101", "venue": venue})
    return yaml.safe_dump({"bots": bots})


KEY = {"api_key_file": "key", "api_secret_file": "secret"}
ONE_ACCOUNT = [
    (KEY, KEY),
    ({**KEY, "account": "main"}, {"api_key_file": "key-2", "api_secret_file": "secret-2", "account": "main"}),
]


def refused(path: Path, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`load_config` raises `message`; `config check` says it in one line, exit 2."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)
    assert main(["--config", str(path), "config", "check"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"trading-ops: config: {message}"


@pytest.mark.parametrize(("first", "second"), ONE_ACCOUNT, ids=["one reconciler key", "one named account"])
def test_two_bots_share_one_binance_account_with_prefixes_and_base_assets_of_their_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], first: dict[str, str], second: dict[str, str]
) -> None:
    """Binance spot has no dead man's switch for two bots to share, and a bot there asks for its orders, trades and
    cancels per symbol: two bots on one account are accepted when each is told by its prefix (their client order
    ids of 36 characters, Binance's most) and they trade base assets of their own (BTC and ETH; the quote asset, USD,
    is the account's). The reconciler's targets keep each bot's prefix for its venue step."""
    longest = f"binance-bot-1-ab-{LONGEST_RUN}-{LONGEST_COUNT}"
    assert len(longest) == 36 and BINANCE_CLIENT_ID.match(longest)
    path = tmp_path / "fleet.yaml"
    path.write_text(two_bots(first, second))
    config = load_config(path)
    assert [t.venue.order_id_prefix for t in config.reconciler.targets.values()] == [
        "binance-bot-1-ab",
        "binance-bot-2-ab",
    ]
    for name in ("binance-1", "binance-2"):  # each bot's runtime knows it shares its account
        config.bot.name, config.ccxt.exchange = name, "binance"
        config.ccxt.symbols = ["BTC-USD"] if name == "binance-1" else ["ETH-USD"]
        assert shared_account(config)
    config.bot.name = "binance-3"  # a bot not listed: its own account unless it says otherwise
    assert not shared_account(config)
    config.ccxt.shared_account = True
    assert shared_account(config)


@pytest.mark.parametrize(("first", "second"), ONE_ACCOUNT, ids=["one reconciler key", "one named account"])
def test_two_bots_on_one_binance_account_trading_one_base_asset_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], first: dict[str, str], second: dict[str, str]
) -> None:
    """A spot position is the account's balance of its base asset: two bots on one account both trading BTC (BTC-USD
    and BTC-EUR alike) would read each other's fills as their own position. Refused in one line, exit 2, naming
    the rule; each on an account of its own (a sub-account, the reconciler's key on each), accepted."""
    path = tmp_path / "fleet.yaml"
    for symbols in (("BTC-USD", "BTC-USD"), ("BTC-USD", "BTC-EUR")):
        path.write_text(two_bots(first, second, symbols))
        refused(
            path,
            "bots[1].venue.symbols: BTC is a base asset of bots[0] (binance-1) too, on the binance account they "
            "share: bots on one account trade base assets of their own (a spot position is the account's balance of "
            "its base asset)",
            capsys,
        )
    path.write_text(two_bots({**KEY, "account": "sub-1"}, {**KEY, "account": "sub-2"}, ("BTC-USD", "BTC-USD")))
    prefixes = [t.venue.order_id_prefix for t in load_config(path).reconciler.targets.values()]
    assert prefixes == ["binance-bot-1-ab", "binance-bot-2-ab"]


def test_a_bot_sharing_a_binance_account_must_be_told_by_its_prefix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`orders: account` (every open order of the account is the bot's, as for freqtrade) on a shared account would
    make its venue step cancel the other bot's orders: refused in one line, whichever of the two says it."""
    path = tmp_path / "fleet.yaml"
    for i in (0, 1):
        extra = [dict(KEY), dict(KEY)]
        extra[i]["orders"] = "account"
        path.write_text(two_bots(*extra))
        refused(
            path,
            f"bots[{i}].venue.orders: account on the binance account bots[1] and bots[0] share: a venue step would "
            "cancel every bot's orders there (bots sharing an account are told by their prefixes: orders: prefix)",
            capsys,
        )


def test_the_running_bot_on_a_shared_account_trades_no_base_asset_of_another(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bot this file runs (`bot.name` binance-2, whose entry trades ETH) given `ccxt.symbols` with BTC, the other
    bot's base asset on their account: refused in one line."""
    doc = yaml.safe_load(two_bots(KEY, KEY))
    doc["bot"] = {"name": "binance-2"}
    doc["ccxt"] = {"exchange": "binance", "symbols": ["ETH-USD", "BTC-USD"]}
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc))
    refused(
        path,
        "ccxt.symbols: BTC is a base asset of bots[0] (binance-1) too, on the binance account this bot shares with "
        "it: bots on one account trade base assets of their own (a spot position is the account's balance of its "
        "base asset)",
        capsys,
    )
    doc["ccxt"]["symbols"] = ["ETH-USD"]
    path.write_text(yaml.safe_dump(doc))
    assert shared_account(load_config(path))


def test_shared_account_is_refused_where_the_account_has_a_dead_mans_switch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ccxt.shared_account: true` on Kraken: its dead man's switch (CancelAllOrdersAfter) and its balances are the
    account's. Two Kraken bots on one account stay refused with the line they always had (tests/test_config.py)."""
    path = tmp_path / "bot.yaml"
    path.write_text(yaml.safe_dump({"ccxt": {"exchange": "kraken", "shared_account": True}}))
    refused(
        path,
        "ccxt.shared_account: kraken accounts are one per bot: their dead man's switch and balances are the "
        "account's (a Kraken subaccount each)",
        capsys,
    )
