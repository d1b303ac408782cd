"""Send a notification to every configured apprise URL (mail, Slack, Telegram, webhooks, ...)."""

from __future__ import annotations

import asyncio
import logging

import apprise

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, urls: list[str]) -> None:
        self.urls = [u for u in urls if u.strip()]

    @classmethod
    def from_text(cls, text: str) -> Notifier:
        """URLs whitespace- or newline-separated, as the configuration's notifications.urls gives them."""
        return cls(text.split())

    async def notify(self, title: str, body: str) -> bool:
        """True when every URL accepted the message; apprise does blocking I/O, so it runs in a thread."""
        if not self.urls:
            log.warning("no notification URLs configured; dropped: %s", title)
            return False
        return await asyncio.to_thread(self._send, title, body)

    def _send(self, title: str, body: str) -> bool:
        ap = apprise.Apprise()
        for url in self.urls:
            if not ap.add(url):
                log.error("invalid apprise URL (scheme %s)", url.split(":", 1)[0])
                return False
        return bool(ap.notify(title=title, body=body))
