"""The cost of OAuth access tokens: JWT verification per request.

Two measurements, each interleaving its configurations trial by trial (the
machine is shared and noisy: read the ratios within one run):

1. **In process**: `JwtVerifier.verify` of one RS256 and one ES256 token with
   the keys cached (what every HTTP request pays), next to the token file's
   dictionary lookup. Microseconds per verification, median over trials.
2. **End to end**: one ``mcp-tasks serve --http`` with ``[auth]`` (keys from a
   JWKS file) and a token file; one client per credential (static token,
   RS256 JWT, ES256 JWT) sends ``tasks/get`` of its own finished ``wait``
   task (the default tools), one
   request at a time. Milliseconds per request, median over trials.

    .venv/bin/python -m benchmarks.oauth_verify            # 5 trials
    .venv/bin/python -m benchmarks.oauth_verify --quick    # CI smoke run
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from mcp_tasks._oauth_config import parse_auth
from mcp_tasks.binding._auth import TokenFileVerifier
from mcp_tasks.binding._jwks import jwks_keys
from mcp_tasks.binding._oauth import JwtVerifier
from mcp_tasks.client import TaskClient

ISSUER = "https://id.example.test"
AUDIENCE = "https://mcp.example.test/mcp"
STATIC_TOKEN = "static-bench-token-0123456789"
LISTENING = re.compile(r"listening on (http://\S+/mcp)")


def _keys() -> tuple[dict[str, Any], dict[str, Any]]:
    """Private keys by algorithm, and the public JWKS."""
    private: dict[str, Any] = {
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
    }
    keys = [
        {
            **RSAAlgorithm.to_jwk(private["RS256"].public_key(), as_dict=True),
            "kid": "rs",
            "alg": "RS256",
        },
        {
            **ECAlgorithm.to_jwk(private["ES256"].public_key(), as_dict=True),
            "kid": "es",
            "alg": "ES256",
        },
    ]
    return private, {"keys": keys}


def _token(private: dict[str, Any], algorithm: str, subject: str) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "scope": "tasks",
        "iat": now,
        "exp": now + 3600,
    }
    kid = "rs" if algorithm == "RS256" else "es"
    return jwt.encode(
        claims, private[algorithm], algorithm=algorithm, headers={"kid": kid}
    )


async def _per_call(call: Callable[[], Awaitable[Any]], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await call()
    return (time.perf_counter() - start) / n


async def in_process(folder: Path, trials: int, n: int) -> dict[str, float]:
    """Microseconds per verification (median over trials)."""
    private, jwks = _keys()
    path = folder / "jwks.json"
    path.write_text(json.dumps(jwks))
    settings = parse_auth(
        {"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": str(path)}
    )
    verifier = JwtVerifier(settings, jwks_keys(settings))
    static = TokenFileVerifier({STATIC_TOKEN: "ci"})
    rs256 = _token(private, "RS256", "a")
    es256 = _token(private, "ES256", "a")
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "token file": lambda: static.verify_token(STATIC_TOKEN),
        "JWT RS256": lambda: verifier.verify(rs256),
        "JWT ES256": lambda: verifier.verify(es256),
    }
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(trials):
        for name, call in calls.items():
            samples[name].append(await _per_call(call, n) * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def _start_server(
    folder: Path, jwks: dict[str, Any]
) -> tuple[subprocess.Popen[bytes], str]:
    (folder / "jwks.json").write_text(json.dumps(jwks))
    (folder / "config.toml").write_text(
        f'[auth]\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\n'
        f'jwks_file = "{folder / "jwks.json"}"\nrequired_scopes = ["tasks"]\n'
    )
    (folder / "tokens.toml").write_text(
        f'[[client]]\nid = "ci"\ntoken = "{STATIC_TOKEN}"\n'
    )
    argv = [sys.executable, "-m", "mcp_tasks", "serve", "--db", str(folder / "t.db")]
    argv += [
        "--config",
        str(folder / "config.toml"),
        "--tokens",
        str(folder / "tokens.toml"),
    ]
    argv += ["--http", "127.0.0.1:0", "--log-level", "INFO"]
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert process.stderr is not None
    for raw in process.stderr:
        found = LISTENING.search(raw.decode(errors="replace"))
        if found:
            return process, found.group(1)
    raise RuntimeError("the server exited before listening")


async def end_to_end(folder: Path, trials: int, n: int) -> dict[str, float]:
    """Milliseconds per ``tasks/get`` over HTTP (median over trials)."""
    private, jwks = _keys()
    process, url = _start_server(folder, jwks)
    credentials = {
        "token file": STATIC_TOKEN,
        "JWT RS256": _token(private, "RS256", "rs-user"),
        "JWT ES256": _token(private, "ES256", "es-user"),
    }
    samples: dict[str, list[float]] = {name: [] for name in credentials}
    try:
        for _ in range(trials):
            for name, token in credentials.items():
                async with TaskClient.http(url, token=token) as client:
                    created = await client.call_tool(
                        "wait", {"seconds": 0}, task={"ttl": 60_000}
                    )
                    task_id = str(created["task"]["taskId"])  # pyright: ignore[reportIndexIssue, reportArgumentType, reportCallIssue]
                    await client.task_result(task_id)
                    seconds = await _per_call(
                        lambda c=client, t=task_id: c.get_task(t), n
                    )
                samples[name].append(seconds * 1e3)
    finally:
        process.terminate()
        process.wait(15)
    return {name: statistics.median(values) for name, values in samples.items()}


def _print(title: str, unit: str, figures: dict[str, float]) -> None:
    base = figures["token file"]
    print(title)
    for name, value in figures.items():
        print(
            f"  {name:<11} {value:9.1f} {unit}   ({value / base:5.2f}x the token file)"
        )


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The cost of OAuth access tokens")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes (CI smoke run)"
    )
    args = parser.parse_args(argv)
    trials, n_verify, n_requests = (1, 50, 5) if args.quick else (5, 2000, 300)
    with tempfile.TemporaryDirectory(prefix="mcpt-oauth-bench-") as tmp:
        folder = Path(tmp)
        _print(
            f"verification in process (us per token, median of {trials} trials of {n_verify}):",
            "us",
            await in_process(folder, trials, n_verify),
        )
        _print(
            f"tasks/get over HTTP (ms per request, median of {trials} trials of {n_requests}):",
            "ms",
            await end_to_end(folder, trials, n_requests),
        )


if __name__ == "__main__":
    anyio.run(main, backend="asyncio")
