"""Test hosts' /metrics servers in a process of their own: fixed loopback addresses and ports, each stopped at once (a
death: connection refused) and started again on the same port (a return).

Served from the test's own process, they shared its interpreter with a reconciler, a pager and the test's polling: on
a loaded machine a scrape could wait past the fast profile's 0.8 s timeout for the interpreter, and a live host looked
dead to Prometheus. Here they answer from a process that does nothing else.

`MetricsHosts` starts the process (`python tests/metrics_hosts.py`) and hands out `MetricsServer`s; the process reads
one JSON command a line on its stdin (start, stop) and answers each on its stdout."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

# How long the parent waits for the process's answer to one command.
ANSWER_TIMEOUT_SECONDS = 30.0


class MetricsHosts:
    """The process serving every MetricsServer made by `server`; `close` stops it (and so every server)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lock = threading.Lock()
        self.count = 0

    def server(self, address: str, body: str) -> MetricsServer:
        self.count += 1
        return MetricsServer(self, self.count, address, body)

    def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        """Send one command and read its answer (one at a time); an error the process met is raised here."""
        with self.lock:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the metrics hosts' process ended (exit {self.proc.poll()})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"metrics hosts: {command['op']} {command.get('address', '')}: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # the process ends at the end of its input
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class MetricsServer:
    """One /metrics server of the process: on `address`, its port chosen at the first start and kept."""

    def __init__(self, hosts: MetricsHosts, key: int, address: str, body: str) -> None:
        self.hosts, self.key, self.address, self.body = hosts, key, address, body
        self.port = 0

    def start(self) -> None:
        answer = self.hosts.ask(
            {"op": "start", "key": self.key, "address": self.address, "port": self.port, "body": self.body}
        )
        self.port = int(answer["port"])

    def stop(self) -> None:
        """Refuse connections at once (the listening socket shut down: a death, not a slow one)."""
        if self.hosts.proc.poll() is None:
            self.hosts.ask({"op": "stop", "key": self.key})


def _serve(address: str, port: int, body: bytes) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 5.0}, daemon=True).start()
    return server


def _stop(server: ThreadingHTTPServer) -> None:
    """The listening socket shut down first (refused at once), then the loop it wakes ended and the port freed."""
    server.socket.shutdown(socket.SHUT_RDWR)
    server.shutdown()
    server.server_close()


def main(commands: IO[str], answers: IO[str]) -> None:
    servers: dict[int, ThreadingHTTPServer] = {}
    for line in commands:
        command = json.loads(line)
        key = command["key"]
        try:
            if command["op"] == "start":
                if key in servers:
                    _stop(servers.pop(key))
                servers[key] = _serve(command["address"], command["port"], command["body"].encode())
                answer: dict[str, Any] = {"port": servers[key].server_address[1]}
            else:
                if key in servers:
                    _stop(servers.pop(key))
                answer = {}
        except OSError as exc:
            answer = {"error": str(exc)}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()
    for server in servers.values():
        _stop(server)


if __name__ == "__main__":
    main(sys.stdin, sys.stdout)
