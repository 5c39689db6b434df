"""Bearer authentication over HTTP: the token file, OAuth, and their challenges.

`HttpAuth.from_settings` builds what ``serve_http`` hands the SDK: one
`TokenVerifier` (token file first, then OAuth), the SDK's `AuthSettings`
(its bearer middleware answers 401 and 403), and, under OAuth, an outer ASGI
layer (`HttpAuth.wrap`) that serves the protected resource metadata (RFC 9728)
at both well-known locations and writes the ``WWW-Authenticate`` challenge the
MCP authorization spec asks for: ``resource_metadata``, the ``scope`` needed,
and for a refused token, why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.routes import (
    build_resource_metadata_url,
    create_protected_resource_routes,
)
from mcp.server.auth.settings import AuthSettings
from pydantic import AnyHttpUrl
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_tasks._config import ClientLimits, Settings
from mcp_tasks._oauth_config import OAuthSettings
from mcp_tasks.binding._oauth import oauth_verifier, refusals

ROOT_METADATA_PATH = "/.well-known/oauth-protected-resource"


def is_operator(token: AccessToken | None, oauth: OAuthSettings | None) -> bool:
    """Whether ``token`` grants operator access (``/metrics``, operator commands).

    Under OAuth, operators are the tokens carrying ``[auth] operator_scope``.
    """
    return (
        token is not None
        and oauth is not None
        and oauth.operator_scope is not None
        and oauth.operator_scope in token.scopes
    )


def tier_limits(settings: Settings) -> Callable[[AccessToken], ClientLimits | None]:
    """What gives a client its caps from its token: the ``[auth]`` tier claim.

    A client's own ``[clients.ID]`` (or token file) caps win over its tier;
    a token without the claim, or naming no configured tier, gets the
    configured caps.
    """
    oauth = settings.oauth

    def limits_of(token: AccessToken) -> ClientLimits | None:
        if oauth is None or oauth.tier_claim is None:
            return None
        if token.client_id in settings.client_overrides:
            return None
        tier = oauth.tiers.get(str((token.claims or {}).get(oauth.tier_claim)))
        if tier is None:
            return None
        return ClientLimits(tier.concurrency, tier.backlog)

    return limits_of


@dataclass
class TokenFileVerifier:
    """Bearer tokens from the token file: token → client id.

    Under OAuth with ``required_scopes`` these trusted clients are granted
    those scopes, so configuring OAuth does not lock them out.
    """

    tokens: Mapping[str, str]
    scopes: list[str] = field(default_factory=lambda: list[str]())

    async def verify_token(self, token: str) -> AccessToken | None:
        client_id = self.tokens.get(token)
        if client_id is None:
            return None
        return AccessToken(token=token, client_id=client_id, scopes=self.scopes)


@dataclass
class EitherVerifier:
    """The token file first (an exact lookup), then the OAuth verifier."""

    token_file: TokenFileVerifier
    oauth: TokenVerifier

    async def verify_token(self, token: str) -> AccessToken | None:
        found = await self.token_file.verify_token(token)
        if found is not None:
            return found
        return await self.oauth.verify_token(token)


@dataclass
class HttpAuth:
    """How an HTTP server authenticates: verifier, SDK settings, OAuth layer."""

    verifier: TokenVerifier
    oauth: OAuthSettings | None

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpAuth | None:
        """The authentication ``settings`` configure, or ``None`` without any.

        Raises:
            ConfigurationError: the ``oauth`` extra is missing or a file named
                in ``[auth]`` is unreadable.
        """
        oauth = settings.oauth
        if oauth is None:
            if not settings.tokens:
                return None
            return cls(TokenFileVerifier(settings.tokens), None)
        verifier: TokenVerifier = oauth_verifier(oauth)
        if settings.tokens:
            token_file = TokenFileVerifier(settings.tokens, list(oauth.required_scopes))
            verifier = EitherVerifier(token_file, verifier)
        return cls(verifier, oauth)

    def sdk_settings(self, server_url: str) -> AuthSettings:
        """The SDK's settings; ``server_url`` stands in for the issuer without OAuth."""
        if self.oauth is None:
            return AuthSettings(
                issuer_url=AnyHttpUrl(server_url), resource_server_url=None
            )
        return AuthSettings(
            issuer_url=AnyHttpUrl(self.oauth.advertised_servers[0]),
            resource_server_url=AnyHttpUrl(self.oauth.audience),
            required_scopes=list(self.oauth.required_scopes) or None,
            # The verifier checks "aud" itself (with the exact configured value).
            validate_token_resource=False,
        )

    async def operator_check(self, token: str) -> bool:
        """Whether bearer ``token`` verifies and grants operator access (`is_operator`)."""
        return is_operator(await self.verifier.verify_token(token), self.oauth)

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """``app`` behind the OAuth layer (unchanged without OAuth)."""
        if self.oauth is None:
            return app
        return OAuthChallenges(app, self.oauth)


class OAuthChallenges:
    """Serves the resource metadata and writes the ``WWW-Authenticate`` challenges.

    The SDK's bearer middleware decides 401 or 403; this layer replaces its
    header with one that carries ``scope`` (2025-11-25 authorization: servers
    SHOULD say which scopes the resource needs), omits the error code when no
    token was sent (RFC 6750 3.1), and says why a token was refused.
    """

    def __init__(self, app: ASGIApp, oauth: OAuthSettings) -> None:
        self.app = app
        self.oauth = oauth
        resource = AnyHttpUrl(oauth.audience)
        self.metadata_url = str(build_resource_metadata_url(resource))
        routes = create_protected_resource_routes(
            resource_url=resource,
            authorization_servers=[AnyHttpUrl(s) for s in oauth.advertised_servers],
            scopes_supported=list(oauth.required_scopes) or None,
            resource_name="mcp-tasks",
        )
        # RFC 9728 puts the document after the resource's path; MCP clients
        # also try the root, so it is served at both.
        root = routes[0]
        assert isinstance(root, Route)
        routes.append(
            Route(
                ROOT_METADATA_PATH, endpoint=root.endpoint, methods=["GET", "OPTIONS"]
            )
        )
        self.metadata_paths = {urlsplit(self.metadata_url).path, ROOT_METADATA_PATH}
        self.metadata = Router(routes=list(routes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] in self.metadata_paths:
            await self.metadata(scope, receive, send)
            return
        reasons: list[str] = []
        reset = refusals.set(reasons)
        presented = _bearer_presented(scope)

        async def challenge(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in (
                401,
                403,
            ):
                message = self._rewrite(message, presented, reasons)
            await send(message)

        try:
            await self.app(scope, receive, challenge)
        finally:
            refusals.reset(reset)

    def _rewrite(
        self, message: Message, presented: bool, reasons: list[str]
    ) -> Message:
        headers: list[tuple[bytes, bytes]] = list(message.get("headers", []))
        if not any(name.lower() == b"www-authenticate" for name, _ in headers):
            return message  # not a bearer challenge (e.g. a rejected Host)
        parts: list[str] = []
        if message["status"] == 403:
            parts.append('error="insufficient_scope"')
            parts.append('error_description="the token lacks a required scope"')
        elif presented:
            reason = reasons[-1] if reasons else "the token is not valid"
            parts.append('error="invalid_token"')
            parts.append(f'error_description="{_quoted(reason)}"')
        parts.append(f'resource_metadata="{self.metadata_url}"')
        if self.oauth.required_scopes:
            parts.append(f'scope="{" ".join(self.oauth.required_scopes)}"')
        value = "Bearer " + ", ".join(parts)
        kept = [(n, v) for n, v in headers if n.lower() != b"www-authenticate"]
        return {**message, "headers": [*kept, (b"www-authenticate", value.encode())]}


def _bearer_presented(scope: Scope) -> bool:
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    for name, value in headers:
        if name.lower() == b"authorization":
            return value[:7].lower() == b"bearer "
    return False


def _quoted(text: str) -> str:
    # RFC 6750 3: error_description is %x20-21 / %x23-5B / %x5D-7E.
    return "".join(
        c if 0x20 <= ord(c) <= 0x7E and c not in '"\\' else "'" for c in text
    )
