"""Signing keys for JWT access tokens: a JWKS from a file or a URL, cached.

`JwksKeys` holds the issuer's public signing keys and refreshes them on a TTL
and when a token names an unknown key id, at most once per
``jwks_refresh_min_seconds``: a flood of made-up key ids (or an issuer that is
down) costs one fetch per interval. Keys are parsed by PyJWT (``cryptography``
does the key types: the ``oauth`` extra). `TokenRejected` is how anything here
refuses a token.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, cast

import anyio
import httpx2
import jwt

from mcp_tasks._exceptions import ConfigurationError
from mcp_tasks._oauth_config import OAuthSettings

logger = logging.getLogger("mcp_tasks.auth")

#: How long fetching keys or introspecting a token may take.
HTTP_TIMEOUT_SECONDS: Final = 10.0
EXTRA_HINT: Final = "install the oauth extra: pip install 'mcp-tasks[oauth]'"
_PUBLIC_KEY_TYPES: Final = ("RSA", "EC", "OKP")

Clock = Callable[[], float]


class TokenRejected(Exception):
    """A token is not accepted; the message says why (shown to the client)."""


def parse_jwks(data: object, source: str) -> dict[str, jwt.PyJWK]:
    """The signing keys of a JWKS document, by key id ("" when a key has none).

    Keys for encryption (``"use": "enc"``), symmetric keys and keys PyJWT
    cannot use (an unknown type or curve) are skipped.

    Raises:
        ValueError: ``data`` is not a JWKS or has no usable signing key.
    """
    if not isinstance(data, dict) or not isinstance(
        cast("dict[str, object]", data).get("keys"), list
    ):
        raise ValueError(f"{source} is not a JWK set (an object with a 'keys' list)")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in cast("list[object]", cast("dict[str, object]", data)["keys"]):
        if not isinstance(entry, dict):
            continue
        jwk = cast("dict[str, Any]", entry)
        # Public keys for signatures only: a symmetric ("oct") key in a
        # published set would be a secret everybody can read.
        if jwk.get("use", "sig") != "sig" or jwk.get("kty") not in _PUBLIC_KEY_TYPES:
            continue
        try:
            key = jwt.PyJWK.from_dict(jwk)
        except jwt.PyJWKError as exc:
            if "cryptography" in str(exc).lower():
                raise ValueError(f"{source}: {exc}; {EXTRA_HINT}") from None
            logger.warning("skipping a key of %s: %s", source, exc)
            continue
        keys[str(jwk.get("kid", ""))] = key
    if not keys:
        raise ValueError(f"{source} has no usable signing key")
    return keys


def read_jwks_file(path: Path) -> dict[str, jwt.PyJWK]:
    """The keys in the JWKS file at ``path``.

    Raises:
        ConfigurationError: the file cannot be read or holds no usable key.
    """
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigurationError(
            "auth.jwks_file", f"cannot read {path}: {exc.strerror}"
        ) from None
    except ValueError as exc:
        raise ConfigurationError(
            "auth.jwks_file", f"{path} is not JSON: {exc}"
        ) from None
    try:
        return parse_jwks(data, str(path))
    except ValueError as exc:
        raise ConfigurationError("auth.jwks_file", str(exc)) from None


async def fetch_jwks_url(url: str) -> dict[str, jwt.PyJWK]:
    """Fetch the JWKS at ``url``.

    Raises:
        ValueError: the fetch failed or the answer holds no usable key.
    """
    try:
        async with httpx2.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS) as http:
            response = await http.get(url, headers={"Accept": "application/json"})
    except httpx2.HTTPError as exc:
        raise ValueError(f"fetching {url} failed: {exc!r}") from None
    if response.status_code != 200:
        raise ValueError(f"fetching {url} answered HTTP {response.status_code}")
    try:
        data = response.json()
    except ValueError:
        raise ValueError(f"{url} did not answer JSON") from None
    return parse_jwks(data, url)


class JwksKeys:
    """Signing keys, cached and refreshed on a TTL and on unknown key ids.

    ``fetch`` loads the whole set (a file read or an HTTP GET). A failed
    refresh keeps the keys already known. Refreshes are single-flight: many
    requests waiting on one unknown key id cause one fetch, and unknown key
    ids refresh at most once per ``refresh_min_seconds``.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[dict[str, jwt.PyJWK]]],
        *,
        cache_seconds: float,
        refresh_min_seconds: float,
        initial: dict[str, jwt.PyJWK] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._cache_seconds = cache_seconds
        self._refresh_min = refresh_min_seconds
        self._clock = clock
        self._keys = initial or {}
        self._fetched_at = clock() if initial else None
        self._attempted_at: float | None = self._fetched_at
        self._lock: anyio.Lock | None = None
        #: How many fetches were made (for tests and the benchmark).
        self.fetches = 0

    async def key(self, kid: str | None) -> jwt.PyJWK:
        """The key a token names with ``kid`` (or the only key, without one).

        Raises:
            TokenRejected: no such key, even after a refresh.
        """
        now = self._clock()
        if self._fetched_at is None or now - self._fetched_at >= self._cache_seconds:
            await self._refresh(now)
        found = self._lookup(kid)
        if found is None and self._may_refresh(self._clock()):
            await self._refresh(self._clock())
            found = self._lookup(kid)
        if found is not None:
            return found
        if not self._keys:
            raise TokenRejected("the issuer's signing keys are not available")
        if kid is None:
            raise TokenRejected("the token names no key (kid) and there are several")
        raise TokenRejected(f"the token's signing key {kid!r} is not known")

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _may_refresh(self, now: float) -> bool:
        return (
            self._attempted_at is None or now - self._attempted_at >= self._refresh_min
        )

    async def _refresh(self, now: float) -> None:
        if self._lock is None:
            self._lock = anyio.Lock()
        attempted = self._attempted_at
        async with self._lock:
            if self._attempted_at != attempted:
                return  # another request refreshed while this one waited
            if not self._may_refresh(now):
                # Tried (and failed) moments ago: with the issuer down, requests
                # must not each wait on another fetch.
                return
            self._attempted_at = now
            self.fetches += 1
            try:
                keys = await self._fetch()
            except ValueError as exc:
                logger.warning("signing keys not refreshed: %s", exc)
                return
            self._keys = keys
            self._fetched_at = now


def jwks_keys(settings: OAuthSettings, clock: Clock = time.monotonic) -> JwksKeys:
    """The key cache of ``settings`` (a file is read now: its errors are start-up errors).

    Raises:
        ConfigurationError: the JWKS file is unreadable or holds no usable key.
    """
    path = settings.jwks_file
    if path is not None:
        initial = read_jwks_file(path)

        async def read() -> dict[str, jwt.PyJWK]:
            try:
                return read_jwks_file(path)
            except ConfigurationError as exc:
                raise ValueError(exc.problem) from None

        return JwksKeys(
            read,
            cache_seconds=settings.jwks_cache_seconds,
            refresh_min_seconds=settings.jwks_refresh_min_seconds,
            initial=initial,
            clock=clock,
        )
    url = settings.jwks_url
    assert url is not None

    async def fetch() -> dict[str, jwt.PyJWK]:
        return await fetch_jwks_url(url)

    return JwksKeys(
        fetch,
        cache_seconds=settings.jwks_cache_seconds,
        refresh_min_seconds=settings.jwks_refresh_min_seconds,
        clock=clock,
    )
