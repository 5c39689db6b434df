"""`Settings.load`: defaults, validation with named keys, overrides and tokens."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mcp_tasks._budgets import BudgetLimits
from mcp_tasks._config import _LIMIT_KEYS, ClientLimits, RequestLimit, Settings
from mcp_tasks._exceptions import ConfigurationError

TOKEN_A = "a" * 16
TOKEN_B = "b" * 32

WriteFile = Callable[[str], Path]


@pytest.fixture
def config_file(tmp_path: Path) -> WriteFile:
    def write(text: str) -> Path:
        path = tmp_path / "config.toml"
        path.write_text(text)
        return path

    return write


@pytest.fixture
def token_file(tmp_path: Path) -> WriteFile:
    def write(text: str) -> Path:
        path = tmp_path / "tokens.toml"
        path.write_text(text)
        return path

    return write


def load_error(config: Path | None = None, tokens: Path | None = None) -> str:
    """The `.key` of the ConfigurationError that loading raises."""
    with pytest.raises(ConfigurationError) as caught:
        Settings.load(config, tokens)
    return caught.value.key


# ----------------------------------------------------------------- defaults


def test_loading_nothing_gives_the_documented_defaults() -> None:
    settings = Settings.load()
    assert settings == Settings()
    assert (
        settings.workers,
        settings.client_concurrency,
        settings.client_backlog,
        settings.default_ttl_seconds,
        settings.max_ttl_seconds,
        settings.poll_interval_seconds,
        settings.sweep_interval_seconds,
        settings.max_argument_bytes,
        settings.shutdown_grace_seconds,
        settings.mrtr_timeout_seconds,
        settings.synchronous,
    ) == (8, 4, 10_000, 86_400.0, 604_800.0, 1.0, 60.0, 1_048_576, 10.0, 900.0, "FULL")
    assert dict(settings.budgets) == {}
    assert dict(settings.client_overrides) == {}
    assert dict(settings.tool_config) == {}
    assert dict(settings.tokens) == {}
    assert settings.auth_enabled is False


def test_an_empty_config_file_gives_the_defaults(config_file: WriteFile) -> None:
    assert Settings.load(config_file("")) == Settings()


# ------------------------------------------------------------- limits keys


@pytest.mark.parametrize(
    ("key", "toml", "expected"),
    [
        ("workers", "3", 3),
        ("client_concurrency", "2", 2),
        ("client_backlog", "50", 50),
        ("default_ttl_seconds", "120", 120.0),
        ("default_ttl_seconds", "2.5", 2.5),
        ("default_ttl_seconds", "0", None),
        ("default_ttl_seconds", '"unlimited"', None),
        ("max_ttl_seconds", "3600", 3600.0),
        ("max_ttl_seconds", "0", None),
        ("max_ttl_seconds", '"unlimited"', None),
        ("poll_interval_seconds", "0.25", 0.25),
        ("poll_interval_seconds", "5", 5.0),
        ("sweep_interval_seconds", "30", 30.0),
        ("max_argument_bytes", "4096", 4096),
        ("shutdown_grace_seconds", "2.5", 2.5),
        ("mrtr_timeout_seconds", "60", 60.0),
    ],
)
def test_each_limits_key_is_read(
    config_file: WriteFile, key: str, toml: str, expected: float | None
) -> None:
    settings = Settings.load(config_file(f"[limits]\n{key} = {toml}\n"))
    value = getattr(settings, key)
    assert value == expected
    assert type(value) is type(expected)


def test_synchronous_normal_is_read(config_file: WriteFile) -> None:
    settings = Settings.load(config_file('[journal]\nsynchronous = "NORMAL"\n'))
    assert settings.synchronous == "NORMAL"


def test_the_feed_poll_interval_is_read_and_checked(config_file: WriteFile) -> None:
    settings = Settings.load(config_file("[journal]\nfeed_poll_seconds = 0.2\n"))
    assert settings.feed_poll_seconds == 0.2
    key = load_error(config_file("[journal]\nfeed_poll_seconds = 0\n"))
    assert key == "journal.feed_poll_seconds"


def test_the_postgresql_settings_are_read(config_file: WriteFile) -> None:
    settings = Settings.load(
        config_file(
            "[journal]\n"
            'db = "postgresql://app@db.internal:5432/tasks"\n'
            'listen_url = "postgresql://app@db-direct.internal:5432/tasks"\n'
            "pool_size = 16\n"
            "prepared_statements = false\n"
        )
    )
    assert settings.db == "postgresql://app@db.internal:5432/tasks"
    assert settings.listen_url == "postgresql://app@db-direct.internal:5432/tasks"
    assert settings.pool_size == 16
    assert settings.prepared_statements is False


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('db = ""', "journal.db"),
        ("db = 3", "journal.db"),
        ("listen_url = true", "journal.listen_url"),
        ("pool_size = 0", "journal.pool_size"),
        ("pool_size = 2.5", "journal.pool_size"),
        ('prepared_statements = "no"', "journal.prepared_statements"),
    ],
)
def test_bad_postgresql_settings_are_refused_naming_the_key(
    config_file: WriteFile, line: str, key: str
) -> None:
    assert load_error(config_file(f"[journal]\n{line}\n")) == key


INT_KEYS = [
    "workers",
    "client_concurrency",
    "client_backlog",
    "max_argument_bytes",
    "max_result_bytes",
]
NUMBER_KEYS = [
    "poll_interval_seconds",
    "sweep_interval_seconds",
    "shutdown_grace_seconds",
    "mrtr_timeout_seconds",
    "lease_seconds",
    "progress_interval_seconds",
    "request_burst",
]
DURATION_KEYS = ["default_ttl_seconds", "max_ttl_seconds", "requests_per_second"]
#: Zero allowed, nothing below.
NON_NEGATIVE_KEYS = ["request_delay_seconds"]

BAD_LIMITS = (
    [(k, v) for k in INT_KEYS for v in ["-1", "0", "1.5", '"8"', "true", "false"]]
    + [
        (k, v)
        for k in NUMBER_KEYS
        for v in ["-1", "0", "-0.5", '"1"', "true", "[1]", "inf", "nan"]
    ]
    + [
        (k, v)
        for k in DURATION_KEYS
        for v in ["-1", "-0.5", '"forever"', "true", "false", "inf", "nan"]
    ]
    + [
        (k, v)
        for k in NON_NEGATIVE_KEYS
        for v in ["-1", "-0.5", '"1"', "true", "inf", "nan"]
    ]
)


def test_every_limits_key_has_tests() -> None:
    assert set(_LIMIT_KEYS) == set(
        INT_KEYS + NUMBER_KEYS + DURATION_KEYS + NON_NEGATIVE_KEYS
    )


@pytest.mark.parametrize(("key", "toml"), BAD_LIMITS)
def test_a_bad_limits_value_is_refused_naming_the_key(
    config_file: WriteFile, key: str, toml: str
) -> None:
    assert load_error(config_file(f"[limits]\n{key} = {toml}\n")) == f"limits.{key}"


def test_an_unknown_limits_key_is_refused(config_file: WriteFile) -> None:
    assert load_error(config_file("[limits]\nworkerz = 3\n")) == "limits.workerz"


def test_limits_that_is_not_a_table_is_refused(config_file: WriteFile) -> None:
    assert load_error(config_file("limits = 3\n")) == "limits"


def test_an_unknown_section_is_refused(config_file: WriteFile) -> None:
    assert load_error(config_file("[limit]\nworkers = 3\n")) == "limit"


@pytest.mark.parametrize("value", ['"full"', '"OFF"', "2", "true"])
def test_a_bad_synchronous_value_is_refused(config_file: WriteFile, value: str) -> None:
    key = load_error(config_file(f"[journal]\nsynchronous = {value}\n"))
    assert key == "journal.synchronous"


def test_an_unknown_journal_key_is_refused(config_file: WriteFile) -> None:
    assert load_error(config_file('[journal]\npath = "x.db"\n')) == "journal.path"


def test_a_missing_config_file_is_refused(tmp_path: Path) -> None:
    assert load_error(tmp_path / "absent.toml") == "--config"


def test_a_config_file_that_is_not_toml_is_refused(config_file: WriteFile) -> None:
    assert load_error(config_file("[limits\nworkers = 3\n")) == "--config"


def test_a_token_file_that_is_not_toml_is_refused(token_file: WriteFile) -> None:
    assert load_error(tokens=token_file("[[client]\n")) == "--tokens"


def test_error_messages_name_the_key_and_the_problem(config_file: WriteFile) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.load(config_file("[limits]\nworkers = -2\n"))
    assert "limits.workers" in str(caught.value)
    assert "-2" in caught.value.problem


# --------------------------------------------------------- client overrides


def test_a_client_override_replaces_the_default_caps(config_file: WriteFile) -> None:
    settings = Settings.load(
        config_file("[clients.alice]\nconcurrency = 8\nbacklog = 50000\n")
    )
    assert settings.limits_for("alice") == ClientLimits(8, 50_000)
    assert settings.limits_for("bob") == ClientLimits(4, 10_000)


def test_a_partial_override_inherits_the_configured_defaults(
    config_file: WriteFile,
) -> None:
    settings = Settings.load(
        config_file(
            "[limits]\nclient_concurrency = 2\nclient_backlog = 7\n"
            "[clients.alice]\nbacklog = 99\n"
            "[clients.bob]\nconcurrency = 5\n"
        )
    )
    assert settings.limits_for("alice") == ClientLimits(2, 99)
    assert settings.limits_for("bob") == ClientLimits(5, 7)
    assert settings.limits_for("carol") == ClientLimits(2, 7)


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("concurrency = 0", "clients.alice.concurrency"),
        ("concurrency = true", "clients.alice.concurrency"),
        ("backlog = -3", "clients.alice.backlog"),
        ('backlog = "many"', "clients.alice.backlog"),
        ("workers = 3", "clients.alice.workers"),
    ],
)
def test_a_bad_client_override_is_refused_naming_the_key(
    config_file: WriteFile, body: str, key: str
) -> None:
    assert load_error(config_file(f"[clients.alice]\n{body}\n")) == key


def test_a_client_override_that_is_not_a_table_is_refused(
    config_file: WriteFile,
) -> None:
    assert load_error(config_file("[clients]\nalice = 3\n")) == "clients.alice"


def test_a_token_in_the_config_file_is_refused_not_ignored(
    config_file: WriteFile,
) -> None:
    # Tokens belong in the token file; one misplaced in [clients.x] would
    # otherwise be dropped silently.
    text = f'[clients.alice]\ntoken = "{TOKEN_A}"\n'
    assert load_error(config_file(text)) == "clients.alice.token"


def test_tool_tables_are_handed_through(config_file: WriteFile) -> None:
    settings = Settings.load(
        config_file('[tools.run_command]\nallowed = ["make", "pytest"]\n')
    )
    assert dict(settings.tool_config) == {
        "run_command": {"allowed": ["make", "pytest"]}
    }


def test_a_tool_entry_that_is_not_a_table_is_refused(config_file: WriteFile) -> None:
    assert load_error(config_file("[tools]\nrun_command = 1\n")) == "tools.run_command"


# --------------------------------------------------------------- [http]


def test_http_defaults() -> None:
    http = Settings().http
    assert (http.max_connections, http.header_timeout_seconds) == (1000, 10.0)
    assert (http.allowed_hosts, http.allowed_origins, http.trusted_proxies) == (
        (),
        (),
        (),
    )


def test_the_http_section_is_read(config_file: WriteFile) -> None:
    settings = Settings.load(
        config_file(
            "[http]\n"
            "max_connections = 50\n"
            "header_timeout_seconds = 2.5\n"
            'allowed_hosts = ["MCP.Example.com", "mcp.example.com:8443", "[::1]:80", "10.1.2.3"]\n'
            'allowed_origins = ["https://App.example.com", "http://localhost:3000"]\n'
            'trusted_proxies = ["10.0.0.0/8", "127.0.0.1", "::1", "fd00::/8"]\n'
        )
    )
    http = settings.http
    assert (http.max_connections, http.header_timeout_seconds) == (50, 2.5)
    assert http.allowed_hosts == (
        "mcp.example.com",
        "mcp.example.com:8443",
        "[::1]:80",
        "10.1.2.3",
    )
    assert http.allowed_origins == ("https://app.example.com", "http://localhost:3000")
    assert [str(n) for n in http.trusted_proxies] == [
        "10.0.0.0/8",
        "127.0.0.1/32",
        "::1/128",
        "fd00::/8",
    ]


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("max_connections = 0", "http.max_connections"),
        ("max_connections = 1.5", "http.max_connections"),
        ("header_timeout_seconds = 0", "http.header_timeout_seconds"),
        ("header_timeout_seconds = inf", "http.header_timeout_seconds"),
        ('allowed_hosts = "mcp.example.com"', "http.allowed_hosts"),
        ("allowed_hosts = [1]", "http.allowed_hosts"),
        ('allowed_hosts = [""]', "http.allowed_hosts"),
        ('allowed_hosts = ["https://mcp.example.com"]', "http.allowed_hosts"),
        ('allowed_hosts = ["mcp.example.com/mcp"]', "http.allowed_hosts"),
        ('allowed_hosts = ["mcp.example.com:port"]', "http.allowed_hosts"),
        ('allowed_hosts = ["user@mcp.example.com"]', "http.allowed_hosts"),
        ('allowed_origins = ["app.example.com"]', "http.allowed_origins"),
        ('allowed_origins = ["https://app.example.com/"]', "http.allowed_origins"),
        ('allowed_origins = ["ftp://app.example.com"]', "http.allowed_origins"),
        ('allowed_origins = ["*"]', "http.allowed_origins"),
        ('trusted_proxies = ["proxy.internal"]', "http.trusted_proxies"),
        ('trusted_proxies = ["10.0.0.1/8"]', "http.trusted_proxies"),
        ('trusted_proxies = "10.0.0.1"', "http.trusted_proxies"),
        ("max_conections = 5", "http.max_conections"),
        ('event_loop = "trio"', "http.event_loop"),
        ("event_loop = 1", "http.event_loop"),
        ('parser = "llhttp"', "http.parser"),
    ],
)
def test_a_bad_http_value_is_refused_naming_the_key(
    config_file: WriteFile, toml: str, key: str
) -> None:
    assert load_error(config_file(f"[http]\n{toml}\n")) == key


def test_a_bad_http_value_says_what_is_wrong(config_file: WriteFile) -> None:
    with pytest.raises(ConfigurationError, match="has host bits set"):
        Settings.load(config_file('[http]\ntrusted_proxies = ["10.0.0.1/8"]\n'))
    with pytest.raises(ConfigurationError, match="as in a Host header"):
        Settings.load(config_file('[http]\nallowed_hosts = ["https://x.test"]\n'))


def test_the_event_loop_and_parser_default_to_auto_and_can_be_named(
    config_file: WriteFile,
) -> None:
    assert (Settings().http.event_loop, Settings().http.parser) == ("auto", "auto")
    http = Settings.load(
        config_file('[http]\nevent_loop = "asyncio"\nparser = "h11"\n')
    ).http
    assert (http.event_loop, http.parser) == ("asyncio", "h11")


def test_an_event_loop_that_is_not_installed_is_refused_at_start_up(
    config_file: WriteFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec

    def without_uvloop(name: str, package: str | None = None) -> Any:
        return None if name == "uvloop" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_uvloop)
    with pytest.raises(ConfigurationError, match="uvloop is not installed"):
        Settings.load(config_file('[http]\nevent_loop = "uvloop"\n'))
    # "auto" falls back to asyncio instead.
    assert Settings.load(config_file("[http]\n")).http.event_loop == "auto"


# --------------------------------------------------------------- token file


def test_tokens_map_to_client_ids_and_enable_auth(token_file: WriteFile) -> None:
    settings = Settings.load(
        tokens=token_file(
            f'[[client]]\nid = "alice"\ntoken = "{TOKEN_A}"\n'
            f'[[client]]\nid = "bob"\ntoken = "{TOKEN_B}"\n'
        )
    )
    assert dict(settings.tokens) == {TOKEN_A: "alice", TOKEN_B: "bob"}
    assert settings.auth_enabled is True


def test_caps_in_the_token_file_override_the_config_file(
    config_file: WriteFile, token_file: WriteFile
) -> None:
    settings = Settings.load(
        config_file("[clients.alice]\nconcurrency = 3\nbacklog = 30\n"),
        token_file(f'[[client]]\nid = "alice"\ntoken = "{TOKEN_A}"\nbacklog = 70\n'),
    )
    assert settings.limits_for("alice") == ClientLimits(3, 70)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (f'[[client]]\nid = "alice"\ntoken = "{"x" * 15}"\n', "client[0].token"),
        ('[[client]]\nid = "alice"\ntoken = 1234567890123456789\n', "client[0].token"),
        ('[[client]]\nid = "alice"\n', "client[0].token"),
        (f'[[client]]\ntoken = "{TOKEN_A}"\n', "client[0].id"),
        (f'[[client]]\nid = ""\ntoken = "{TOKEN_A}"\n', "client[0].id"),
        (f'[[client]]\nid = 7\ntoken = "{TOKEN_A}"\n', "client[0].id"),
        (
            f'[[client]]\nid = "alice"\ntoken = "{TOKEN_A}"\n'
            f'[[client]]\nid = "bob"\ntoken = "{TOKEN_A}"\n',
            "client[1].token",
        ),
        ("", "client"),
        ('client = "alice"\n', "client"),
        ("client = [1]\n", "client[0]"),
    ],
)
def test_a_bad_token_file_is_refused_naming_the_entry(
    token_file: WriteFile, text: str, key: str
) -> None:
    assert load_error(tokens=token_file(text)) == key


def test_a_token_of_sixteen_characters_is_accepted(token_file: WriteFile) -> None:
    settings = Settings.load(
        tokens=token_file(f'[[client]]\nid = "alice"\ntoken = "{"x" * 16}"\n')
    )
    assert dict(settings.tokens) == {"x" * 16: "alice"}


def test_a_bad_cap_in_the_token_file_is_refused_naming_the_entry(
    token_file: WriteFile,
) -> None:
    text = f'[[client]]\nid = "alice"\ntoken = "{TOKEN_A}"\nconcurrency = 0\n'
    assert load_error(tokens=token_file(text)) == "client[0].concurrency"


def test_a_misspelt_key_in_the_token_file_is_refused_not_ignored(
    token_file: WriteFile,
) -> None:
    text = f'[[client]]\nid = "alice"\ntoken = "{TOKEN_A}"\nconcurency = 8\n'
    assert load_error(tokens=token_file(text)) == "client[0].concurency"


# ------------------------------------------------------ limits_for and TTLs


def test_limits_for_falls_back_to_the_global_client_caps() -> None:
    settings = Settings(client_concurrency=3, client_backlog=30)
    assert settings.limits_for("anyone") == ClientLimits(3, 30)


def test_effective_ttl_uses_the_default_when_none_is_requested() -> None:
    assert Settings(default_ttl_seconds=90.0).effective_ttl(None) == 90.0


def test_effective_ttl_grants_a_request_below_the_maximum() -> None:
    assert Settings(max_ttl_seconds=100.0).effective_ttl(40.0) == 40.0


def test_effective_ttl_caps_a_request_at_the_maximum() -> None:
    assert Settings(max_ttl_seconds=100.0).effective_ttl(1e9) == 100.0


def test_an_unlimited_default_is_still_capped_by_the_maximum(
    config_file: WriteFile,
) -> None:
    settings = Settings.load(
        config_file(
            '[limits]\ndefault_ttl_seconds = "unlimited"\nmax_ttl_seconds = 50\n'
        )
    )
    assert settings.effective_ttl(None) == 50.0


@pytest.mark.parametrize("unlimited", ["0", '"unlimited"'])
def test_an_unlimited_maximum_grants_any_request(
    config_file: WriteFile, unlimited: str
) -> None:
    settings = Settings.load(config_file(f"[limits]\nmax_ttl_seconds = {unlimited}\n"))
    assert settings.max_ttl_seconds is None
    assert settings.effective_ttl(1e12) == 1e12
    assert settings.effective_ttl(None) == 86_400.0


def test_with_both_unlimited_no_request_means_keep_forever(
    config_file: WriteFile,
) -> None:
    settings = Settings.load(
        config_file("[limits]\ndefault_ttl_seconds = 0\nmax_ttl_seconds = 0\n")
    )
    assert settings.effective_ttl(None) is None
    assert settings.effective_ttl(5.0) == 5.0


# ------------------------------------------------------------------ budgets


def test_a_budget_table_is_read(config_file: WriteFile) -> None:
    settings = Settings.load(
        config_file(
            "[budgets.openai]\nrequests_per_minute = 500\ntokens_per_minute = 2e5\n"
            "[budgets.local]\nrequests_per_minute = 10\n"
        )
    )
    assert dict(settings.budgets) == {
        "openai": BudgetLimits(500.0, 200_000.0),
        "local": BudgetLimits(10.0, None),
    }


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("requests_per_minute = 0", "budgets.openai.requests_per_minute"),
        ("tokens_per_minute = true", "budgets.openai.tokens_per_minute"),
        ("requests_per_hour = 5", "budgets.openai.requests_per_hour"),
        ("", "budgets.openai"),
    ],
)
def test_a_bad_budget_is_refused_naming_the_key(
    config_file: WriteFile, body: str, key: str
) -> None:
    assert load_error(config_file(f"[budgets.openai]\n{body}\n")) == key


# ------------------------------------------------------------ request limits


def test_clients_are_limited_to_100_requests_per_second_by_default() -> None:
    assert Settings().request_limit_for("anyone") == RequestLimit(100.0, 200.0)


def test_request_limits_are_read_with_per_client_overrides(
    config_file: WriteFile, token_file: WriteFile
) -> None:
    settings = Settings.load(
        config_file(
            "[limits]\nrequests_per_second = 20\nrequest_delay_seconds = 0\n"
            "[clients.alice]\nrequests_per_second = 500\nrequest_burst = 50\n"
            "[clients.bob]\nrequests_per_second = 0\n"
            "[clients.carol]\nrequest_burst = 5\n"
            "[clients.dave]\nconcurrency = 2\n"
        ),
        token_file(
            f'[[client]]\nid = "erin"\ntoken = "{TOKEN_A}"\nrequests_per_second = 1\n'
        ),
    )
    assert settings.request_delay_seconds == 0.0
    assert settings.request_limit_for("alice") == RequestLimit(500.0, 50.0)
    assert settings.request_limit_for("bob") is None  # unlimited
    assert settings.request_limit_for("carol") == RequestLimit(20.0, 5.0)
    assert settings.request_limit_for("dave") == RequestLimit(20.0, 40.0)
    assert settings.request_limit_for("erin") == RequestLimit(1.0, 2.0)
    assert settings.request_limit_for("zoe") == RequestLimit(20.0, 40.0)


def test_unlimited_requests_means_no_limit(config_file: WriteFile) -> None:
    settings = Settings.load(
        config_file('[limits]\nrequests_per_second = "unlimited"\n')
    )
    assert settings.request_limit_for("anyone") is None


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (
            "[limits]\nrequests_per_second = 1\nrequest_burst = 0.5\n",
            "limits.request_burst",
        ),
        (
            "[limits]\nrequests_per_second = 1\nrequest_burst = 3601\n",
            "limits.request_burst",
        ),
        ("[clients.a]\nrequests_per_second = -2\n", "clients.a.requests_per_second"),
        ("[clients.a]\nrequest_burst = true\n", "clients.a.request_burst"),
        ("[clients.a]\nrequests_per_hour = 3\n", "clients.a.requests_per_hour"),
        (
            '[budgets."requests:alice"]\nrequests_per_minute = 1\n',
            "budgets.requests:alice",
        ),
    ],
)
def test_a_bad_request_limit_is_refused_naming_the_key(
    config_file: WriteFile, text: str, key: str
) -> None:
    assert load_error(config_file(text)) == key


def test_a_bad_request_limit_in_the_token_file_is_refused_naming_it(
    token_file: WriteFile,
) -> None:
    tokens = token_file(
        f'[[client]]\nid = "a"\ntoken = "{TOKEN_A}"\nrequests_per_second = "fast"\n'
    )
    assert load_error(tokens=tokens) == "client[0].requests_per_second"


# ---------------------------------------------------------------- operators

TOKEN_OPS = "o" * 24


def test_operator_entries_give_operator_tokens_not_client_ones(
    token_file: WriteFile,
) -> None:
    settings = Settings.load(
        tokens=token_file(
            f'[[client]]\nid = "alice"\ntoken = "{TOKEN_A}"\n'
            f'[[operator]]\nid = "ops"\ntoken = "{TOKEN_OPS}"\n'
        )
    )
    assert dict(settings.operator_tokens) == {TOKEN_OPS: "ops"}
    assert dict(settings.tokens) == {TOKEN_A: "alice"}


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ('id = "ops"\ntoken = "short"\n', "operator[0].token"),
        (f'token = "{TOKEN_OPS}"\n', "operator[0].id"),
        (f'id = "ops"\ntoken = "{TOKEN_A}"\n', "operator[0].token"),
        (
            f'id = "ops"\ntoken = "{TOKEN_OPS}"\nconcurrency = 2\n',
            "operator[0].concurrency",
        ),
    ],
    ids=["short-token", "no-id", "a-clients-token", "client-limits"],
)
def test_bad_operator_entries_are_refused_by_key(
    token_file: WriteFile, entry: str, key: str
) -> None:
    text = f'[[client]]\nid = "alice"\ntoken = "{TOKEN_A}"\n[[operator]]\n{entry}'
    assert load_error(tokens=token_file(text)) == key


def test_open_endpoints_are_operator_paths(config_file: WriteFile) -> None:
    settings = Settings.load(
        config_file('[http]\nopen_endpoints = ["/healthz", "/readyz"]\n')
    )
    assert settings.http.open_endpoints == ("/healthz", "/readyz")
    for bad in ('["healthz"]', '["/mcp"]', '"/healthz"'):
        text = f"[http]\nopen_endpoints = {bad}\n"
        assert load_error(config_file(text)) == "http.open_endpoints"
