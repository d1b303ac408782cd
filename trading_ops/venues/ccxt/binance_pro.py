"""ccxt.pro's stock binance client, its behaviour untouched, that also tells the bot what its user data stream does:
each account event it handles (the stream speaks), the venue's ack of a subscription, and the venue's end of one
(`eventStreamTerminated` on the WebSocket API, `listenKeyExpired` on a listen key's stream). Stock ccxt.pro 4.5.90
forgets an ended subscription but leaves its watchers waiting on a stream nobody subscribes again: a user stream that
lapsed stays silent until something new watches it. With these hooks ProFills subscribes again at once, counts the
end (`tradingbot_stream_subscription_ends_total`) and times the channel's silence by the events it hears."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ccxt.pro as ccxt_pro
from ccxt.base.errors import BaseError, ExchangeError

# Events of the account's user data stream (each one is the stream speaking; executionReport follows every order the
# venue takes, cancels or fills, outboundAccountPosition every change of its balances).
USER_EVENTS = frozenset({"executionReport", "outboundAccountPosition", "balanceUpdate", "externalLockUpdate"})
# How the venue ends a user data stream: the WebSocket API's subscription, a listen key's stream.
ENDS = frozenset({"eventStreamTerminated", "listenKeyExpired"})


def event_of(message: Any) -> str | None:
    """The event type (`e`) of a user data stream message, raw or wrapped by the WebSocket API (`event`)."""
    if not isinstance(message, dict):
        return None
    inner = message.get("event")
    body = inner if isinstance(inner, dict) else message
    kind = body.get("e")
    return kind if isinstance(kind, str) else None


class UserStreamBinance(ccxt_pro.binance):  # type: ignore[misc]
    """ccxt.pro's binance that calls `on_user_event()` after each account event it handled and
    `on_subscription(held)` when the venue acks (True) or ends (False) the user data stream's subscription."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config or {})
        self.on_user_event: Callable[[], None] | None = None
        self.on_subscription: Callable[[bool], None] | None = None

    def handle_message(self, client: Any, message: Any) -> None:
        kind = event_of(message)
        if kind in ENDS:
            held = self.get_account_type_from_subscriptions(list(client.subscriptions.keys()))  # '' for none
            if kind == "eventStreamTerminated":
                if not held:
                    # An end of a subscription this socket no longer holds (the venue ended a silent one the bot
                    # replaced, and then the new one): already told. Stock 4.5.90 raises KeyError here, inside the
                    # socket's receive callback, which then reads nothing more: the user stream dead for good.
                    return
                super().handle_message(client, message)  # stock: the subscription forgotten (its watchers wait on)
            if self.on_subscription is not None:
                self.on_subscription(False)
            return
        super().handle_message(client, message)
        if kind in USER_EVENTS and self.on_user_event is not None:
            self.on_user_event()

    async def ensure_user_data_stream_ws_subscribe_signature(self, marketType: str = "spot") -> Any:  # noqa: N803
        """Stock, but a subscription the venue refuses ends as the venue's error, and the next one can be made: stock
        4.5.90 forgets a refused subscription twice, the second a KeyError that skips rejecting its pending
        `authenticate:signature:<type>` future, on which every later subscription of that socket would wait for
        good."""
        try:
            return await super().ensure_user_data_stream_ws_subscribe_signature(marketType)
        except KeyError as exc:
            cause = exc.__context__  # the venue's refusal, which stock's clean-up then hid
            error = cause if isinstance(cause, BaseError) else ExchangeError(f"{self.id} user stream refused")
            client = self.clients.get(self.safe_string(self.urls["api"]["ws"]["ws-api"], marketType))
            if client is not None:
                client.subscriptions.pop(marketType, None)
                client.reject(error, "authenticate:signature:" + marketType)
            raise error from exc

    def handle_user_data_stream_subscribe(self, client: Any, message: Any) -> None:
        super().handle_user_data_stream_subscribe(client, message)
        result = message.get("result") if isinstance(message, dict) else None
        if isinstance(result, dict) and result.get("subscriptionId") is not None and self.on_subscription is not None:
            self.on_subscription(True)
