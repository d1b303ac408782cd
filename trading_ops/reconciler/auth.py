"""Who may use the reconciler's API: the request's named token (reconciler.api_tokens, read_token) and its scope.

Each handler says what it needs: reads (episodes) `read`; acting (an episode's retry, a circuit's reset, maintenance
windows) `operate`; what closes positions or stops a bot (an emergency halt) `destructive`; deciding an approval
(`POST /api/v1/approvals/{id}`) `approve`. `authorized(request, APPROVE, "approving")` answers 401 for no or an unknown
token, 403 with one line naming the scope needed for a token without it, else the token (its name is who decided).
The webhook has its own token (Alertmanager's), which none of these may be.
"""

from __future__ import annotations

import logging

from aiohttp import web

from trading_ops.reconciler import keys
from trading_ops.scopes import Token, refusal

log = logging.getLogger(__name__)

UNAUTHORIZED = "missing or wrong bearer token (the read token, reconciler.read_token, or one of reconciler.api_tokens)"


def authorized(request: web.Request, scope: str, action: str) -> Token | web.Response:
    """The token of `request` when its scope covers `scope`; else the 401 or 403 response to send. `action` names
    what was asked in the 403's line ("approving needs the 'approve' scope; token 'oncall' has 'read'")."""
    token = request.app[keys.API_TOKENS].match(request.headers.get("Authorization"))
    if token is None:
        log.warning(
            "API request %s %s from %s refused: missing or wrong bearer token",
            request.method,
            request.path,
            request.remote,
        )
        return web.json_response(
            {"error": UNAUTHORIZED}, status=401, headers={"WWW-Authenticate": 'Bearer realm="trading-ops reconciler"'}
        )
    if not token.allows(scope):
        message = refusal(action, scope, token)
        log.warning(
            "API request %s %s by token %r from %s refused: %s",
            request.method,
            request.path,
            token.name,
            request.remote,
            message,
        )
        return web.json_response({"error": message}, status=403)
    return token
