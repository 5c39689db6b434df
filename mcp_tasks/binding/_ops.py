"""Operator endpoints on the HTTP listener: ``/metrics``, ``/healthz``, ``/readyz``.

`OpsRoutes` is a small table of paths, each a Starlette handler, served in
front of the MCP app; operator pages (the dashboard, `_dashboard`) add
theirs with `OpsRoutes.add`. `OpsRoutes` checks every route by one rule
for who may read operator pages (`operator_allowed` states it for a bearer
header and the token file alone):

- without authentication (no ``--tokens``, no ``[auth]``) every route is
  open, as ``/mcp`` is;
- with it, a request needs an operator's bearer token, unless its path is one
  of ``[http] open_endpoints`` (load balancers' health checks, typically): an
  ``[[operator]]`` entry of the token file, or under OAuth an access token
  carrying ``[auth] operator_scope`` (checked by `OpsRoutes`' token check,
  the server's verifier). A client's token is not an operator's: clients
  see only their own tasks.

A browser cannot attach a bearer header to a page load, so routes added
with ``browser=True`` also take the operator's token from the
`OPERATOR_COOKIE` the dashboard's sign-in sets (HttpOnly, SameSite=Strict,
Path=/dashboard): the same token, checked the same way. Such routes are also
held to the MCP endpoint's Host and Origin checks (DNS rebinding), and
refusals are a sign-in page rather than JSON when the browser asked for a
page. A ``public=True`` route (the sign-in form itself) skips the token check.

``/healthz`` answers 200 while the process serves HTTP (liveness).
``/readyz`` answers 200 when the journal accepts writes and the server is not
shutting down, else 503 with the reason (readiness: take it out of rotation).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from mcp.server.transport_security import (
    TransportSecurityMiddleware,
    TransportSecuritySettings,
)
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
#: The cookie holding a signed-in browser's operator token (dashboard paths only).
OPERATOR_COOKIE: Final = "mcp_tasks_operator"
#: Where `OpsRoutes` leaves the name of the operator a request was let in as
#: (the request's ASGI scope), for the task history of what it does.
OPERATOR_SCOPE_KEY: Final = "mcp_tasks.operator"
#: The operator's name when the server has no authentication at all.
ANONYMOUS_OPERATOR: Final = "anonymous"
#: The name of an operator let in by an OAuth access token with the operator scope.
OAUTH_OPERATOR: Final = "oauth"


def operator_allowed(settings: Settings, path: str, authorization: str | None) -> bool:
    """Whether a request for operator ``path`` with this ``Authorization`` may proceed.

    See the module docstring for the rule. Tokens are compared in constant time.
    """
    if not settings.auth_enabled or path in settings.http.open_endpoints:
        return True
    token = bearer_token(authorization)
    return token is not None and static_operator(settings, token) is not None


def static_operator(settings: Settings, token: str) -> str | None:
    """The ``[[operator]]`` id whose token ``token`` is (constant-time compare)."""
    found = None
    for known, operator_id in settings.operator_tokens.items():
        if hmac.compare_digest(token.encode(), known.encode()):
            found = operator_id
    return found


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, if that is what it is."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


#: What a browser route answers a request that is not let in: ``(status, why)``
#: -> a response (the dashboard's sign-in page).
Refusal = Callable[[Request, int, str], Response]


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
        self._browser: set[str] = set()
        self._public: set[str] = set()
        #: Whether a bearer token that is no ``[[operator]]`` entry is still an
        #: operator's (under OAuth: verified, with the operator scope).
        self.token_check: Callable[[str], Awaitable[bool]] | None = None
        #: The MCP endpoint's Host and Origin checks, applied to browser routes
        #: too (set by `serve_http`, which knows the address it listens on).
        self.security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        #: How browser routes refuse (set by the dashboard: its sign-in page).
        self.browser_refusal: Refusal | None = None

    def add(
        self,
        path: str,
        handler: Handler,
        methods: tuple[str, ...] = ("GET", "HEAD"),
        *,
        browser: bool = False,
        public: bool = False,
    ) -> None:
        """Serve ``handler`` at ``path`` (exact match) for ``methods``, behind the operator rule.

        Other methods are answered 405. An operator page with actions (a
        cancel button) adds ``POST`` and must check the request's origin
        itself (browsers send an operator's cookie or token along).
        ``browser``: a page or API a browser calls (see the module
        docstring); ``public``: no operator token needed (a sign-in form).
        """
        self._routes[path] = handler
        self._methods[path] = methods
        if browser:
            self._browser.add(path)
        if public:
            self._public.add(path)

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

    async def operator_name(self, token: str) -> str | None:
        """Who ``token`` is, if an operator's: an ``[[operator]]`` id or `OAUTH_OPERATOR`."""
        found = static_operator(self.settings, token)
        if (
            found is None
            and self.token_check is not None
            and await self.token_check(token)
        ):
            found = OAUTH_OPERATOR
        return found

    async def _admit(self, request: Request, path: str) -> str | None:
        """The name of the operator ``request`` comes from, or None to refuse it."""
        if not self.settings.auth_enabled or path in self.settings.http.open_endpoints:
            return ANONYMOUS_OPERATOR
        if path in self._public:
            return ANONYMOUS_OPERATOR
        token = bearer_token(request.headers.get("authorization"))
        if token is None and path in self._browser:
            token = request.cookies.get(OPERATOR_COOKIE) or None
        return None if token is None else await self.operator_name(token)

    async def _respond(self, request: Request, path: str) -> Response:
        browser = path in self._browser
        if browser:
            # DNS rebinding: a page must come from a name the server answers to.
            checked = await TransportSecurityMiddleware(self.security).validate_request(
                request
            )
            if checked is not None:
                return checked
        operator = await self._admit(request, path)
        if operator is None:
            if browser and self.browser_refusal is not None:
                return self.browser_refusal(
                    request, 401, "this page needs an operator token"
                )
            return _refused()
        if request.method not in (methods := self._methods[path]):
            return PlainTextResponse(
                "method not allowed\n",
                status_code=405,
                headers={"Allow": ", ".join(methods)},
            )
        request.scope[OPERATOR_SCOPE_KEY] = operator
        return await self._routes[path](request)

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """``app`` with the operator paths served in front of it."""

        async def routed(scope: Scope, receive: Receive, send: Send) -> None:
            path = scope["path"] if scope["type"] == "http" else None
            if path not in self._routes:
                await app(scope, receive, send)
                return
            response = await self._respond(Request(scope, receive), path)
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
