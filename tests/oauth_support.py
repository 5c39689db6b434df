"""A test authorization server: keys and tokens minted in the test, served locally.

`Issuer` holds signing keys (RSA and EC), publishes them as a JWKS, mints
access tokens and rotates keys. `LocalHttp` serves its JWKS (and, for RFC 7662
tests, an introspection endpoint) from a thread on 127.0.0.1: no network.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable, Generator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://id.example.test/realms/tools"
AUDIENCE = "https://mcp.example.test/mcp"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass
class SigningKey:
    """One key pair of the issuer."""

    kid: str
    algorithm: str
    private: PrivateKey

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a JWK (with ``kid``, ``alg`` and ``use``)."""
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}


def new_key(algorithm: str = "RS256", kid: str | None = None) -> SigningKey:
    """A fresh key pair for ``algorithm`` (RS256 or ES256)."""
    private: PrivateKey
    if algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return SigningKey(
        kid or f"{algorithm.lower()}-{uuid.uuid4().hex[:8]}", algorithm, private
    )


@dataclass
class Issuer:
    """The keys an authorization server signs with, and the tokens it mints."""

    keys: list[SigningKey] = field(default_factory=lambda: [new_key("RS256")])
    issuer: str = ISSUER
    audience: str = AUDIENCE

    def jwks(self) -> dict[str, Any]:
        """The published key set."""
        return {"keys": [key.public_jwk() for key in self.keys]}

    def rotate(self, algorithm: str = "RS256") -> SigningKey:
        """Publish a new key and sign with it from now on (the old one stays)."""
        key = new_key(algorithm)
        self.keys.insert(0, key)
        return key

    def retire(self, key: SigningKey) -> None:
        """Stop publishing ``key``."""
        self.keys.remove(key)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """Valid claims for ``sub = "alice"``; ``overrides`` replace (``None`` drops)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "alice",
            "client_id": "tasks-cli",
            "azp": "tasks-cli",
            "scope": "tasks",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self,
        key: SigningKey | None = None,
        *,
        headers: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> str:
        """A signed token (by ``key``, default the newest) with `claims`."""
        key = key or self.keys[0]
        return jwt.encode(
            self.claims(**overrides),
            key.private,
            algorithm=key.algorithm,
            headers={"kid": key.kid, **(headers or {})},
        )


def unsigned_token(claims: dict[str, Any], kid: str) -> str:
    """A token with ``alg: none`` and no signature."""

    def part(value: dict[str, Any]) -> str:
        raw = json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{part(claims)}."


Handler = Callable[[str, dict[str, list[str]], dict[str, str]], tuple[int, Any]]


class LocalHttp:
    """A JSON HTTP server on 127.0.0.1 in a thread; counts requests per path.

    ``routes`` map a path to a function of (method, form fields, headers)
    returning (status, JSON body).
    """

    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = routes
        self.hits: dict[str, int] = {}
        owner = self

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.answer(self, "GET", {})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = parse_qs(self.rfile.read(length).decode())
                owner.answer(self, "POST", form)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the test output is for assertions

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def answer(
        self, request: BaseHTTPRequestHandler, method: str, form: dict[str, list[str]]
    ) -> None:
        """Answer one request from ``routes``."""
        path = request.path
        self.hits[path] = self.hits.get(path, 0) + 1
        route = self.routes.get(path)
        if route is None:
            status, body = 404, {"error": "not found"}
        else:
            status, body = route(method, form, dict(request.headers.items()))
        data = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def url(self, path: str) -> str:
        """The URL of ``path`` on this server."""
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    @contextmanager
    def running(self) -> Generator[LocalHttp]:
        """Serve until the block ends."""
        self._thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()


def jwks_route(issuer: Issuer) -> Handler:
    """A route that serves ``issuer``'s current key set."""

    def route(
        method: str, form: dict[str, list[str]], headers: dict[str, str]
    ) -> tuple[int, Any]:
        return 200, issuer.jwks()

    return route
