"""Operator endpoints on the HTTP listener: ``/metrics``, ``/healthz``, ``/readyz``.

`OpsRoutes` is a small table of paths, each a Starlette handler, served in
front of the MCP app; later operator pages (a dashboard) add theirs with
`OpsRoutes.add`. Every route is checked by `operator_allowed`, the one rule
for who may read operator pages:

- without authentication (no ``--tokens``, no ``[auth]``) every route is
  open, as ``/mcp`` is;
- with it, a request needs an operator's bearer token, unless its path is one
  of ``[http] open_endpoints`` (load balancers' health checks, typically): an
  ``[[operator]]`` entry of the token file, or under OAuth an access token
  carrying ``[auth] operator_scope`` (checked by `OpsRoutes`' token check,
  the server's verifier). A client's token is not an operator's: clients
  see only their own tasks.

``/healthz`` answers 200 while the process serves HTTP (liveness).
``/readyz`` answers 200 when the journal accepts writes and the server is not
shutting down, else 503 with the reason (readiness: take it out of rotation).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_tasks._config import Settings
from mcp_tasks._exceptions import ConfigurationError, JournalError
from mcp_tasks.engine import TaskRuntime
from mcp_tasks.ops import Metrics
from mcp_tasks.ops._metrics import CONTENT_TYPE

logger = logging.getLogger("mcp_tasks.http")

#: A handler of one operator path.
Handler = Callable[[Request], Awaitable[Response]]

METRICS_PATH: Final = "/metrics"
HEALTH_PATH: Final = "/healthz"
READY_PATH: Final = "/readyz"


def operator_allowed(settings: Settings, path: str, authorization: str | None) -> bool:
    """Whether a request for operator ``path`` with this ``Authorization`` may proceed.

    See the module docstring for the rule. Tokens are compared in constant time.
    """
    if not settings.auth_enabled or path in settings.http.open_endpoints:
        return True
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    token = token.strip()
    return any(
        hmac.compare_digest(token.encode(), known.encode())
        for known in settings.operator_tokens
    )


def _refused() -> Response:
    return JSONResponse(
        {"error": "operator_token_required",
         "message": "this endpoint needs an operator token "
                    "(an [[operator]] entry of the token file)"},
        status_code=401,
        headers={"WWW-Authenticate": 'Bearer realm="mcp-tasks operators"'},
    )  # fmt: skip


class OpsRoutes:
    """Operator paths served in front of the MCP app (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._routes: dict[str, Handler] = {}
        self._methods: dict[str, tuple[str, ...]] = {}
        #: Whether a bearer token that is no ``[[operator]]`` entry is still an
        #: operator's (under OAuth: verified, with the operator scope).
        self.token_check: Callable[[str], Awaitable[bool]] | None = None

    def add(
        self, path: str, handler: Handler, methods: tuple[str, ...] = ("GET", "HEAD")
    ) -> None:
        """Serve ``handler`` at ``path`` (exact match) for ``methods``, behind `operator_allowed`.

        Other methods are answered 405. An operator page with actions (a
        cancel button) adds ``POST`` and must check the request's origin
        itself (browsers send an operator's cookie or token along).
        """
        self._routes[path] = handler
        self._methods[path] = methods

    @property
    def paths(self) -> Mapping[str, Handler]:
        """The served paths."""
        return dict(self._routes)

    def check_open_endpoints(self) -> None:
        """Refuse ``[http] open_endpoints`` naming a path that is not served.

        Raises:
            ConfigurationError: ``http.open_endpoints`` names an unknown path.
        """
        for path in self.settings.http.open_endpoints:
            if path not in self._routes:
                raise ConfigurationError(
                    "http.open_endpoints",
                    f"{path!r} is not an operator endpoint "
                    f"(served: {', '.join(sorted(self._routes))})",
                )

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """``app`` with the operator paths served in front of it."""

        async def routed(scope: Scope, receive: Receive, send: Send) -> None:
            handler = (
                self._routes.get(scope["path"]) if scope["type"] == "http" else None
            )
            if handler is None:
                await app(scope, receive, send)
                return
            request = Request(scope, receive)
            authorization = request.headers.get("authorization")
            allowed = operator_allowed(self.settings, scope["path"], authorization)
            if not allowed and self.token_check is not None:
                scheme, _, token = (authorization or "").partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    allowed = await self.token_check(token.strip())
            if not allowed:
                response = _refused()
            elif request.method not in (methods := self._methods[scope["path"]]):
                response = PlainTextResponse(
                    "method not allowed\n",
                    status_code=405,
                    headers={"Allow": ", ".join(methods)},
                )
            else:
                response = await handler(request)
            await response(scope, receive, send)

        return routed


def standard_routes(runtime: TaskRuntime, metrics: Metrics) -> OpsRoutes:
    """The built-in operator routes: metrics, liveness and readiness."""
    routes = OpsRoutes(runtime.settings)

    async def serve_metrics(request: Request) -> Response:
        try:
            body = await metrics.exposition()
        except JournalError as exc:
            return PlainTextResponse(f"journal unavailable: {exc}\n", status_code=503)
        return Response(body, media_type=CONTENT_TYPE)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        if runtime.draining:
            return PlainTextResponse("shutting down\n", status_code=503)
        try:
            await runtime.check()
        except JournalError as exc:
            return PlainTextResponse(f"journal not writable: {exc}\n", status_code=503)
        return PlainTextResponse("ready\n")

    routes.add(METRICS_PATH, serve_metrics)
    routes.add(HEALTH_PATH, healthz)
    routes.add(READY_PATH, readyz)
    return routes
