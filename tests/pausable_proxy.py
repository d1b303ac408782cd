"""A TCP proxy on a loopback port of its own to a server (`upstream`) that can go silent, as a dead host does to its
peers: `pause()` relays no byte either way and holds every connection, old and new, open (nothing refused, nothing
reset: a client waits until its own timeout, or forever); `resume()` relays again what waited. A database behind it
"dies" without the test stopping anything that others share."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from ports import free_port

CHUNK = 65536


class PausableProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.open = asyncio.Event()
        self.open.set()
        self.tasks: set[asyncio.Task[None]] = set()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True, name="pausable-proxy")
        self.thread.start()
        if not started.wait(10):
            raise RuntimeError("the proxy did not start")

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", self.port))
        started.set()
        self.loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self.open.wait()  # a connection made while paused is held, not refused
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self.tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(CHUNK):
                await self.open.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def pause(self) -> None:
        self.loop.call_soon_threadsafe(self.open.clear)

    def resume(self) -> None:
        self.loop.call_soon_threadsafe(self.open.set)

    def close(self) -> None:
        async def shut() -> None:
            self.server.close()
            for task in list(self.tasks):
                task.cancel()
            await asyncio.sleep(0)

        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(shut(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
