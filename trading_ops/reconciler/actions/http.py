"""`http`: one HTTP request to a URL (label values only through validated ${label} templates)."""

from __future__ import annotations

from typing import Any

import aiohttp

from trading_ops.reconciler.actions.base import Action, ActionContext, Result, truncate

METHODS = ("GET", "POST", "PUT", "DELETE")


class HttpAction(Action):
    kind = "http"
    default_risk = "disruptive"
    params = {"url": (str, True), "method": (str, False), "json": (dict, False), "expect_status": (list, False)}

    def validate(self, params: dict[str, Any]) -> None:
        super().validate(params)
        if params.get("method", "POST") not in METHODS:
            raise ValueError(f"method: expected one of {', '.join(METHODS)}")
        if not params["url"].startswith(("http://", "https://")):
            raise ValueError("url: expected an http:// or https:// URL")

    async def run(self, ctx: ActionContext, params: dict[str, Any], timeout: float) -> Result:
        url = ctx.render(params["url"])
        method = params.get("method", "POST")
        expect = params.get("expect_status")
        try:
            async with ctx.session.request(
                method, url, json=params.get("json"), timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                text = await resp.text()
        except TimeoutError:
            return Result("timeout", f"{method} {url}: no answer within {timeout:g}s")
        except aiohttp.ClientError as exc:
            return Result("failure", f"{method} {url}: {exc}")
        ok = resp.status in expect if expect else 200 <= resp.status < 300
        output = truncate(f"HTTP {resp.status} {text}", ctx.config.reconciler.output_limit_bytes)
        return Result("success" if ok else "failure", output)


ACTION = HttpAction()
