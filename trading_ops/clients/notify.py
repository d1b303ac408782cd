"""Send a notification to every configured apprise URL (mail, Slack, Telegram, webhooks, ...)."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, urls: list[str]) -> None:
        self.urls = [u for u in urls if u.strip()]

    @classmethod
    def from_text(cls, text: str) -> Notifier:
        """URLs whitespace- or newline-separated, as the configuration's notifications.urls gives them."""
        return cls(text.split())

    async def notify(self, title: str, body: str, *, failure: bool = False, body_format: str = "text") -> bool:
        """True when every URL accepted the message (False is logged, never raised). `failure` marks it as one
        (apprise's failure type: red in chat services); `body_format` "html" sends e-mail as HTML with a text part
        (and converts for services that take text). apprise does blocking I/O, so it runs in a thread."""
        if not self.urls:
            log.warning("no notification URLs configured (notifications.urls); dropped: %s", title)
            return False
        try:
            return await asyncio.to_thread(self._send, title, body, failure, body_format)
        except Exception:
            log.exception("notification %r could not be sent", title)
            return False

    def _send(self, title: str, body: str, failure: bool, body_format: str) -> bool:
        # Imported on first use: apprise and its plugins weigh ~15 MB, and most processes never notify.
        import apprise

        ap = apprise.Apprise()
        for url in self.urls:
            if not ap.add(url):
                log.error("invalid apprise URL (scheme %s)", url.split(":", 1)[0])
                return False
        kind = apprise.NotifyType.FAILURE if failure else apprise.NotifyType.INFO
        fmt = apprise.NotifyFormat.HTML if body_format == "html" else None
        ok = bool(ap.notify(title=title, body=body, notify_type=kind, body_format=fmt))
        if not ok:
            log.error("notification %r: at least one service did not accept it", title)
        return ok
