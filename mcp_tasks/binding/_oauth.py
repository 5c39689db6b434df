"""OAuth access tokens: signed JWTs checked against a JWKS, or RFC 7662 introspection.

`JwtVerifier` and `IntrospectionVerifier` are the SDK's `TokenVerifier`s for
the ``[auth]`` table (`mcp_tasks._oauth_config`). A token is accepted only if
it was issued by the configured issuer, for this server (``aud`` is the
configured audience, the server's resource URL), is within its validity
window, and names an owner in the configured claim. The owner becomes the
`AccessToken`'s ``client_id``: `Requesters` binds tasks to it.

A refused token is ``None`` to the SDK (401); why it was refused is recorded
with `refusals` for the ``WWW-Authenticate`` challenge (`_auth`).

JWT signatures are checked with PyJWT and ``cryptography`` (the ``oauth``
extra) against the keys of `_jwks.JwksKeys`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Final, cast
from urllib.parse import urlsplit

import httpx2
import jwt
from mcp.server.auth.provider import AccessToken

from mcp_tasks._exceptions import ConfigurationError
from mcp_tasks._oauth_config import OAuthSettings
from mcp_tasks.binding._jwks import (
    EXTRA_HINT,
    HTTP_TIMEOUT_SECONDS,
    Clock,
    JwksKeys,
    TokenRejected,
    jwks_keys,
)

logger = logging.getLogger("mcp_tasks.auth")

#: Accepted introspected tokens remembered at most (when caching is on).
INTROSPECTION_CACHE_SIZE: Final = 10_000


#: Why the current request's token was refused (set per request by `_auth`).
refusals: ContextVar[list[str] | None] = ContextVar("refusals", default=None)


def _refuse(reason: str) -> None:
    holder = refusals.get()
    if holder is not None:
        holder.append(reason)


def require_crypto() -> None:
    """Check that the ``oauth`` extra (``cryptography``) is installed.

    Raises:
        ConfigurationError: it is not.
    """
    try:
        import cryptography  # noqa: F401  # pyright: ignore[reportUnusedImport]
    except ImportError:
        raise ConfigurationError(
            "auth", f"OAuth needs the cryptography package; {EXTRA_HINT}"
        ) from None


# ----------------------------------------------------------------- claims


def scopes_of(claims: Mapping[str, Any]) -> list[str]:
    """The token's scopes: ``scope`` (RFC 9068, space-separated) or ``scp``."""
    value = claims.get("scope", claims.get("scp"))
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [str(v) for v in cast("list[object]", value)]
    return []


def access_token(
    token: str, claims: Mapping[str, Any], settings: OAuthSettings
) -> AccessToken:
    """The `AccessToken` of verified ``claims``: its owner is ``owner_claim``.

    Raises:
        TokenRejected: the owner claim is missing or not a non-empty string.
    """
    owner = claims.get(settings.owner_claim)
    if not isinstance(owner, str) or not owner:
        raise TokenRejected(f"the token has no {settings.owner_claim!r} claim")
    expires = claims.get("exp")
    subject = claims.get("sub")
    return AccessToken(
        token=token,
        client_id=owner,
        scopes=scopes_of(claims),
        expires_at=int(expires) if isinstance(expires, int | float) else None,
        resource=settings.audience,
        subject=subject if isinstance(subject, str) else None,
        claims=dict(claims),
    )


class JwtVerifier:
    """Verifies signed JWT access tokens against the issuer's keys."""

    def __init__(self, settings: OAuthSettings, keys: JwksKeys) -> None:
        self.settings = settings
        self.keys = keys

    async def verify_token(self, token: str) -> AccessToken | None:
        """The token's `AccessToken`, or ``None`` (the reason goes to `refusals`)."""
        try:
            return await self.verify(token)
        except TokenRejected as exc:
            _refuse(str(exc))
            return None

    async def verify(self, token: str) -> AccessToken:
        """Verify ``token``.

        Raises:
            TokenRejected: it is not a valid access token for this server.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise TokenRejected("the token is not a JWT") from None
        algorithm = header.get("alg")
        # Checked before any key is looked up: "none" and HMAC never verify.
        if algorithm not in self.settings.algorithms:
            raise TokenRejected(f"the token's algorithm {algorithm!r} is not accepted")
        kid = header.get("kid")
        key = await self.keys.key(kid if isinstance(kid, str) else None)
        claims = self._decode(token, key, str(algorithm))
        return access_token(token, claims, self.settings)

    def _decode(self, token: str, key: jwt.PyJWK, algorithm: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key=key,
                algorithms=[algorithm],
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_seconds,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("the token is not valid yet (nbf or iat)") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected(
                f"the token is not for this server (aud is not {self.settings.audience})"
            ) from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("the token is from another issuer") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("the token's signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected(f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidTokenError as exc:
            raise TokenRejected(f"the token is invalid: {exc}") from None


# ------------------------------------------------------------- introspection


class IntrospectionVerifier:
    """Asks the authorization server about each token (RFC 7662).

    For opaque (non-JWT) tokens. The answer must say ``active``; its ``aud``
    must include the configured audience, its ``iss`` (when present) be the
    issuer, and ``exp``/``nbf`` (when present) hold. With
    ``introspection_cache_seconds`` an accepted token is remembered that long
    (never past its ``exp``), keyed by its SHA-256: a revocation then takes
    up to that long to be noticed. Refusals are never cached.
    """

    def __init__(
        self,
        settings: OAuthSettings,
        secret: str,
        clock: Clock = time.time,
    ) -> None:
        assert settings.introspection_url is not None
        assert settings.introspection_client_id is not None
        self.settings = settings
        self._url = settings.introspection_url
        self._auth = (settings.introspection_client_id, secret)
        self._clock = clock
        self._accepted: dict[bytes, tuple[AccessToken, float]] = {}
        #: How many introspection requests were made (for tests).
        self.requests = 0

    async def verify_token(self, token: str) -> AccessToken | None:
        """The token's `AccessToken`, or ``None`` (the reason goes to `refusals`)."""
        try:
            return await self.verify(token)
        except TokenRejected as exc:
            _refuse(str(exc))
            return None

    async def verify(self, token: str) -> AccessToken:
        """Introspect ``token``.

        Raises:
            TokenRejected: it is not active or not for this server.
        """
        key = hashlib.sha256(token.encode()).digest()
        remembered = self._accepted.get(key)
        if remembered is not None:
            if self._clock() < remembered[1]:
                return remembered[0]
            del self._accepted[key]
        accepted = await self._ask(token)
        self._remember(key, accepted)
        return accepted

    def _remember(self, key: bytes, accepted: AccessToken) -> None:
        seconds = self.settings.introspection_cache_seconds
        if not seconds:
            return
        until = self._clock() + seconds
        if accepted.expires_at is not None:
            until = min(until, accepted.expires_at)
        if len(self._accepted) >= INTROSPECTION_CACHE_SIZE:
            # Oldest first (insertion order); expired entries go on use.
            del self._accepted[next(iter(self._accepted))]
        self._accepted[key] = (accepted, until)

    async def _ask(self, token: str) -> AccessToken:
        answer = await self._introspect(token)
        if answer.get("active") is not True:
            raise TokenRejected("the token is not active")
        issuer = answer.get("iss")
        if issuer is not None and issuer != self.settings.issuer:
            raise TokenRejected("the token is from another issuer")
        audience = answer.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience
        if not isinstance(audiences, list) or self.settings.audience not in audiences:
            raise TokenRejected(
                f"the token is not for this server (aud is not {self.settings.audience})"
            )
        self._check_times(answer)
        return access_token(token, answer, self.settings)

    def _check_times(self, answer: Mapping[str, Any]) -> None:
        now = self._clock()
        leeway = self.settings.leeway_seconds
        expires = answer.get("exp")
        if isinstance(expires, int | float) and expires + leeway <= now:
            raise TokenRejected("the token has expired")
        not_before = answer.get("nbf")
        if isinstance(not_before, int | float) and not_before - leeway > now:
            raise TokenRejected("the token is not valid yet (nbf or iat)")

    async def _introspect(self, token: str) -> dict[str, Any]:
        self.requests += 1
        try:
            async with httpx2.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS) as http:
                response = await http.post(
                    self._url,
                    data={"token": token, "token_type_hint": "access_token"},
                    auth=self._auth,
                    headers={"Accept": "application/json"},
                )
        except httpx2.HTTPError as exc:
            logger.warning("token introspection failed: %r", exc)
            raise TokenRejected(
                "the token could not be checked (introspection failed)"
            ) from None
        if response.status_code != 200:
            logger.warning("token introspection answered HTTP %d", response.status_code)
            raise TokenRejected("the token could not be checked (introspection failed)")
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise TokenRejected("the token could not be checked (introspection failed)")
        return cast("dict[str, Any]", data)


def read_secret(path: Path) -> str:
    """The introspection client secret: the file's first line.

    Raises:
        ConfigurationError: the file cannot be read or is empty.
    """
    try:
        secret = path.read_text().strip()
    except OSError as exc:
        raise ConfigurationError(
            "auth.introspection_client_secret_file",
            f"cannot read {path}: {exc.strerror}",
        ) from None
    if not secret:
        raise ConfigurationError(
            "auth.introspection_client_secret_file", f"{path} is empty"
        )
    return secret


def _secure(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "https" or parts.hostname in (
        "127.0.0.1",
        "localhost",
        "::1",
    )


def oauth_verifier(settings: OAuthSettings) -> JwtVerifier | IntrospectionVerifier:
    """The verifier ``settings`` configure; files are read now.

    Raises:
        ConfigurationError: the ``oauth`` extra is missing, or a configured
            file (JWKS, introspection secret) is unreadable.
    """
    for url in (settings.jwks_url, settings.introspection_url):
        if url is not None and not _secure(url):
            # Keys or answers over plain HTTP can be swapped by anyone on the
            # path: they decide who is authenticated.
            logger.warning(
                "%s is plain http and not loopback; use https in production", url
            )
    if settings.introspection_url is not None:
        assert settings.introspection_client_secret_file is not None
        return IntrospectionVerifier(
            settings, read_secret(settings.introspection_client_secret_file)
        )
    require_crypto()
    return JwtVerifier(settings, jwks_keys(settings))
