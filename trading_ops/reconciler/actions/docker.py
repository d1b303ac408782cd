"""`docker`: restart a container through the Docker Engine API: on its unix socket, or on the bot's own host's engine.

The container is the step's `container`, or else the one configured for the alert's bot (`bots[].container`). A bot
configured on a host of its own with `bots[].host.docker_url` is restarted on that host's engine, as Docker reaches a
remote engine: `tcp://HOST:2376` over TLS with a client certificate (`bots[].host.docker_tls`), or `ssh://USER@HOST`
(ssh with the host's key checked, then `docker system dial-stdio` there, the API spoken over it). A host that cannot
be reached, a refused certificate or a changed host key fails the step with one line."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from trading_ops.config import BotHostConfig
from trading_ops.reconciler.actions.base import Action, ActionContext, Refused, Result, truncate
from trading_ops.reconciler.actions.bot import starting
from trading_ops.reconciler.actions.exec import minimal_env
from trading_ops.reconciler.remote_host import bot_host, destination, failure_line, ssh_binary, ssh_options

CONTAINER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class DockerAction(Action):
    kind = "docker"
    default_risk = "disruptive"
    params = {"container": (str, False), "stop_timeout": (int, False)}

    def describe(self, params: dict[str, Any]) -> str:
        return super().describe({"container": "(the bot's container)", **params})

    async def run(self, ctx: ActionContext, params: dict[str, Any], timeout: float) -> Result:
        name = ctx.step_or_bot(params, "container")
        if not CONTAINER_RE.match(name):
            raise Refused(f"container {name[:60]!r} is not a valid container name")
        if await starting(ctx):  # restarting it would only kill it mid-start (as the systemd step leaves it)
            return Result("success", f"container {name} not restarted: the bot is starting (phase starting)")
        path = f"/containers/{name}/restart?t={int(params.get('stop_timeout', 10))}"
        limit = ctx.config.reconciler.output_limit_bytes
        host = bot_host(ctx)
        if host is not None and host.docker_url.startswith("ssh://"):
            return await _over_ssh(host, path, name, timeout, limit)
        if host is not None and host.docker_url.startswith("tcp://"):
            from trading_ops.webconfig import client_ssl_context

            tls = client_ssl_context(host.docker_tls, "bots[].host.docker_tls")
            where = urlsplit(host.docker_url).netloc
            connector: aiohttp.BaseConnector = aiohttp.TCPConnector(ssl=tls if tls is not None else True)
            url = f"https://{where}{path}"
        else:
            connector = aiohttp.UnixConnector(path=ctx.config.reconciler.docker_socket)
            url = f"http://docker{path}"
            where = ""
        try:
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.post(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp,
            ):
                text = await resp.text()
        except TimeoutError:
            return Result("timeout", f"docker restart {name}: no answer within {timeout:g}s")
        except aiohttp.ClientSSLError as exc:
            return Result("failure", f"docker restart {name}: the engine at {where}: TLS refused: {_first_line(exc)}")
        except aiohttp.ClientError as exc:
            at = f" on {where}" if where else ""
            return Result("failure", f"docker restart {name}{at}: {_first_line(exc)}")
        outcome = "success" if resp.status == 204 else "failure"
        return Result(outcome, truncate(f"HTTP {resp.status} {text}", limit))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


async def _over_ssh(host: BotHostConfig, path: str, name: str, timeout: float, limit: int) -> Result:
    """POST `path` to the engine of `host` through `docker system dial-stdio` over ssh, as the docker CLI does for an
    ssh:// DOCKER_HOST: one HTTP/1.1 request with Connection: close, its status line read back."""
    remote = urlsplit(host.docker_url)
    port = remote.port or host.ssh_port
    target = f"{remote.username}@{remote.hostname}" if remote.username else destination(host)
    argv = [ssh_binary(), *ssh_options(host, timeout), "-p", str(port), "--", target, "docker", "system", "dial-stdio"]
    request = f"POST {path} HTTP/1.1\r\nHost: docker\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=minimal_env(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(request.encode())
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return Result("timeout", f"docker restart {name} on {host.address}: no answer within {timeout:g}s")
    status = out.split(b"\r\n", 1)[0].decode(errors="replace")
    found = re.match(r"HTTP/1\.[01] (\d{3})", status)
    if found is None:
        text = err.decode(errors="replace")
        line = failure_line(text, host) or (text.strip().splitlines() or [f"ssh exited {proc.returncode}"])[-1]
        return Result("failure", f"docker restart {name}: {line[:300]}")
    code = int(found.group(1))
    body = out.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")
    return Result("success" if code == 204 else "failure", truncate(f"HTTP {code} {body}".strip(), limit))


ACTION = DockerAction()
