"""The ``[auth]`` table: mcp-tasks as an OAuth 2.1 resource server.

Parsed and validated here (no I/O, no ``mcp``); the verifiers that use it live
in `mcp_tasks.binding._oauth`. This module imports only the exception tree and
the client limits type.

Table shape (``issuer``, ``audience`` and one of ``jwks_file``, ``jwks_url``
or ``introspection_url`` are required)::

    [auth]
    issuer = "https://id.example.com/realms/tools"   # the tokens' "iss", exactly
    audience = "https://mcp.example.com/mcp"        # this server's resource URL ("aud")
    jwks_url = "https://id.example.com/realms/tools/protocol/openid-connect/certs"
    # jwks_file = "/etc/mcp-tasks/jwks.json"        # or the keys from a file
    # introspection_url = "https://id.example.com/.../introspect"  # opaque tokens
    # introspection_client_id = "mcp-tasks"
    # introspection_client_secret_file = "/etc/mcp-tasks/introspection-secret"
    # introspection_cache_seconds = 0   # remember accepted tokens this long
    owner_claim = "sub"                 # or "client_id", "azp": whose tasks these are
    authorization_servers = ["https://id.example.com/realms/tools"]  # default [issuer]
    required_scopes = ["tasks"]         # every request needs all of them (else 403)
    operator_scope = "tasks:operator"   # tokens with it are operators
    algorithms = ["RS256", "ES256"]     # accepted signature algorithms
    leeway_seconds = 30                 # clock skew allowed on exp / nbf / iat
    jwks_cache_seconds = 300            # keys are re-fetched this often
    jwks_refresh_min_seconds = 10       # an unknown "kid" re-fetches at most this often
    tier_claim = "tier"                 # a claim naming the client's tier

    [auth.tiers.gold]                   # limits of the tokens whose tier is "gold"
    concurrency = 16
    backlog = 50000
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast
from urllib.parse import urlsplit

from mcp_tasks._exceptions import ConfigurationError

#: Asymmetric JWS algorithms only: a JWKS holds public keys, and an HMAC
#: "key" taken from one would let anybody who read the JWKS sign tokens.
ASYMMETRIC_ALGORITHMS: Final = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


@dataclass(frozen=True, slots=True)
class TierLimits:
    """Caps of a tier: running tasks and unfinished tasks per client."""

    concurrency: int
    backlog: int


@dataclass(frozen=True, slots=True)
class OAuthSettings:
    """The validated ``[auth]`` table (see the module docstring)."""

    issuer: str
    audience: str
    jwks_file: Path | None = None
    jwks_url: str | None = None
    introspection_url: str | None = None
    introspection_client_id: str | None = None
    introspection_client_secret_file: Path | None = None
    introspection_cache_seconds: float = 0.0
    owner_claim: str = "sub"
    authorization_servers: tuple[str, ...] = ()
    required_scopes: tuple[str, ...] = ()
    operator_scope: str | None = None
    algorithms: tuple[str, ...] = ASYMMETRIC_ALGORITHMS
    leeway_seconds: float = 30.0
    jwks_cache_seconds: float = 300.0
    jwks_refresh_min_seconds: float = 10.0
    tier_claim: str | None = None
    tiers: Mapping[str, TierLimits] = field(
        default_factory=lambda: dict[str, TierLimits]()
    )

    @property
    def advertised_servers(self) -> tuple[str, ...]:
        """The authorization servers named in the protected resource metadata."""
        return self.authorization_servers or (self.issuer,)


_STRING_KEYS: Final = ("issuer", "audience", "owner_claim", "tier_claim")
_URL_KEYS: Final = ("jwks_url", "introspection_url")
_KEYS: Final = frozenset(OAuthSettings.__dataclass_fields__)


def parse_auth(raw: Mapping[str, Any]) -> OAuthSettings:
    """Validate the ``[auth]`` table.

    Raises:
        ConfigurationError: a key is unknown, missing or has a bad value; the
            message names it (``auth.KEY``).
    """
    unknown = set(raw) - _KEYS
    if unknown:
        raise ConfigurationError(f"auth.{sorted(unknown)[0]}", "unknown setting")
    for key in ("issuer", "audience"):
        if key not in raw:
            raise ConfigurationError(f"auth.{key}", "is required in [auth]")
    values = _scalars(raw)
    values.update(_lists(raw))
    values.update(_durations(raw))
    values["tiers"] = _tiers(raw.get("tiers", {}))
    settings = OAuthSettings(**values)
    _check_sources(settings)
    return settings


def _scalars(raw: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in (*_STRING_KEYS, "introspection_client_id"):
        if key in raw:
            values[key] = _string(f"auth.{key}", raw[key])
    values["audience"] = _http_url("auth.audience", values["audience"])
    for key in _URL_KEYS:
        if key in raw:
            values[key] = _http_url(f"auth.{key}", _string(f"auth.{key}", raw[key]))
    for key in ("jwks_file", "introspection_client_secret_file"):
        if key in raw:
            values[key] = Path(_string(f"auth.{key}", raw[key]))
    if "operator_scope" in raw:
        values["operator_scope"] = _scope("auth.operator_scope", raw["operator_scope"])
    return values


def _lists(raw: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if "authorization_servers" in raw:
        values["authorization_servers"] = tuple(
            _http_url(
                "auth.authorization_servers", _string("auth.authorization_servers", v)
            )
            for v in _list("auth.authorization_servers", raw["authorization_servers"])
        )
    if "required_scopes" in raw:
        values["required_scopes"] = tuple(
            _scope("auth.required_scopes", v)
            for v in _list("auth.required_scopes", raw["required_scopes"])
        )
        # MCP authorization (2026-07-28): protected resources SHOULD NOT ask
        # for offline_access; a refresh token is the client's business.
        if "offline_access" in values["required_scopes"]:
            raise ConfigurationError(
                "auth.required_scopes",
                "offline_access is for the client to request, not a resource scope",
            )
    if "algorithms" in raw:
        algorithms = _list("auth.algorithms", raw["algorithms"])
        for name in algorithms:
            if name not in ASYMMETRIC_ALGORITHMS:
                raise ConfigurationError(
                    "auth.algorithms",
                    f"{name!r} is not accepted; use asymmetric algorithms only: "
                    + ", ".join(ASYMMETRIC_ALGORITHMS),
                )
        if not algorithms:
            raise ConfigurationError("auth.algorithms", "must name an algorithm")
        values["algorithms"] = tuple(algorithms)
    return values


def _durations(raw: Mapping[str, Any]) -> dict[str, float]:
    values: dict[str, float] = {}
    for key in ("jwks_cache_seconds", "jwks_refresh_min_seconds"):
        if key in raw:
            values[key] = _positive_number(f"auth.{key}", raw[key])
    for key in ("leeway_seconds", "introspection_cache_seconds"):
        if key in raw:
            value = raw[key]
            # 0 is allowed: no leeway, no cache.
            if not (type(value) in (int, float) and value == 0):
                value = _positive_number(f"auth.{key}", value)
            values[key] = float(value)
    return values


def _check_sources(settings: OAuthSettings) -> None:
    sources = [
        key
        for key in ("jwks_file", "jwks_url", "introspection_url")
        if getattr(settings, key) is not None
    ]
    if len(sources) != 1:
        raise ConfigurationError(
            "auth.jwks_url",
            "[auth] needs exactly one of jwks_file, jwks_url and introspection_url"
            + (f" (got {', '.join(sources)})" if sources else ""),
        )
    if settings.introspection_url is not None and (
        settings.introspection_client_id is None
        or settings.introspection_client_secret_file is None
    ):
        raise ConfigurationError(
            "auth.introspection_client_id",
            "introspection needs introspection_client_id and "
            "introspection_client_secret_file",
        )
    if settings.tiers and settings.tier_claim is None:
        raise ConfigurationError(
            "auth.tier_claim", "[auth.tiers] need tier_claim (the claim naming a tier)"
        )


def _tiers(raw: object) -> dict[str, TierLimits]:
    if not isinstance(raw, dict):
        raise ConfigurationError("auth.tiers", "must be a table")
    tiers: dict[str, TierLimits] = {}
    for name, entry in cast("dict[str, object]", raw).items():
        key = f"auth.tiers.{name}"
        if not isinstance(entry, dict):
            raise ConfigurationError(key, "must be a table")
        table = cast("dict[str, object]", entry)
        unknown = set(table) - {"concurrency", "backlog"}
        if unknown or set(table) != {"concurrency", "backlog"}:
            raise ConfigurationError(
                f"{key}.{sorted(unknown)[0]}" if unknown else key,
                "unknown setting" if unknown else "needs concurrency and backlog",
            )
        tiers[name] = TierLimits(
            _positive_int(f"{key}.concurrency", table["concurrency"]),
            _positive_int(f"{key}.backlog", table["backlog"]),
        )
    return tiers


def _string(key: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(key, f"must be a non-empty string, got {value!r}")
    return value


def _list(key: str, value: object) -> list[str]:
    if not isinstance(value, list):
        raise ConfigurationError(key, f"must be a list of strings, got {value!r}")
    return [_string(key, v) for v in cast("list[object]", value)]


def _scope(key: str, value: object) -> str:
    scope = _string(key, value)
    # RFC 6749 3.3: a scope token is printable ASCII without space, '"' or '\'.
    if any(c in ' "\\' or not 0x21 <= ord(c) <= 0x7E for c in scope):
        raise ConfigurationError(key, f"{scope!r} is not a scope token")
    return scope


def _http_url(key: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(key, f"{value!r} is not an http(s) URL")
    if parts.fragment:
        raise ConfigurationError(key, f"{value!r} must not have a fragment")
    return value


def _positive_int(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(key, f"must be a positive integer, got {value!r}")
    return value


def _positive_number(key: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not value > 0
        or math.isinf(value)
    ):
        raise ConfigurationError(key, f"must be a positive number, got {value!r}")
    return float(value)
