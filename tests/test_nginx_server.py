"""nginx from the OS in front of two local backends: round robin and stickiness."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Generator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .nginx_server import (
    INSTALL_HINT,
    NginxServer,
    NginxUnavailableError,
    Route,
    SessionRoute,
    ensure_nginx,
    render_config,
    running_nginx,
)


class _Backend(ThreadingHTTPServer):
    """A tiny HTTP server on loopback that answers with its own name."""

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name

    @property
    def port(self) -> int:
        return self.server_address[1]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        assert isinstance(self.server, _Backend)
        body = json.dumps(
            {
                "backend": self.server.name,
                "path": self.path,
                "session": self.headers.get("Mcp-Session-Id"),
            }
        ).encode()
        self.send_response(200)
        if self.headers.get("Mcp-Session-Id") is None:
            # Like an MCP server answering `initialize`: a session of its own.
            self.send_header("Mcp-Session-Id", f"sid-{self.server.name}")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        del format, args  # keep the test output clean


#: No proxy from the environment between the test and loopback.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def backends() -> Generator[tuple[_Backend, _Backend]]:
    pair = (_Backend("a"), _Backend("b"))
    threads = [threading.Thread(target=b.serve_forever, daemon=True) for b in pair]
    for thread in threads:
        thread.start()
    yield pair
    for backend, thread in zip(pair, threads, strict=True):
        backend.shutdown()
        backend.server_close()
        thread.join()


@pytest.fixture
def nginx(backends: tuple[_Backend, _Backend]) -> Generator[NginxServer]:
    ports = [b.port for b in backends]
    routes = [
        Route("~ ^/rr/", ports),
        Route("/mcp", ports, sticky_header="Mcp-Session-Id"),
    ]
    with running_nginx(routes) as server:
        yield server


def _backend_of(server: NginxServer, path: str, session: str | None = None) -> str:
    """Which backend answered a GET of ``path`` through nginx."""
    headers = {} if session is None else {"Mcp-Session-Id": session}
    request = urllib.request.Request(server.base_url + path, headers=headers)
    with _DIRECT.open(request, timeout=10) as response:
        answer = json.loads(response.read())
    assert answer["path"] == path
    assert answer["session"] == session
    return str(answer["backend"])


def test_round_robin_alternates_between_the_backends(nginx: NginxServer) -> None:
    seen = [_backend_of(nginx, f"/rr/{i}") for i in range(10)]

    assert sorted(seen) == ["a"] * 5 + ["b"] * 5
    assert all(x != y for x, y in itertools.pairwise(seen))


def test_a_session_id_always_reaches_the_same_backend(nginx: NginxServer) -> None:
    # 48 sessions: even a lopsided ketama ring (ports differ per run) puts
    # some on each backend, except with a probability below 1e-7.
    sessions = [f"session-{i}" for i in range(48)]
    placed = {
        s: {_backend_of(nginx, "/mcp", session=s) for _ in range(3)} for s in sessions
    }

    assert all(len(where) == 1 for where in placed.values()), placed
    # ...and the sessions are spread over both backends.
    assert set().union(*placed.values()) == {"a", "b"}


def test_requests_without_a_session_id_are_balanced_round_robin(
    nginx: NginxServer,
) -> None:
    # The trap for MCP 2025-11-25 behind `hash $http_mcp_session_id`: nginx
    # balances a request whose key is empty round robin, and the initialize
    # request carries no session id yet. A session is born on whichever
    # backend came next, while its later requests go where its id hashes to.
    # Stickiness by session id alone therefore needs sessions that any replica
    # can serve, or session ids that name their replica (routed with `map`).
    seen = [_backend_of(nginx, "/mcp") for _ in range(8)]
    assert sorted(seen) == ["a"] * 4 + ["b"] * 4
    assert all(x != y for x, y in itertools.pairwise(seen))


@pytest.fixture
def balancer(backends: tuple[_Backend, _Backend]) -> Generator[NginxServer]:
    with running_nginx([SessionRoute("/mcp", [b.port for b in backends])]) as server:
        yield server


def _exchange(server: NginxServer, session: str | None = None) -> tuple[str, str, str]:
    """A GET of ``/mcp``: (backend, the id the backend saw, the id the client got)."""
    headers = {} if session is None else {"Mcp-Session-Id": session}
    request = urllib.request.Request(server.base_url + "/mcp", headers=headers)
    with _DIRECT.open(request, timeout=10) as response:
        answer = json.loads(response.read())
        given = response.headers.get("Mcp-Session-Id") or ""
    return str(answer["backend"]), str(answer["session"]), given


def test_a_session_stays_on_the_backend_that_created_it(balancer: NginxServer) -> None:
    # Without a session id: round robin, and the id the backend gave comes
    # back to the client naming the backend.
    first, second = _exchange(balancer), _exchange(balancer)
    assert {first[0], second[0]} == {"a", "b"}
    for backend, _, given in (first, second):
        assert given == f"r{'ab'.index(backend) + 1}.sid-{backend}"
    # With it: always that backend, which sees its own id back.
    for backend, _, given in (first, second) * 4:
        assert _exchange(balancer, given)[:2] == (backend, f"sid-{backend}")


def test_a_session_whose_backend_is_gone_answers_404(
    backends: tuple[_Backend, _Backend], balancer: NginxServer
) -> None:
    backend, _, given = _exchange(balancer)
    gone = backends["ab".index(backend)]
    gone.shutdown()
    gone.server_close()
    request = urllib.request.Request(
        balancer.base_url + "/mcp", headers={"Mcp-Session-Id": given}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        _DIRECT.open(request, timeout=10)
    assert caught.value.code == 404
    error = json.loads(caught.value.read())["error"]
    assert error == {
        "code": -32600,
        "message": "Session not found: its replica is gone",
    }
    # A new session goes to the backend still there.
    assert _exchange(balancer)[0] != backend


def test_an_unknown_replica_prefix_is_balanced_round_robin_unchanged(
    balancer: NginxServer,
) -> None:
    seen = [_exchange(balancer, "r9.forged") for _ in range(4)]
    assert sorted(backend for backend, _, _ in seen) == ["a", "a", "b", "b"]
    assert {session for _, session, _ in seen} == {"r9.forged"}


def _readme_balancer() -> str:
    """The README's nginx example for replicas."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    (block,) = [
        b
        for b in re.findall(r"```nginx\n(.*?)```", readme, re.S)
        if "$mcp_upstream" in b
    ]
    return block


def test_the_readme_balancer_is_the_one_the_tests_run() -> None:
    # The README's replicas are 10.0.0.1N:8765, the tests' 127.0.0.1:N.
    block = re.sub(
        r"10(\\?)\.0\\?\.0\\?\.1(\d):8765", r"127\1.0\1.0\1.1:\2", _readme_balancer()
    )
    readme_lines = {line.split("#")[0].strip() for line in block.splitlines()}
    route = SessionRoute("/mcp", [1, 2, 3])
    rendered = route.upstream("mcp") + "\n" + route.block("mcp")
    for line in rendered.splitlines():
        assert line.split("#")[0].strip() in readme_lines, line


def test_the_readme_balancer_is_a_config_nginx_accepts(tmp_path: Path) -> None:
    block = _readme_balancer()
    assert "listen 443 ssl;" in block
    # No certificate here: the same server on plain HTTP.
    block = block.replace("listen 443 ssl;", "listen 127.0.0.1:8443;")
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        f"events {{}}\nhttp {{\naccess_log off;\n{block}}}\n"
    )
    argv = [str(ensure_nginx()), "-t", "-p", str(tmp_path), "-c", "nginx.conf"]
    checked = subprocess.run(
        [*argv, "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr


def test_nginx_is_stopped_and_its_folder_removed(
    backends: tuple[_Backend, _Backend],
) -> None:
    with running_nginx([Route("/", [backends[0].port])]) as server:
        assert _backend_of(server, "/x") == "a"

    assert not server.folder.exists()
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        _DIRECT.open(server.base_url + "/x", timeout=5)


def test_a_config_nginx_rejects_fails_with_its_reason() -> None:
    with (
        pytest.raises(
            NginxUnavailableError,
            match=r"nginx did not start: .*no servers are inside upstream",
        ),
        running_nginx([Route("/", [])]),
    ):
        pass


def test_the_config_hashes_the_header_consistently(tmp_path: Path) -> None:
    text = render_config(tmp_path, 8080, [Route("/mcp", [1, 2], "Mcp-Session-Id")])
    assert "hash $http_mcp_session_id consistent;" in text
    assert "server 127.0.0.1:1;" in text
    assert "server 127.0.0.1:2;" in text
    assert "listen 127.0.0.1:8080;" in text


def test_missing_nginx_fails_with_one_line_naming_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from . import nginx_server

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(nginx_server, "DEBIAN_NGINX", tmp_path / "nginx")
    with pytest.raises(NginxUnavailableError) as caught:
        ensure_nginx(install=False)
    assert str(caught.value) == INSTALL_HINT
    assert "apt-get install nginx" in INSTALL_HINT
