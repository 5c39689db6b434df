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
    requests_per_second = 100       # task requests per client (0: unlimited)
    request_burst = 200             # requests a client may make at once (default 2x)
    request_delay_seconds = 1.0     # a request over the rate waits this long at most

    [budgets.openai]                # a shared rate-limit budget for upstream calls
    requests_per_minute = 500
    tokens_per_minute = 200000

    [journal]
    db = "mcp-tasks.db"             # path (SQLite) or postgresql://USER@HOST:PORT/DB; --db wins
    synchronous = "FULL"            # or "NORMAL": survives app crashes, not power loss
    feed_poll_seconds = 0.05        # how often other processes' changes are read
    pool_size = 8                   # PostgreSQL: most connections per process (+1 LISTEN)
    listen_url = "postgresql://…"   # PostgreSQL: direct server URL for LISTEN (behind a pooler)
    prepared_statements = true      # PostgreSQL: false behind PgBouncer < 1.21 in transaction mode
    encryption_key_file = "/etc/mcp-tasks/keys"  # encrypt arguments, results, answers
                                    # at rest (pip install 'mcp-tasks[encryption]';
                                    # keys from: mcp-tasks journal keygen)

    [http]                          # only with --http
    max_connections = 1000          # open connections; more evict idle ones or are refused
    header_timeout_seconds = 10     # a request head must arrive this soon (idle too)
    allowed_hosts = ["mcp.example.com"]   # Host values accepted besides loopback; "*": any
    allowed_origins = ["https://app.example.com"]  # browser Origin values accepted
    trusted_proxies = ["10.0.0.0/8"]      # peers whose X-Forwarded-For is believed
    open_endpoints = ["/healthz", "/readyz"]  # operator endpoints served without
                                    # an operator token when --tokens is given
    event_loop = "auto"             # "uvloop" when installed (default), or "asyncio"
    parser = "auto"                 # "httptools" when installed (default), or "h11"
    direct_answers = true           # answer task creation, tasks/get and a finished
                                    # task's tasks/result without the SDK's dispatch

    [tracing]                       # OpenTelemetry (pip install 'mcp-tasks[otel]')
    exporter = "otlp"               # OTLP/HTTP, endpoint from OTEL_EXPORTER_OTLP_*;
                                    # or "file" (JSON lines) or "none"
    file = "spans.jsonl"            # with exporter = "file"
    service_name = "mcp-tasks"
    sample_ratio = 1.0              # of new traces; a caller's sampled trace is kept

    [clients.alice]                 # per-client overrides, keyed by client id
    concurrency = 8
    backlog = 50000
    requests_per_second = 500       # and request_burst

    [tools.run_command]             # checked against the tool's config model at
    allowed = ["make", "pytest"]    # start-up (mcp_tasks._toolloader.check_tool_config)

    [auth]                          # OAuth access tokens (only with --http); the
    issuer = "https://id.example.com"     # keys are in mcp_tasks._oauth_config
    audience = "https://mcp.example.com/mcp"
    jwks_url = "https://id.example.com/jwks"

Token file shape::

    [[client]]
    id = "alice"
    token = "a-long-random-secret"
    concurrency = 8                 # optional, overrides [clients.alice]
    backlog = 50000                 # optional

    [[operator]]                    # optional: may read /metrics, /healthz, /readyz
    id = "ops"                      # (and what later operator pages add); not a client
    token = "another-long-random-secret"
"""

from __future__ import annotations

import importlib.util
import ipaddress
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from mcp_tasks._budgets import IDLE_BUCKET_SECONDS, BudgetLimits
from mcp_tasks._exceptions import ConfigurationError
from mcp_tasks._oauth_config import OAuthSettings, parse_auth


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """Caps for one client: running tasks and unfinished tasks."""

    concurrency: int
    backlog: int


@dataclass(frozen=True, slots=True)
class RequestLimit:
    """How fast one client may make task requests: a rate and a burst."""

    per_second: float
    burst: float


#: What ``[limits] requests_per_second`` is unless configured.
DEFAULT_REQUESTS_PER_SECOND = 100.0
#: The longest a burst may take to refill: buckets untouched this long are full,
#: so the journal may forget them (`Journal.purge_expired`).
MAX_BURST_SECONDS = IDLE_BUCKET_SECONDS


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
    client. ``open_endpoints`` are operator paths (``/metrics``, ...) served
    without an operator token when bearer tokens are on.
    """

    max_connections: int = 1000
    header_timeout_seconds: float = 10.0
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[IpNetwork, ...] = ()
    open_endpoints: tuple[str, ...] = ()
    #: ``auto`` (uvloop when installed), ``uvloop`` or ``asyncio``.
    event_loop: str = "auto"
    #: ``auto`` (httptools when installed), ``httptools`` or ``h11``.
    parser: str = "auto"
    #: Answer a task's hot requests without the SDK's dispatch (`binding._direct`).
    direct_answers: bool = True


#: What ``[tracing] exporter`` may name.
TRACE_EXPORTERS = ("otlp", "file", "none")


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """The ``[tracing]`` section: where spans go, if anywhere.

    ``exporter`` None means not configured: tracing is then on only if the
    standard ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`` variable is set (see
    `mcp_tasks._telemetry`).
    """

    exporter: str | None = None
    file: Path | None = None
    service_name: str = "mcp-tasks"
    sample_ratio: float = 1.0


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
    requests_per_second: float | None = DEFAULT_REQUESTS_PER_SECOND
    request_burst: float | None = None
    request_delay_seconds: float = 1.0
    synchronous: str = "FULL"
    feed_poll_seconds: float = 0.05
    db: str | None = None
    pool_size: int | None = None
    listen_url: str | None = None
    prepared_statements: bool = True
    #: ``[journal] encryption_key_file``: seal values at rest with its keys.
    encryption_key_file: Path | None = None
    http: HttpSettings = field(default_factory=HttpSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)
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
    #: The ``[auth]`` table: OAuth access tokens (`mcp_tasks._oauth_config`).
    oauth: OAuthSettings | None = None
    #: Per-client request limits (None: that client is not limited).
    request_overrides: Mapping[str, RequestLimit | None] = field(
        default_factory=lambda: dict[str, RequestLimit | None]()
    )

    def request_limit_for(self, client_id: str) -> RequestLimit | None:
        """How fast ``client_id`` may make task requests; None: unlimited."""
        if client_id in self.request_overrides:
            return self.request_overrides[client_id]
        return _request_limit(self.requests_per_second, self.request_burst)

    #: Operator bearer tokens (token -> operator id), from ``[[operator]]``.
    operator_tokens: Mapping[str, str] = field(default_factory=lambda: dict[str, str]())

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
        """Whether bearer tokens (token file or OAuth) identify HTTP requestors."""
        return bool(self.tokens) or self.oauth is not None

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


def _optional_rate(key: str, value: object) -> float | None:
    # 0 or "unlimited" turns the limit off, as for durations.
    return _optional_duration(key, value)


def _non_negative(key: str, value: object) -> float:
    if type(value) is int and value == 0:
        return 0.0
    return _positive_number(key, value)


def _request_limit(
    per_second: float | None, burst: float | None
) -> RequestLimit | None:
    if per_second is None:
        return None
    return RequestLimit(
        per_second, burst if burst is not None else max(1.0, 2 * per_second)
    )


def _check_burst(key: str, per_second: float | None, burst: float | None) -> None:
    if per_second is None or burst is None:
        return
    if burst < 1:
        raise ConfigurationError(key, f"must be at least 1, got {burst!r}")
    if burst > per_second * MAX_BURST_SECONDS:
        raise ConfigurationError(
            key, "must refill within an hour (at most 3600 x requests_per_second)"
        )


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
    "requests_per_second": _optional_rate,
    "request_burst": _positive_number,
    "request_delay_seconds": _non_negative,
}


def _apply_config(settings: Settings, data: dict[str, Any]) -> Settings:
    unknown = set(data) - {
        "limits",
        "journal",
        "http",
        "tracing",
        "clients",
        "tools",
        "budgets",
        "auth",
    }
    if unknown:
        raise ConfigurationError(sorted(unknown)[0], "unknown section")
    changes: dict[str, Any] = {}
    for key, value in _table("limits", data.get("limits", {})).items():
        check = _LIMIT_KEYS.get(key)
        if check is None:
            raise ConfigurationError(f"limits.{key}", "unknown setting")
        changes[key] = check(f"limits.{key}", value)
    changes |= _journal(_table("journal", data.get("journal", {})))
    changes["http"] = _http(_table("http", data.get("http", {})))
    if "tracing" in data:  # present, even empty: tracing is asked for
        changes["tracing"] = _tracing(_table("tracing", data["tracing"]))
    settings = replace(settings, **changes)
    _check_burst(
        "limits.request_burst", settings.requests_per_second, settings.request_burst
    )
    settings = _clients(settings, _table("clients", data.get("clients", {})))
    tools = {
        name: _table(f"tools.{name}", raw)
        for name, raw in _table("tools", data.get("tools", {})).items()
    }
    budgets = {
        name: _budget(f"budgets.{name}", _table(f"budgets.{name}", raw))
        for name, raw in _table("budgets", data.get("budgets", {})).items()
    }
    oauth = parse_auth(_table("auth", data["auth"])) if "auth" in data else None
    return replace(settings, tool_config=tools, budgets=budgets, oauth=oauth)


def _clients(settings: Settings, tables: Mapping[str, Any]) -> Settings:
    """``settings`` with the ``[clients.ID]`` overrides applied."""
    overrides = dict(settings.client_overrides)
    requests = dict(settings.request_overrides)
    for client_id, raw in tables.items():
        table = _table(f"clients.{client_id}", raw)
        overrides[client_id] = _client_limits(f"clients.{client_id}", table, settings)
        if _REQUEST_KEYS & set(table):
            requests[client_id] = _client_request_limit(
                f"clients.{client_id}", table, settings, client_id
            )
    return replace(settings, client_overrides=overrides, request_overrides=requests)


def _text(key: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(key, f"must be a non-empty string, got {value!r}")
    return value


def _flag(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(key, f"must be true or false, got {value!r}")
    return value


def _synchronous(key: str, value: object) -> str:
    if value not in ("FULL", "NORMAL"):
        raise ConfigurationError(key, f'must be "FULL" or "NORMAL", got {value!r}')
    return str(value)


_JOURNAL_KEYS: dict[str, Callable[[str, Any], object]] = {
    "feed_poll_seconds": _positive_number,
    "synchronous": _synchronous,
    "db": _text,
    "listen_url": _text,
    "pool_size": _positive_int,
    "prepared_statements": _flag,
    "encryption_key_file": lambda key, value: Path(_text(key, value)),
}


def _journal(journal: dict[str, Any]) -> dict[str, Any]:
    """The ``[journal]`` table's settings, validated."""
    changes: dict[str, Any] = {}
    for key, value in journal.items():
        check = _JOURNAL_KEYS.get(key)
        if check is None:
            raise ConfigurationError(f"journal.{key}", "unknown setting")
        changes[key] = check(f"journal.{key}", value)
    return changes


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
        open_endpoints=tuple(
            _path("http.open_endpoints", v)
            for v in _strings("http.open_endpoints", raw.get("open_endpoints", []))
        ),
        event_loop=_choice(
            "http.event_loop",
            raw.get("event_loop", "auto"),
            ("auto", "uvloop", "asyncio"),
        ),
        parser=_choice(
            "http.parser", raw.get("parser", "auto"), ("auto", "httptools", "h11")
        ),
        direct_answers=_flag(
            "http.direct_answers", raw.get("direct_answers", defaults.direct_answers)
        ),
    )


def _tracing(raw: Mapping[str, Any]) -> TracingSettings:
    unknown = set(raw) - set(TracingSettings.__dataclass_fields__)
    if unknown:
        raise ConfigurationError(f"tracing.{sorted(unknown)[0]}", "unknown setting")
    exporter = raw.get("exporter", "otlp")
    if exporter not in TRACE_EXPORTERS:
        names = ", ".join(f'"{e}"' for e in TRACE_EXPORTERS)
        raise ConfigurationError(
            "tracing.exporter", f"must be one of {names}, got {exporter!r}"
        )
    file = raw.get("file")
    if file is not None and (not isinstance(file, str) or not file):
        raise ConfigurationError("tracing.file", f"must be a file path, got {file!r}")
    if exporter == "file" and file is None:
        raise ConfigurationError("tracing.file", 'is needed with exporter = "file"')
    if exporter != "file" and file is not None:
        raise ConfigurationError("tracing.file", 'is only used with exporter = "file"')
    name = raw.get("service_name", "mcp-tasks")
    if not isinstance(name, str) or not name:
        raise ConfigurationError(
            "tracing.service_name", f"must be a non-empty string, got {name!r}"
        )
    ratio = raw.get("sample_ratio", 1.0)
    if (
        isinstance(ratio, bool)
        or not isinstance(ratio, int | float)
        or not 0 <= ratio <= 1
    ):
        raise ConfigurationError(
            "tracing.sample_ratio", f"must be a number from 0 to 1, got {ratio!r}"
        )
    return TracingSettings(
        exporter=cast("str", exporter),
        file=None if file is None else Path(file),
        service_name=name,
        sample_ratio=float(ratio),
    )


def _path(key: str, value: str) -> str:
    # Which paths exist is the HTTP server's to say (it checks at start-up);
    # here only the shape.
    if not value.startswith("/") or value == "/mcp":
        raise ConfigurationError(
            key, f"expected an operator path such as /metrics, got {value!r}"
        )
    return value


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
    if key.startswith("budgets.requests:"):
        # Clients' request buckets are budgets named so (engine._request_limits).
        raise ConfigurationError(key, 'budget names starting "requests:" are reserved')
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
    unknown = set(raw) - {"concurrency", "backlog"} - _REQUEST_KEYS - extra
    if unknown:
        raise ConfigurationError(f"{key}.{sorted(unknown)[0]}", "unknown setting")
    current = base.limits_for(client_id or key.rsplit(".", 1)[-1])
    concurrency = raw.get("concurrency", current.concurrency)
    backlog = raw.get("backlog", current.backlog)
    return ClientLimits(
        _positive_int(f"{key}.concurrency", concurrency),
        _positive_int(f"{key}.backlog", backlog),
    )


#: The request-limit keys a ``[clients.ID]`` table or a token-file entry may set.
_REQUEST_KEYS = frozenset({"requests_per_second", "request_burst"})


def _client_request_limit(
    key: str, raw: Mapping[str, Any], base: Settings, client_id: str
) -> RequestLimit | None:
    """A client's own request limit: its keys over the ``[limits]`` defaults."""
    per_second = base.requests_per_second
    if "requests_per_second" in raw:
        per_second = _optional_rate(
            f"{key}.requests_per_second", raw["requests_per_second"]
        )
    burst = None
    if "request_burst" in raw:
        burst = _positive_number(f"{key}.request_burst", raw["request_burst"])
    elif "requests_per_second" not in raw:
        burst = base.request_burst
    _check_burst(f"{key}.request_burst", per_second, burst)
    return _request_limit(per_second, burst)


def _apply_tokens(settings: Settings, data: dict[str, Any]) -> Settings:
    entries = data.get("client", [])
    if not isinstance(entries, list) or not entries:
        raise ConfigurationError("client", "token file needs at least one [[client]]")
    tokens: dict[str, str] = {}
    overrides = dict(settings.client_overrides)
    requests = dict(settings.request_overrides)
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
        if _REQUEST_KEYS & set(entry):
            requests[client_id] = _client_request_limit(key, entry, settings, client_id)
    operators = _operator_tokens(data.get("operator", []), set(tokens))
    return replace(
        settings,
        tokens=tokens,
        client_overrides=overrides,
        request_overrides=requests,
        operator_tokens=operators,
    )


def _operator_tokens(entries: object, client_tokens: set[str]) -> dict[str, str]:
    """``[[operator]]`` entries: token -> operator id; never a client's token."""
    if not isinstance(entries, list):
        raise ConfigurationError(
            "operator", "must be an array of tables ([[operator]])"
        )
    operators: dict[str, str] = {}
    for index, raw in enumerate(cast("list[object]", entries)):
        key = f"operator[{index}]"
        entry = _table(key, raw)
        unknown = set(entry) - {"id", "token"}
        if unknown:
            raise ConfigurationError(f"{key}.{sorted(unknown)[0]}", "unknown setting")
        operator_id = entry.get("id")
        token = entry.get("token")
        if not isinstance(operator_id, str) or not operator_id:
            raise ConfigurationError(f"{key}.id", "must be a non-empty string")
        if not isinstance(token, str) or len(token) < 16:
            raise ConfigurationError(
                f"{key}.token", "must be a string of at least 16 characters"
            )
        if token in operators or token in client_tokens:
            raise ConfigurationError(f"{key}.token", "is used by another entry")
        operators[token] = operator_id
    return operators
