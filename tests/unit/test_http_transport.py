"""The HTTP transport's rules, without a server: addresses, host checks, binding, logs.

The end-to-end tests (``e2e/test_proxies.py``, ``e2e/test_connections.py``,
``e2e/test_startup.py``) show the same rules through a real server process;
these pin down the edge cases.
"""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import logging
import socket
from ipaddress import ip_network
from typing import Any

import pytest

from mcp_tasks._config import HttpSettings
from mcp_tasks._exceptions import ListenError
from mcp_tasks.binding._common import Requesters, Transport
from mcp_tasks.binding._connections import (
    ConnectionGuard,
    GuardedProtocol,
    OncePerInterval,
)
from mcp_tasks.binding._http import (
    accept_failures_reported,
    fast_loop,
    http_protocol,
    listen,
    transport_security,
    url,
)

PROXIES = Requesters(
    Transport.HTTP,
    auth=False,
    trusted_proxies=(ip_network("127.0.0.1/32"), ip_network("10.0.0.0/8")),
)


# ------------------------------------------------------------ client address


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        # An untrusted peer is the client, whatever it claims.
        ("198.51.100.4", ["203.0.113.9"], "198.51.100.4"),
        # A trusted peer without the header is the client.
        ("127.0.0.1", [], "127.0.0.1"),
        ("127.0.0.1", ["203.0.113.9"], "203.0.113.9"),
        # The right-most untrusted hop; left of it, the client wrote anything.
        ("127.0.0.1", ["6.6.6.6, 203.0.113.9, 10.1.2.3"], "203.0.113.9"),
        # Several header lines are one list, in order.
        ("127.0.0.1", ["6.6.6.6, 203.0.113.9", "10.1.2.3"], "203.0.113.9"),
        # Every hop trusted: the first one is the client.
        ("127.0.0.1", ["10.0.0.7, 10.1.2.3"], "10.0.0.7"),
        # Ports some proxies add are not part of the address.
        ("127.0.0.1", ["203.0.113.9:4711"], "203.0.113.9"),
        ("127.0.0.1", ["[2001:db8::7]:4711"], "2001:db8::7"),
        ("127.0.0.1", ["2001:db8::7"], "2001:db8::7"),
        # A hop that is no address tells nothing: the peer is the best known.
        ("127.0.0.1", ["unknown"], "127.0.0.1"),
        ("127.0.0.1", ["203.0.113.9, _hidden"], "127.0.0.1"),
        (None, ["203.0.113.9"], "unknown"),
    ],
)
def test_the_client_address_comes_from_trusted_proxies_only(
    peer: str | None, forwarded_for: list[str], client: str
) -> None:
    assert PROXIES.client_address(peer, forwarded_for) == client


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    plain = Requesters(Transport.HTTP, auth=False)
    assert plain.client_address("127.0.0.1", ["203.0.113.9"]) == "127.0.0.1"


# --------------------------------------------------------- host and origin


def test_loopback_servers_check_hosts_as_the_sdk_does_by_default() -> None:
    security = transport_security("127.0.0.1", HttpSettings())
    assert security.enable_dns_rebinding_protection
    assert "localhost:*" in security.allowed_hosts
    assert "http://127.0.0.1:*" in security.allowed_origins


def test_configured_hosts_are_accepted_on_any_port_unless_one_is_given() -> None:
    http = HttpSettings(
        allowed_hosts=("mcp.example.com", "api.example.com:8443", "[2001:db8::1]"),
        allowed_origins=("https://app.example.com",),
    )
    security = transport_security("0.0.0.0", http)
    assert security.enable_dns_rebinding_protection
    assert {"mcp.example.com", "mcp.example.com:*"} <= set(security.allowed_hosts)
    assert "api.example.com:8443" in security.allowed_hosts
    assert "api.example.com:8443:*" not in security.allowed_hosts
    assert "[2001:db8::1]:*" in security.allowed_hosts
    assert "https://app.example.com" in security.allowed_origins
    assert "localhost:*" in security.allowed_hosts


def test_a_wildcard_host_or_an_unconfigured_public_bind_checks_nothing() -> None:
    assert not transport_security(
        "127.0.0.1", HttpSettings(allowed_hosts=("*",))
    ).enable_dns_rebinding_protection
    assert not transport_security(
        "0.0.0.0", HttpSettings()
    ).enable_dns_rebinding_protection


def test_a_configured_origin_alone_turns_the_checks_on() -> None:
    http = HttpSettings(allowed_origins=("https://app.example.com",))
    assert transport_security("0.0.0.0", http).enable_dns_rebinding_protection


# ------------------------------------------------------------------ binding


def test_listen_on_port_0_reports_the_port_it_got() -> None:
    sockets = listen("127.0.0.1", 0)
    try:
        port = sockets[0].getsockname()[1]
        assert port != 0
        with socket.create_connection(("127.0.0.1", port)):
            pass
    finally:
        for sock in sockets:
            sock.close()


def test_listen_on_a_port_in_use_raises_listen_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        with pytest.raises(ListenError, match=f"127.0.0.1:{port}: .*in use") as caught:
            listen("127.0.0.1", port)
    assert (caught.value.host, caught.value.port) == ("127.0.0.1", port)


def test_urls_bracket_ipv6_hosts() -> None:
    assert url("::1", 8765) == "http://[::1]:8765/mcp"
    assert url("127.0.0.1", 8765) == "http://127.0.0.1:8765/mcp"


# ---------------------------------------------------------- failed accepts

ACCEPT_FAILED = {
    "message": "socket.accept() out of system resource",
    "exception": OSError(errno.EMFILE, "Too many open files"),
}


def accept_reports(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("cannot accept connections")
    ]


async def test_failed_accepts_are_reported_once_not_per_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    with (
        caplog.at_level(logging.ERROR),
        accept_failures_reported(ConnectionGuard(10, 1.0)),
    ):
        for _ in range(5):
            loop.call_exception_handler(dict(ACCEPT_FAILED))
    assert accept_reports(caplog) == [
        "cannot accept connections: Too many open files (failed accepts since the "
        "last report: 1); 0 connections are open"
    ]


def test_failed_accepts_are_reported_again_a_minute_later_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = ConnectionGuard(10, 1.0)
    error = OSError(errno.EMFILE, "Too many open files")
    with caplog.at_level(logging.ERROR):
        for now in (0.0, 1.0, 30.0, 59.0, 61.0):
            guard.accept_failed(error, now)
    reports = accept_reports(caplog)
    assert len(reports) == 2
    assert "(failed accepts since the last report: 4)" in reports[1]


async def test_other_loop_errors_reach_the_previous_handler() -> None:
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []

    def previous(_: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        seen.append(context)

    loop.set_exception_handler(previous)
    try:
        with accept_failures_reported(ConnectionGuard(10, 1.0)):
            loop.call_exception_handler({"message": "something else"})
            loop.call_exception_handler(dict(ACCEPT_FAILED))
        assert loop.get_exception_handler() is previous
    finally:
        loop.set_exception_handler(None)
    assert [c["message"] for c in seen] == ["something else"]


def test_repeated_warnings_pass_once_per_interval_with_a_count() -> None:
    once = OncePerInterval(60.0)

    def record(
        message: str, at: float, level: int = logging.WARNING
    ) -> logging.LogRecord:
        made = logging.LogRecord("t", level, __file__, 1, message, (), None)
        made.created = at
        return made

    passed = [
        r.getMessage()
        for r in (
            record("Invalid HTTP request received.", 0.0),
            record("Invalid HTTP request received.", 1.0),
            record("Unsupported upgrade request.", 2.0),
            record("Invalid HTTP request received.", 59.0),
            record("Exception in ASGI application", 3.0, logging.ERROR),
            record("Exception in ASGI application", 4.0, logging.ERROR),
            record("Invalid HTTP request received.", 61.0),
        )
        if once.filter(r)
    ]
    assert passed == [
        "Invalid HTTP request received.",
        "Unsupported upgrade request.",
        "Exception in ASGI application",
        "Exception in ASGI application",
        "Invalid HTTP request received. (2 more since the last report)",
    ]


# ------------------------------------------------------- event loop and parser


def _without(monkeypatch: pytest.MonkeyPatch, *missing: str) -> None:
    """Make ``missing`` modules look uninstalled (no wheel for this platform)."""
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name in missing else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_auto_uses_uvloop_and_httptools_when_installed() -> None:
    from mcp_tasks.binding._httptools_guard import GuardedHttpToolsProtocol

    guard = ConnectionGuard(10, 1.0)
    assert fast_loop(HttpSettings())
    assert issubclass(http_protocol(HttpSettings(), guard), GuardedHttpToolsProtocol)


def test_auto_falls_back_to_asyncio_and_h11_where_no_wheel_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _without(monkeypatch, "uvloop", "httptools")
    guard = ConnectionGuard(10, 1.0)
    assert not fast_loop(HttpSettings())
    protocol = http_protocol(HttpSettings(), guard)
    assert issubclass(protocol, GuardedProtocol)
    assert protocol.guard is guard


def test_the_configured_loop_and_parser_win_over_auto() -> None:
    guard = ConnectionGuard(10, 1.0)
    chosen = HttpSettings(event_loop="asyncio", parser="h11")
    assert not fast_loop(chosen)
    assert issubclass(http_protocol(chosen, guard), GuardedProtocol)
