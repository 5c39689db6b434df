"""Settings: limits, per-client overrides, tool configuration and bearer tokens.

Read from a TOML config file (``--config``) and an optional TOML token file.
Every value is validated at start-up; a bad value raises `ConfigurationError`
naming the key. This module imports only the exception tree.

Config file shape (every key optional)::

    [limits]
    workers = 8                     # global worker limit
    client_concurrency = 4          # running tasks per client
    client_backlog = 10000          # unfinished tasks per client
    default_ttl_seconds = 86400     # retention when the client asks for none
    max_ttl_seconds = 604800        # cap on the retention a client may ask for
    poll_interval_seconds = 1.0     # suggested polling interval
    sweep_interval_seconds = 60     # how often expired tasks are purged
    max_argument_bytes = 1048576    # largest accepted tool-call arguments object
    shutdown_grace_seconds = 10     # running steps may finish this long at shutdown
    mrtr_timeout_seconds = 900      # a synchronous call's unanswered question expires
    lease_seconds = 30              # a run's lease; renewed every third of it
    max_result_bytes = 16777216     # largest tool result stored (bigger: tool error)
    progress_interval_seconds = 0.05  # at most one progress write per task this often

    [budgets.openai]                # a shared rate-limit budget for upstream calls
    requests_per_minute = 500
    tokens_per_minute = 200000

    [journal]
    synchronous = "FULL"            # or "NORMAL": survives app crashes, not power loss
    feed_poll_seconds = 0.05        # how often other processes' changes are read

    [http]                          # only with --http
    max_connections = 1000          # open connections; more evict idle ones or are refused
    header_timeout_seconds = 10     # a request head must arrive this soon (idle too)
    allowed_hosts = ["mcp.example.com"]   # Host values accepted besides loopback; "*": any
    allowed_origins = ["https://app.example.com"]  # browser Origin values accepted
    trusted_proxies = ["10.0.0.0/8"]      # peers whose X-Forwarded-For is believed
    event_loop = "auto"             # "uvloop" when installed (default), or "asyncio"
    parser = "auto"                 # "httptools" when installed (default), or "h11"

    [clients.alice]                 # per-client overrides, keyed by client id
    concurrency = 8
    backlog = 50000

    [tools.run_command]             # checked against the tool's config model at
    allowed = ["make", "pytest"]    # start-up (mcp_tasks._toolloader.check_tool_config)

Token file shape::

    [[client]]
    id = "alice"
    token = "a-long-random-secret"
    concurrency = 8                 # optional, overrides [clients.alice]
    backlog = 50000                 # optional
"""

from __future__ import annotations

import importlib.util
import ipaddress
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from mcp_tasks._budgets import BudgetLimits
from mcp_tasks._exceptions import ConfigurationError


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """Caps for one client: running tasks and unfinished tasks."""

    concurrency: int
    backlog: int


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: A Host header value: a DNS name, an IPv4 address or a bracketed IPv6 one,
#: with an optional port.
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9.-]*[a-z0-9])?)(:[0-9]{1,5})?")


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """The ``[http]`` section: connection limits, accepted hosts, trusted proxies.

    ``allowed_hosts`` and ``allowed_origins`` are accepted besides the loopback
    names; ``allowed_hosts = ("*",)`` turns the Host and Origin checks off.
    ``trusted_proxies`` are the peers whose ``X-Forwarded-For`` names the
    client.
    """

    max_connections: int = 1000
    header_timeout_seconds: float = 10.0
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[IpNetwork, ...] = ()
    #: ``auto`` (uvloop when installed), ``uvloop`` or ``asyncio``.
    event_loop: str = "auto"
    #: ``auto`` (httptools when installed), ``httptools`` or ``h11``.
    parser: str = "auto"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the runtime and server need to know, validated."""

    workers: int = 8
    client_concurrency: int = 4
    client_backlog: int = 10_000
    default_ttl_seconds: float | None = 86_400.0
    max_ttl_seconds: float | None = 7 * 86_400.0
    poll_interval_seconds: float = 1.0
    sweep_interval_seconds: float = 60.0
    max_argument_bytes: int = 1_048_576
    shutdown_grace_seconds: float = 10.0
    mrtr_timeout_seconds: float = 900.0
    lease_seconds: float = 30.0
    max_result_bytes: int = 16 * 1024 * 1024
    progress_interval_seconds: float = 0.05
    synchronous: str = "FULL"
    feed_poll_seconds: float = 0.05
    http: HttpSettings = field(default_factory=HttpSettings)
    budgets: Mapping[str, BudgetLimits] = field(
        default_factory=lambda: dict[str, BudgetLimits]()
    )
    client_overrides: Mapping[str, ClientLimits] = field(
        default_factory=lambda: dict[str, ClientLimits]()
    )
    tool_config: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: dict[str, Mapping[str, Any]]()
    )
    tokens: Mapping[str, str] = field(default_factory=lambda: dict[str, str]())

    def limits_for(self, client_id: str) -> ClientLimits:
        """The caps that apply to ``client_id`` (its override, else the defaults)."""
        override = self.client_overrides.get(client_id)
        if override is not None:
            return override
        return ClientLimits(self.client_concurrency, self.client_backlog)

    def effective_ttl(self, requested_seconds: float | None) -> float | None:
        """The retention granted for a requested one: default if none, capped."""
        ttl = (
            self.default_ttl_seconds if requested_seconds is None else requested_seconds
        )
        if self.max_ttl_seconds is not None and (
            ttl is None or ttl > self.max_ttl_seconds
        ):
            return self.max_ttl_seconds
        return ttl

    def budget(self, name: str) -> BudgetLimits:
        """The limits of the budget called ``name``.

        Raises:
            KeyError: the config has no ``[budgets.NAME]`` table of that name.
        """
        limits = self.budgets.get(name)
        if limits is None:
            raise KeyError(f"no budget named {name!r} in the config ([budgets.{name}])")
        return limits

    @property
    def auth_enabled(self) -> bool:
        """Whether bearer tokens identify HTTP requestors."""
        return bool(self.tokens)

    @classmethod
    def load(cls, config: Path | None = None, tokens: Path | None = None) -> Settings:
        """Read and validate the config file and the token file (both optional)."""
        settings = cls()
        if config is not None:
            settings = _apply_config(settings, _read_toml(config, "--config"))
        if tokens is not None:
            settings = _apply_tokens(settings, _read_toml(tokens, "--tokens"))
        return settings


def _read_toml(path: Path, key: str) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigurationError(key, f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(key, f"{path} is not valid TOML: {exc}") from exc


def _positive_int(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(key, f"must be a positive integer, got {value!r}")
    return value


def _positive_number(key: str, value: object) -> float:
    # `not value > 0` also refuses NaN, which compares false with everything.
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(key, f"must be a positive number, got {value!r}")
    if math.isinf(value):
        raise ConfigurationError(
            key, 'must be finite (use 0 or "unlimited" for no limit)'
        )
    return float(value)


def _optional_duration(key: str, value: object) -> float | None:
    # 0 or "unlimited" means no limit: explicit, never an accident of a missing key.
    if value == "unlimited" or (type(value) is int and value == 0):
        return None
    return _positive_number(key, value)


def _table(key: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigurationError(key, "must be a table")
    return cast("dict[str, Any]", value)


_LIMIT_KEYS = {
    "workers": _positive_int,
    "client_concurrency": _positive_int,
    "client_backlog": _positive_int,
    "default_ttl_seconds": _optional_duration,
    "max_ttl_seconds": _optional_duration,
    "poll_interval_seconds": _positive_number,
    "sweep_interval_seconds": _positive_number,
    "max_argument_bytes": _positive_int,
    "shutdown_grace_seconds": _positive_number,
    "mrtr_timeout_seconds": _positive_number,
    "lease_seconds": _positive_number,
    "max_result_bytes": _positive_int,
    "progress_interval_seconds": _positive_number,
}


def _apply_config(settings: Settings, data: dict[str, Any]) -> Settings:
    unknown = set(data) - {"limits", "journal", "http", "clients", "tools", "budgets"}
    if unknown:
        raise ConfigurationError(sorted(unknown)[0], "unknown section")
    changes: dict[str, Any] = {}
    for key, value in _table("limits", data.get("limits", {})).items():
        check = _LIMIT_KEYS.get(key)
        if check is None:
            raise ConfigurationError(f"limits.{key}", "unknown setting")
        changes[key] = check(f"limits.{key}", value)
    journal = _table("journal", data.get("journal", {}))
    for key, value in journal.items():
        if key == "feed_poll_seconds":
            changes[key] = _positive_number(f"journal.{key}", value)
            continue
        if key != "synchronous":
            raise ConfigurationError(f"journal.{key}", "unknown setting")
        if value not in ("FULL", "NORMAL"):
            raise ConfigurationError(
                "journal.synchronous", f'must be "FULL" or "NORMAL", got {value!r}'
            )
        changes["synchronous"] = value
    changes["http"] = _http(_table("http", data.get("http", {})))
    settings = replace(settings, **changes)
    overrides = dict(settings.client_overrides)
    for client_id, raw in _table("clients", data.get("clients", {})).items():
        overrides[client_id] = _client_limits(
            f"clients.{client_id}", _table(f"clients.{client_id}", raw), settings
        )
    tools = {
        name: _table(f"tools.{name}", raw)
        for name, raw in _table("tools", data.get("tools", {})).items()
    }
    budgets = {
        name: _budget(f"budgets.{name}", _table(f"budgets.{name}", raw))
        for name, raw in _table("budgets", data.get("budgets", {})).items()
    }
    return replace(
        settings, client_overrides=overrides, tool_config=tools, budgets=budgets
    )


def _http(raw: Mapping[str, Any]) -> HttpSettings:
    unknown = set(raw) - set(HttpSettings.__dataclass_fields__)
    if unknown:
        raise ConfigurationError(f"http.{sorted(unknown)[0]}", "unknown setting")
    defaults = HttpSettings()
    return HttpSettings(
        max_connections=_positive_int(
            "http.max_connections", raw.get("max_connections", defaults.max_connections)
        ),
        header_timeout_seconds=_positive_number(
            "http.header_timeout_seconds",
            raw.get("header_timeout_seconds", defaults.header_timeout_seconds),
        ),
        allowed_hosts=tuple(
            _host("http.allowed_hosts", v)
            for v in _strings("http.allowed_hosts", raw.get("allowed_hosts", []))
        ),
        allowed_origins=tuple(
            _origin("http.allowed_origins", v)
            for v in _strings("http.allowed_origins", raw.get("allowed_origins", []))
        ),
        trusted_proxies=tuple(
            _network("http.trusted_proxies", v)
            for v in _strings("http.trusted_proxies", raw.get("trusted_proxies", []))
        ),
        event_loop=_choice(
            "http.event_loop",
            raw.get("event_loop", "auto"),
            ("auto", "uvloop", "asyncio"),
        ),
        parser=_choice(
            "http.parser", raw.get("parser", "auto"), ("auto", "httptools", "h11")
        ),
    )


def _choice(key: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        named = ", ".join(f'"{a}"' for a in allowed)
        raise ConfigurationError(key, f"must be one of {named}, got {value!r}")
    if value != "auto" and value != allowed[-1] and not _installed(str(value)):
        raise ConfigurationError(
            key, f'{value} is not installed (pip install {value}), or use "auto"'
        )
    return cast("str", value)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _strings(key: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(
        isinstance(v, str) and v for v in cast("list[object]", value)
    ):
        raise ConfigurationError(key, f"must be a list of strings, got {value!r}")
    return cast("list[str]", value)


def _host(key: str, value: str) -> str:
    # What a Host header carries: a name or address, optionally with a port.
    host = value.lower()
    if host != "*" and not _HOST.fullmatch(host):
        raise ConfigurationError(
            key, f"{value!r} is not a host name (write it as in a Host header)"
        )
    return host


def _origin(key: str, value: str) -> str:
    origin = value.lower()
    scheme, sep, host = origin.partition("://")
    if not (sep and scheme in ("http", "https") and _HOST.fullmatch(host)):
        raise ConfigurationError(
            key, f"{value!r} is not an origin such as 'https://app.example.com'"
        )
    return origin


def _network(key: str, value: str) -> IpNetwork:
    try:
        return ipaddress.ip_network(value)
    except ValueError as exc:
        raise ConfigurationError(key, f"{value!r}: {exc}") from None


def _budget(key: str, raw: Mapping[str, Any]) -> BudgetLimits:
    unknown = set(raw) - {"requests_per_minute", "tokens_per_minute"}
    if unknown:
        raise ConfigurationError(f"{key}.{sorted(unknown)[0]}", "unknown setting")
    if not raw:
        raise ConfigurationError(
            key, "needs requests_per_minute and/or tokens_per_minute"
        )
    rpm = raw.get("requests_per_minute")
    tpm = raw.get("tokens_per_minute")
    return BudgetLimits(
        None if rpm is None else _positive_number(f"{key}.requests_per_minute", rpm),
        None if tpm is None else _positive_number(f"{key}.tokens_per_minute", tpm),
    )


def _client_limits(
    key: str,
    raw: Mapping[str, Any],
    base: Settings,
    extra: frozenset[str] = frozenset(),
    client_id: str | None = None,
) -> ClientLimits:
    if "token" in raw and "token" not in extra:
        raise ConfigurationError(
            f"{key}.token", "tokens belong in the token file (--tokens), not the config"
        )
    unknown = set(raw) - {"concurrency", "backlog"} - extra
    if unknown:
        raise ConfigurationError(f"{key}.{sorted(unknown)[0]}", "unknown setting")
    current = base.limits_for(client_id or key.rsplit(".", 1)[-1])
    concurrency = raw.get("concurrency", current.concurrency)
    backlog = raw.get("backlog", current.backlog)
    return ClientLimits(
        _positive_int(f"{key}.concurrency", concurrency),
        _positive_int(f"{key}.backlog", backlog),
    )


def _apply_tokens(settings: Settings, data: dict[str, Any]) -> Settings:
    entries = data.get("client", [])
    if not isinstance(entries, list) or not entries:
        raise ConfigurationError("client", "token file needs at least one [[client]]")
    tokens: dict[str, str] = {}
    overrides = dict(settings.client_overrides)
    for index, raw in enumerate(cast("list[object]", entries)):
        key = f"client[{index}]"
        entry = _table(key, raw)
        client_id = entry.get("id")
        token = entry.get("token")
        if not isinstance(client_id, str) or not client_id:
            raise ConfigurationError(f"{key}.id", "must be a non-empty string")
        if not isinstance(token, str) or len(token) < 16:
            raise ConfigurationError(
                f"{key}.token", "must be a string of at least 16 characters"
            )
        if token in tokens:
            raise ConfigurationError(f"{key}.token", "is used by another client")
        tokens[token] = client_id
        limits = _client_limits(
            key, entry, settings, frozenset({"id", "token"}), client_id=client_id
        )
        if "concurrency" in entry or "backlog" in entry:
            overrides[client_id] = limits
    return replace(settings, tokens=tokens, client_overrides=overrides)
