"""OAuth access tokens end to end: a real server against a test authorization server.

The server (a subprocess, ``[auth]`` with ``jwks_url``) fetches its keys from
a local HTTP server run by this module; tokens are minted here (RS256 and
ES256). It serves the protected resource metadata, answers bad tokens with
401 and the right ``WWW-Authenticate``, a missing scope with 403, and binds
tasks to the token's owner exactly as the token file does: the adversarial
suite tries every task method of both wires as the owner, as another owner and
without a token.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from mcp_tasks.client import LEGACY_WIRE, MODERN_WIRE, JSONObject, TaskClient, Wire

from ..oauth_support import (
    AUDIENCE,
    ISSUER,
    Issuer,
    LocalHttp,
    jwks_route,
    new_key,
    unsigned_token,
)
from .conftest import ServerFilesFactory
from .hitl_support import ASK_TOOL, ELICITATION, Elicitations, accept
from .support import (
    CAPACITY_EXCEEDED,
    INVALID_PARAMS,
    TIMEOUT,
    EventHub,
    Gates,
    HttpServer,
    rpc_error,
    text_of,
)

pytestmark = pytest.mark.timeout(90)

STATIC_TOKEN = "ci-static-token-0123456789abcdef"
METADATA_PATHS = (
    "/.well-known/oauth-protected-resource",
    "/.well-known/oauth-protected-resource/mcp",
)
RESOURCE_METADATA = "https://mcp.example.test/.well-known/oauth-protected-resource/mcp"
HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
}


def auth_toml(jwks_url: str) -> str:
    return (
        "\n[auth]\n"
        f'issuer = "{ISSUER}"\n'
        f'audience = "{AUDIENCE}"\n'
        f'jwks_url = "{jwks_url}"\n'
        'required_scopes = ["tasks"]\n'
        'operator_scope = "tasks:operator"\n'
        # Rotation is picked up at once in these tests; the unit tests cover
        # the rate limit.
        "jwks_refresh_min_seconds = 0.001\n"
        'tier_claim = "tier"\n'
        "[auth.tiers.tiny]\nconcurrency = 1\nbacklog = 1\n"
    )


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer(keys=[new_key("RS256")])


@pytest.fixture(scope="module")
def jwks(issuer: Issuer) -> Iterator[LocalHttp]:
    with LocalHttp({"/jwks": jwks_route(issuer)}).running() as server:
        yield server


@pytest.fixture(scope="module")
def oauth_server(
    server_files: ServerFilesFactory, jwks: LocalHttp
) -> Iterator[HttpServer]:
    files = server_files(
        "oauth-http",
        tokens=[{"id": "ci", "token": STATIC_TOKEN}],
        extra_toml=auth_toml(jwks.url("/jwks")),
    )
    server = HttpServer(files, extra_args=["--tools", str(ASK_TOOL)])
    try:
        server.start()
        yield server
    finally:
        server.stop()


def base_url(server: HttpServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def initialize(version: str = LEGACY_WIRE) -> JSONObject:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        },
    }


async def post(
    server: HttpServer, body: JSONObject, token: str | None
) -> httpx2.Response:
    headers = dict(HEADERS)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx2.AsyncClient() as http:
        return await http.post(server.url, json=body, headers=headers)


def challenge(response: httpx2.Response) -> dict[str, str]:
    """The parameters of a ``WWW-Authenticate: Bearer k="v", ...`` header."""
    value = response.headers["www-authenticate"]
    scheme, _, rest = value.partition(" ")
    assert scheme == "Bearer", value
    params: dict[str, str] = {}
    for part in rest.split('", '):
        key, _, quoted = part.partition("=")
        params[key.strip()] = quoted.strip().strip('"')
    return params


# ---------------------------------------------------------------- discovery


@pytest.mark.parametrize("path", METADATA_PATHS)
async def test_protected_resource_metadata_is_served(
    oauth_server: HttpServer, path: str
) -> None:
    async with httpx2.AsyncClient() as http:
        response = await http.get(base_url(oauth_server) + path)
    assert response.status_code == 200
    metadata = response.json()
    assert metadata["resource"] == AUDIENCE
    assert metadata["authorization_servers"] == [ISSUER]
    assert metadata["scopes_supported"] == ["tasks"]
    assert metadata["bearer_methods_supported"] == ["header"]


# --------------------------------------------------------------- challenges


def _bad_tokens(issuer: Issuer) -> dict[str, tuple[str, str]]:
    impostor = new_key("RS256", kid=issuer.keys[0].kid)
    return {
        "expired": (issuer.token(exp=1_000_000, iat=999_000, nbf=999_000), "expired"),
        "not-yet-valid": (issuer.token(nbf=4_000_000_000), "not valid yet"),
        "wrong-signature": (issuer.token(impostor), "signature does not verify"),
        "wrong-audience": (
            issuer.token(aud="https://other.example.test/mcp"),
            "not for this server",
        ),
        "wrong-issuer": (
            issuer.token(iss="https://evil.example.test"),
            "another issuer",
        ),
        "alg-none": (unsigned_token(issuer.claims(), issuer.keys[0].kid), "'none'"),
        "no-owner": (issuer.token(sub=None), "'sub' claim"),
        "garbage": ("not-a-token-at-all", "not a JWT"),
    }


BAD = (
    "expired",
    "not-yet-valid",
    "wrong-signature",
    "wrong-audience",
    "wrong-issuer",
    "alg-none",
    "no-owner",
    "garbage",
)


@pytest.mark.parametrize("case", BAD)
async def test_a_bad_token_gets_401_saying_why(
    oauth_server: HttpServer, issuer: Issuer, case: str
) -> None:
    token, reason = _bad_tokens(issuer)[case]
    with anyio.fail_after(TIMEOUT):
        response = await post(oauth_server, initialize(), token)
    assert response.status_code == 401
    params = challenge(response)
    assert params["error"] == "invalid_token"
    assert reason in params["error_description"]
    assert params["resource_metadata"] == RESOURCE_METADATA
    assert params["scope"] == "tasks"


async def test_a_token_in_the_query_string_is_not_accepted(
    oauth_server: HttpServer, issuer: Issuer
) -> None:
    # MCP authorization: tokens travel in the Authorization header only.
    with anyio.fail_after(TIMEOUT):
        async with httpx2.AsyncClient() as http:
            response = await http.post(
                oauth_server.url,
                params={"access_token": issuer.token()},
                json=initialize(),
                headers=HEADERS,
            )
    assert response.status_code == 401


async def test_no_token_gets_401_pointing_at_the_metadata(
    oauth_server: HttpServer,
) -> None:
    with anyio.fail_after(TIMEOUT):
        response = await post(oauth_server, initialize(), None)
    assert response.status_code == 401
    # RFC 6750 3.1: no error code when the request had no credentials.
    assert challenge(response) == {
        "resource_metadata": RESOURCE_METADATA,
        "scope": "tasks",
    }


async def test_a_token_without_the_required_scope_gets_403(
    oauth_server: HttpServer, issuer: Issuer
) -> None:
    with anyio.fail_after(TIMEOUT):
        response = await post(oauth_server, initialize(), issuer.token(scope="read"))
    assert response.status_code == 403
    params = challenge(response)
    assert params["error"] == "insufficient_scope"
    assert params["scope"] == "tasks"
    assert params["resource_metadata"] == RESOURCE_METADATA


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_a_rotated_key_is_accepted_at_once(
    oauth_server: HttpServer, issuer: Issuer, jwks: LocalHttp, algorithm: str
) -> None:
    key = issuer.rotate(algorithm)
    fetched = jwks.hits.get("/jwks", 0)
    with anyio.fail_after(TIMEOUT):
        response = await post(oauth_server, initialize(), issuer.token(key))
    assert response.status_code == 200
    assert jwks.hits["/jwks"] == fetched + 1


async def test_a_retired_key_is_refused_once_the_keys_are_refetched(
    oauth_server: HttpServer, issuer: Issuer
) -> None:
    retired = issuer.rotate()
    old_token = issuer.token(retired)
    fresh = issuer.rotate()
    issuer.retire(retired)
    with anyio.fail_after(TIMEOUT):
        # The fresh key's kid is unknown: the server refetches, and the
        # retired key is gone with it.
        assert (
            await post(oauth_server, initialize(), issuer.token(fresh))
        ).status_code == 200
        refused = await post(oauth_server, initialize(), old_token)
    assert refused.status_code == 401
    assert "is not known" in challenge(refused)["error_description"]


# ------------------------------------------------------------- ownership


async def start(client: TaskClient, tool: str, arguments: JSONObject) -> str:
    task = {"ttl": 60_000} if client.wire == LEGACY_WIRE else None
    created = client.created_task(await client.call_tool(tool, arguments, task=task))
    assert created is not None
    return str(created["taskId"])


async def listed_ids(client: TaskClient) -> set[str]:
    ids: set[str] = set()
    cursor: str | None = None
    while True:
        page = await client.list_tasks(cursor)
        ids |= {str(t["taskId"]) for t in page["tasks"]}  # pyright: ignore[reportUnknownVariableType, reportUnknownMemberType]
        if page.get("nextCursor") is None:
            return ids
        cursor = str(page["nextCursor"])


async def expect_not_found(call: Any) -> None:
    error = await rpc_error(call)
    assert error.code == INVALID_PARAMS, error
    assert "not found" in error.message.lower()


async def acknowledged_ids(client: TaskClient, task_ids: list[str]) -> list[str]:
    """The task ids ``subscriptions/listen`` agrees to send ``client`` notifications of."""
    ack: JSONObject = {}
    async with anyio.create_task_group() as tg:
        listen = {"notifications": {"taskIds": task_ids}}
        tg.start_soon(client.request, "subscriptions/listen", listen)
        ack = await client.next_notification("notifications/subscriptions/acknowledged")
        tg.cancel_scope.cancel()
    honored: list[str] = ack["params"]["notifications"]["taskIds"]
    return honored


async def others_are_refused_legacy(bob: TaskClient, task_ids: list[str]) -> None:
    assert not set(task_ids) & await listed_ids(bob)
    for task_id in task_ids:
        await expect_not_found(lambda t=task_id: bob.get_task(t))
        await expect_not_found(lambda t=task_id: bob.task_result(t))
        await expect_not_found(lambda t=task_id: bob.cancel_task(t))


async def others_are_refused_modern(
    bob: TaskClient, task_ids: list[str], question: str
) -> None:
    for task_id in task_ids:
        await expect_not_found(lambda t=task_id: bob.get_task(t))
        await expect_not_found(lambda t=task_id: bob.cancel_task(t))
        answer: JSONObject = {question: accept(answer="from bob")}
        await expect_not_found(lambda t=task_id: bob.update_task(t, answer))  # noqa: B023
    assert await acknowledged_ids(bob, task_ids) == []


@pytest.mark.parametrize("wire", [LEGACY_WIRE, MODERN_WIRE])
async def test_another_owner_cannot_reach_a_task_on_any_method(
    oauth_server: HttpServer,
    issuer: Issuer,
    hub: EventHub,
    gates: Gates,
    wire: Wire,
) -> None:
    key = gates.key()
    doomed_key = gates.key()
    url = oauth_server.url
    alice_questions = Elicitations()
    bob_questions = Elicitations()
    with anyio.fail_after(TIMEOUT * 3):
        async with (
            TaskClient.http(
                url,
                token=issuer.token(sub="alice"),
                wire=wire,
                capabilities=ELICITATION,
                on_request=alice_questions,
            ) as alice,
            TaskClient.http(
                url,
                token=issuer.token(sub="bob"),
                wire=wire,
                capabilities=ELICITATION,
                on_request=bob_questions,
            ) as bob,
        ):
            running = await start(alice, "gate", {"key": key})
            doomed = await start(alice, "gate", {"key": doomed_key})
            asking = await start(alice, "ask", {"question": "Colour?"})
            done = await start(alice, "echo", {"text": "mine"})
            await alice.poll_task(done, interval=0.05)
            asking_task = await alice.poll_task(
                asking, until={"input_required"}, interval=0.05
            )
            await hub.wait("started", key)
            await hub.wait("started", doomed_key)
            ids = [running, doomed, asking, done]
            if wire == LEGACY_WIRE:
                assert set(ids) <= await listed_ids(alice)
                await others_are_refused_legacy(bob, ids)
            else:
                [question] = asking_task["inputRequests"]
                await others_are_refused_modern(bob, ids, question)
                assert await acknowledged_ids(alice, ids) == ids
            # Nothing bob did landed: the task still runs, the question still
            # waits, and bob was never asked it.
            assert (await alice.get_task(running))["status"] == "working"
            assert (await alice.get_task(asking))["status"] == "input_required"
            assert bob_questions.received == []
            # ... nor told anything about alice's tasks (status pushes on
            # 2025-11-25, notifications/tasks on 2026-07-28).
            heard = json.dumps(bob.notifications)
            assert not [task_id for task_id in ids if task_id in heard]
            if wire == LEGACY_WIRE:  # while alice was told (so telling works)
                assert done in json.dumps(alice.notifications)
        gates.release(key)
        # A reconnect with a fresh token (another key, too) keeps the tasks.
        issuer.rotate("ES256")
        async with TaskClient.http(
            url,
            token=issuer.token(sub="alice"),
            wire=wire,
            capabilities=ELICITATION,
            on_request=Elicitations(_blue),
        ) as again:
            if wire == LEGACY_WIRE:
                assert set(ids) <= await listed_ids(again)
                result = await again.task_result(asking)
                assert text_of(result) == "blue"
            else:
                [question] = (await again.get_task(asking))["inputRequests"]
                await again.update_task(asking, {question: accept(answer="blue")})
                finished = await again.poll_task(asking, interval=0.05)
                assert text_of(finished["result"]) == "blue"
            assert (await again.poll_task(running, interval=0.05))[
                "status"
            ] == "completed"
            # The owner's own cancel works (bob's did nothing).
            await again.cancel_task(doomed)
            stopped = await again.poll_task(doomed, interval=0.05)
            assert stopped["status"] == "cancelled"


async def _blue(params: JSONObject) -> JSONObject:
    return accept(answer="blue")


async def test_another_owner_cannot_use_an_owners_session(
    oauth_server: HttpServer, issuer: Issuer
) -> None:
    """A 2025-11-25 session belongs to its owner: another owner's token gets 404."""
    with anyio.fail_after(TIMEOUT):
        async with httpx2.AsyncClient() as http:
            opened = await http.post(
                oauth_server.url,
                json=initialize(),
                headers={
                    **HEADERS,
                    "Authorization": f"Bearer {issuer.token(sub='alice')}",
                },
            )
            session = opened.headers["mcp-session-id"]
            listing: JSONObject = {"jsonrpc": "2.0", "id": 2, "method": "tasks/list"}

            async def list_as(owner: str) -> httpx2.Response:
                headers = {
                    **HEADERS,
                    "Authorization": f"Bearer {issuer.token(sub=owner)}",
                    "Mcp-Session-Id": session,
                    "MCP-Protocol-Version": LEGACY_WIRE,
                }
                return await http.post(oauth_server.url, json=listing, headers=headers)

            hijack = await list_as("bob")
            own = await list_as("alice")  # a fresh token of the same owner
    assert hijack.status_code == 404
    assert own.status_code == 200


TASK_METHODS: dict[str, JSONObject] = {
    "tools/call": {"name": "echo", "arguments": {"text": "x"}},
    "tasks/get": {"taskId": "any"},
    "tasks/result": {"taskId": "any"},
    "tasks/list": {},
    "tasks/cancel": {"taskId": "any"},
    "tasks/update": {"taskId": "any", "inputResponses": {}},
    "subscriptions/listen": {"notifications": {"taskIds": ["any"]}},
}


@pytest.mark.parametrize("wire", [LEGACY_WIRE, MODERN_WIRE])
@pytest.mark.parametrize("method", sorted(TASK_METHODS))
async def test_every_task_method_without_a_token_gets_401(
    oauth_server: HttpServer, method: str, wire: str
) -> None:
    body: JSONObject = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": method,
        "params": TASK_METHODS[method],
    }
    headers = {**HEADERS, "MCP-Protocol-Version": wire}
    with anyio.fail_after(TIMEOUT):
        async with httpx2.AsyncClient() as http:
            response = await http.post(oauth_server.url, json=body, headers=headers)
    assert response.status_code == 401
    assert challenge(response)["resource_metadata"] == RESOURCE_METADATA


# ------------------------------------------------- token file, tiers


async def test_the_token_file_keeps_working_beside_oauth(
    oauth_server: HttpServer, issuer: Issuer
) -> None:
    dana_token = issuer.token(sub="dana")
    with anyio.fail_after(TIMEOUT * 2):
        async with (
            TaskClient.http(oauth_server.url, token=STATIC_TOKEN) as ci,
            TaskClient.http(oauth_server.url, token=dana_token) as dana,
        ):
            task_id = await start(ci, "echo", {"text": "static"})
            result = await ci.task_result(task_id)
            assert result["structuredContent"]["text"] == "static"
            assert task_id not in await listed_ids(dana)
            await expect_not_found(lambda: dana.get_task(task_id))
            dana_task = await start(dana, "echo", {"text": "oauth"})
            await dana.task_result(dana_task)
    # Access tokens are never stored (nor passed on to tools).
    files = oauth_server.files
    stored = b"".join(
        path.read_bytes()
        for path in files.root.iterdir()
        if path.name.startswith(files.db.name)
    )
    assert b"dana" in stored
    assert STATIC_TOKEN.encode() not in stored
    assert dana_token.split(".")[2].encode() not in stored


async def test_a_tier_claim_sets_the_clients_limits(
    oauth_server: HttpServer, issuer: Issuer, hub: EventHub, gates: Gates
) -> None:
    key = gates.key()
    token = issuer.token(sub="tiny-client", tier="tiny")
    with anyio.fail_after(TIMEOUT * 2):
        async with TaskClient.http(oauth_server.url, token=token) as client:
            first = await start(client, "gate", {"key": key})
            await hub.wait("started", key)
            error = await rpc_error(lambda: start(client, "echo", {"text": "two"}))
            assert error.code == CAPACITY_EXCEEDED
            assert error.data is not None
            assert json.loads(json.dumps(error.data))["limit"] == 1
            gates.release(key)
            await client.task_result(first)


# ------------------------------------------------------------ introspection


def _introspect(
    method: str, form: dict[str, list[str]], headers: dict[str, str]
) -> tuple[int, Any]:
    if (
        headers.get("Authorization")
        != "Basic " + base64.b64encode(b"mcp-tasks:s3cret").decode()
    ):
        return 401, {"error": "invalid_client"}
    if form.get("token") == ["opaque-alice-token"]:
        return 200, {
            "active": True,
            "iss": ISSUER,
            "aud": [AUDIENCE],
            "sub": "opaque-alice",
            "scope": "tasks",
        }
    return 200, {"active": False}


async def test_opaque_tokens_are_introspected(server_files: ServerFilesFactory) -> None:
    with LocalHttp({"/introspect": _introspect}).running() as endpoint:
        files = server_files(
            "oauth-introspection",
            extra_toml=(
                f'\n[auth]\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\n'
                f'introspection_url = "{endpoint.url("/introspect")}"\n'
                'introspection_client_id = "mcp-tasks"\n'
                'introspection_client_secret_file = "secret"\n'
            ),
        )
        (files.root / "secret").write_text("s3cret\n")
        server = HttpServer(files)
        try:
            server.start()
            with anyio.fail_after(TIMEOUT * 2):
                async with TaskClient.http(
                    server.url, token="opaque-alice-token"
                ) as alice:
                    task_id = await start(alice, "echo", {"text": "opaque"})
                    result = await alice.task_result(task_id)
                    assert result["structuredContent"]["text"] == "opaque"
                refused = await post(server, initialize(), "opaque-other-token")
        finally:
            server.stop()
    assert refused.status_code == 401
    assert challenge(refused)["error_description"] == "the token is not active"


# ---------------------------------------------------------------- start-up


SERVE = [sys.executable, "-m", "mcp_tasks", "serve"]
#: Runs the CLI with cryptography hidden, as if the oauth extra were missing.
#: mcp 2.3 itself imports it (it requires pyjwt[crypto]), so it is hidden
#: after the imports: what the start-up check sees.
WITHOUT_CRYPTOGRAPHY = (
    "import sys; from mcp_tasks._cli import main; "
    "sys.modules['cryptography'] = None; sys.exit(main(sys.argv[1:]))"
)


def refused(argv: list[str], cwd: Path) -> tuple[int, str]:
    process = subprocess.run(
        argv, cwd=cwd, capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL
    )
    stderr = process.stderr.decode(errors="replace")
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("mcp-tasks: ")
    return process.returncode, lines[0]


def write_config(tmp_path: Path, body: str) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(f'[auth]\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\n' + body)
    return config


def test_an_unreadable_jwks_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, f'jwks_file = "{tmp_path / "nope.json"}"\n')
    argv = [*SERVE, "--db", str(tmp_path / "t.db"), "--config", str(config)]
    code, line = refused([*argv, "--http", "127.0.0.1:0"], tmp_path)
    assert code == 2
    assert "auth.jwks_file" in line
    assert "cannot read" in line
    assert not (tmp_path / "t.db").exists()


def test_a_missing_oauth_extra_is_one_line_and_exit_2(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(Issuer().jwks()))
    config = write_config(tmp_path, f'jwks_file = "{jwks}"\n')
    argv = [sys.executable, "-c", WITHOUT_CRYPTOGRAPHY, "serve"]
    argv += ["--db", str(tmp_path / "t.db"), "--config", str(config)]
    code, line = refused([*argv, "--http", "127.0.0.1:0"], tmp_path)
    assert code == 2
    assert "mcp-tasks[oauth]" in line


def test_auth_on_stdio_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, 'jwks_url = "https://id.example.test/jwks"\n')
    argv = [*SERVE, "--db", str(tmp_path / "t.db"), "--config", str(config)]
    code, line = refused(argv, tmp_path)
    assert code == 2
    assert "--http only" in line


# ------------------------------------------------------- operator endpoints


@pytest.fixture(scope="module")
def oauth_only_server(
    server_files: ServerFilesFactory, jwks: LocalHttp
) -> Iterator[HttpServer]:
    """OAuth and no token file: the operator endpoints must not be open."""
    files = server_files("oauth-only", extra_toml=auth_toml(jwks.url("/jwks")))
    server = HttpServer(files)
    try:
        server.start()
        yield server
    finally:
        server.stop()


async def get_metrics(server: HttpServer, token: str | None) -> httpx2.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient() as http:
        return await http.get(f"{base_url(server)}/metrics", headers=headers)


async def test_operator_endpoints_under_oauth_take_the_operator_scope(
    oauth_only_server: HttpServer, issuer: Issuer
) -> None:
    with anyio.fail_after(TIMEOUT):
        nobody = await get_metrics(oauth_only_server, None)
        client = await get_metrics(oauth_only_server, issuer.token(scope="tasks"))
        forged = await get_metrics(oauth_only_server, "not-a-jwt")
        operator = await get_metrics(
            oauth_only_server, issuer.token(scope="tasks tasks:operator")
        )
    assert (nobody.status_code, client.status_code, forged.status_code) == (
        401,
        401,
        401,
    )
    assert operator.status_code == 200
    assert "mcp_tasks_workers_limit" in operator.text


async def test_the_dashboard_signs_in_an_operator_scoped_access_token(
    oauth_only_server: HttpServer, issuer: Issuer
) -> None:
    origin = {"Origin": base_url(oauth_only_server)}
    async with httpx2.AsyncClient(base_url=base_url(oauth_only_server)) as http:
        with anyio.fail_after(TIMEOUT):
            refused = await http.post(
                "/dashboard/login", data={"token": issuer.token(scope="tasks")},
                headers=origin,
            )  # fmt: skip
            signed = await http.post(
                "/dashboard/login",
                data={"token": issuer.token(scope="tasks tasks:operator")},
                headers=origin,
            )
            # The cookie is the access token: verified again at each request.
            overview = await http.get("/dashboard/api/overview")
    assert refused.status_code == 401
    assert (signed.status_code, signed.headers["location"]) == (303, "/dashboard")
    assert overview.status_code == 200
    assert "clients" in overview.json()
