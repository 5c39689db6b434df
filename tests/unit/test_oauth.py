"""OAuth access tokens: JWTs against a JWKS (file or URL, rotated) and introspection.

Keys and tokens are minted here (`tests.oauth_support`); a JWKS URL or an
introspection endpoint is a local HTTP server started by the test.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mcp_tasks._config import ClientLimits, Settings
from mcp_tasks._exceptions import ConfigurationError
from mcp_tasks._oauth_config import OAuthSettings, TierLimits, parse_auth
from mcp_tasks.binding._auth import (
    EitherVerifier,
    HttpAuth,
    TokenFileVerifier,
    is_operator,
    tier_limits,
)
from mcp_tasks.binding._jwks import JwksKeys, TokenRejected, jwks_keys
from mcp_tasks.binding._oauth import (
    IntrospectionVerifier,
    JwtVerifier,
    oauth_verifier,
    refusals,
)

from ..oauth_support import (
    AUDIENCE,
    ISSUER,
    Issuer,
    LocalHttp,
    jwks_route,
    new_key,
    unsigned_token,
)


class FakeClock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def auth_settings(**overrides: Any) -> OAuthSettings:
    raw: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, **overrides}
    if not {"jwks_file", "jwks_url", "introspection_url"} & set(raw):
        raw["jwks_url"] = "http://127.0.0.1:9/never-fetched"
    return parse_auth(raw)


@pytest.fixture
def issuer() -> Issuer:
    return Issuer(keys=[new_key("RS256"), new_key("ES256")])


def file_verifier(tmp_path: Path, issuer: Issuer, **overrides: Any) -> JwtVerifier:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(issuer.jwks()))
    settings = auth_settings(jwks_file=str(path), **overrides)
    verifier = oauth_verifier(settings)
    assert isinstance(verifier, JwtVerifier)
    return verifier


@pytest.fixture
def jwks_server(issuer: Issuer) -> Iterator[LocalHttp]:
    with LocalHttp({"/jwks": jwks_route(issuer)}).running() as server:
        yield server


# ------------------------------------------------------------ valid tokens


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_a_valid_token_names_its_owner_and_scopes(
    tmp_path: Path, issuer: Issuer, algorithm: str
) -> None:
    verifier = file_verifier(tmp_path, issuer)
    key = next(k for k in issuer.keys if k.algorithm == algorithm)
    token = await verifier.verify(issuer.token(key, scope="tasks tasks:operator"))
    assert token.client_id == "alice"
    assert token.subject == "alice"
    assert token.scopes == ["tasks", "tasks:operator"]
    assert token.resource == AUDIENCE
    assert token.expires_at is not None


@pytest.mark.parametrize(
    ("claim", "owner"), [("sub", "alice"), ("client_id", "cli-1"), ("azp", "app-2")]
)
async def test_the_owner_comes_from_the_configured_claim(
    tmp_path: Path, issuer: Issuer, claim: str, owner: str
) -> None:
    verifier = file_verifier(tmp_path, issuer, owner_claim=claim)
    token = await verifier.verify(issuer.token(client_id="cli-1", azp="app-2"))
    assert token.client_id == owner


async def test_an_audience_list_including_ours_is_accepted(
    tmp_path: Path, issuer: Issuer
) -> None:
    verifier = file_verifier(tmp_path, issuer)
    token = issuer.token(aud=["https://other.example.test", AUDIENCE])
    assert (await verifier.verify(token)).client_id == "alice"


async def test_scp_list_claims_are_scopes(tmp_path: Path, issuer: Issuer) -> None:
    verifier = file_verifier(tmp_path, issuer)
    token = issuer.token(scope=None, scp=["tasks", "read"])
    assert (await verifier.verify(token)).scopes == ["tasks", "read"]


# ---------------------------------------------------------- refused tokens


def _wrong_signature(issuer: Issuer) -> str:
    # Same kid as a published key, signed by a different private key.
    impostor = new_key("RS256", kid=issuer.keys[0].kid)
    return issuer.token(impostor)


def _hmac_with_public_key(issuer: Issuer) -> str:
    # The classic algorithm confusion: HS256 keyed with the public JWK.
    secret = json.dumps(issuer.keys[0].public_jwk()).encode()
    return _encode_hs256(issuer.claims(), secret, issuer.keys[0].kid)


def _encode_hs256(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    import hashlib
    import hmac

    def part(value: bytes) -> str:
        return base64.urlsafe_b64encode(value).rstrip(b"=").decode()

    head = part(json.dumps({"alg": "HS256", "kid": kid}).encode())
    body = part(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{part(signature)}"


def _other_key_type(issuer: Issuer) -> str:
    # RS256, with the kid of the issuer's EC key: the key does not fit.
    ec_kid = next(k.kid for k in issuer.keys if k.algorithm == "ES256")
    return issuer.token(new_key("RS256", kid=ec_kid))


REFUSED: dict[str, tuple[Callable[[Issuer], str], str]] = {
    "expired": (lambda i: i.token(exp=1_000_000, iat=999_000, nbf=999_000), "expired"),
    "not-yet-valid": (lambda i: i.token(nbf=4_000_000_000), "not valid yet"),
    "wrong-audience": (
        lambda i: i.token(aud="https://other.example.test/mcp"),
        "not for this server",
    ),
    "no-audience": (lambda i: i.token(aud=None), "'aud'"),
    "no-expiry": (lambda i: i.token(exp=None), "'exp'"),
    "wrong-issuer": (
        lambda i: i.token(iss="https://evil.example.test"),
        "another issuer",
    ),
    "wrong-signature": (_wrong_signature, "signature"),
    "alg-none": (lambda i: unsigned_token(i.claims(), i.keys[0].kid), "'none'"),
    "hs256-confusion": (_hmac_with_public_key, "'HS256'"),
    "unknown-kid": (
        lambda i: i.token(new_key("RS256", kid="not-published")),
        "'not-published' is not known",
    ),
    "missing-owner": (lambda i: i.token(sub=None), "'sub' claim"),
    "key-of-another-type": (_other_key_type, "does not match the key"),
    "not-a-jwt": (lambda i: "opaque-token-value", "not a JWT"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_bad_tokens_are_refused_with_a_reason(
    tmp_path: Path, issuer: Issuer, case: str
) -> None:
    verifier = file_verifier(tmp_path, issuer)
    make, reason = REFUSED[case]
    token = make(issuer)
    with pytest.raises(TokenRejected, match=reason):
        await verifier.verify(token)
    # Through the SDK's interface: None, and the reason is recorded.
    holder: list[str] = []
    reset = refusals.set(holder)
    try:
        assert await verifier.verify_token(token) is None
    finally:
        refusals.reset(reset)
    assert len(holder) == 1
    assert reason in holder[0]


async def test_an_algorithm_not_configured_is_refused(
    tmp_path: Path, issuer: Issuer
) -> None:
    verifier = file_verifier(tmp_path, issuer, algorithms=["RS256"])
    es256 = next(k for k in issuer.keys if k.algorithm == "ES256")
    with pytest.raises(TokenRejected, match="'ES256' is not accepted"):
        await verifier.verify(issuer.token(es256))


async def test_leeway_accepts_small_clock_skew_only(
    tmp_path: Path, issuer: Issuer
) -> None:
    import time

    verifier = file_verifier(tmp_path, issuer, leeway_seconds=60)
    skewed = issuer.token(exp=int(time.time()) - 30)
    assert (await verifier.verify(skewed)).client_id == "alice"
    with pytest.raises(TokenRejected, match="expired"):
        await verifier.verify(issuer.token(exp=int(time.time()) - 120))


# ------------------------------------------------------------ JWKS by URL


def url_keys(server: LocalHttp, clock: FakeClock, **overrides: Any) -> JwksKeys:
    settings = auth_settings(jwks_url=server.url("/jwks"), **overrides)
    return jwks_keys(settings, clock=clock)


async def test_keys_are_fetched_once_and_cached(
    issuer: Issuer, jwks_server: LocalHttp
) -> None:
    clock = FakeClock()
    keys = url_keys(jwks_server, clock)
    verifier = JwtVerifier(auth_settings(), keys)
    for _ in range(5):
        assert (await verifier.verify(issuer.token())).client_id == "alice"
    assert jwks_server.hits["/jwks"] == 1


async def test_key_rotation_new_kid_refreshes_and_retired_keys_stop_working(
    issuer: Issuer, jwks_server: LocalHttp
) -> None:
    clock = FakeClock()
    keys = url_keys(jwks_server, clock, jwks_cache_seconds=300)
    verifier = JwtVerifier(auth_settings(), keys)
    old = issuer.keys[0]
    old_token = issuer.token(old)
    await verifier.verify(old_token)
    # The issuer rotates: a token signed with the new key is accepted at
    # once (unknown kid → refresh), without waiting for the TTL.
    clock.now += 11
    new = issuer.rotate("ES256")
    assert (await verifier.verify(issuer.token(new))).client_id == "alice"
    assert jwks_server.hits["/jwks"] == 2
    # The old key is retired: once the cache expires, its tokens are refused.
    issuer.retire(old)
    await verifier.verify(old_token)  # still cached
    clock.now += 300
    with pytest.raises(TokenRejected, match="is not known"):
        await verifier.verify(old_token)


async def test_a_flood_of_unknown_kids_fetches_at_most_once_per_interval(
    issuer: Issuer, jwks_server: LocalHttp
) -> None:
    clock = FakeClock()
    keys = url_keys(jwks_server, clock, jwks_refresh_min_seconds=10)
    verifier = JwtVerifier(auth_settings(), keys)
    await verifier.verify(issuer.token())
    for n in range(50):
        forged = issuer.token(new_key("RS256", kid=f"forged-{n}"))
        with pytest.raises(TokenRejected, match="is not known"):
            await verifier.verify(forged)
    # The first fetch was at start; the unknown kids were too soon after it.
    assert jwks_server.hits["/jwks"] == 1
    clock.now += 10
    for n in range(50):
        with pytest.raises(TokenRejected):
            await verifier.verify(issuer.token(new_key("RS256", kid=f"again-{n}")))
    assert jwks_server.hits["/jwks"] == 2


async def test_a_failed_refresh_keeps_the_known_keys(issuer: Issuer) -> None:
    answers = {"status": 200}

    def route(method: str, form: Any, headers: Any) -> tuple[int, Any]:
        return answers["status"], issuer.jwks()

    with LocalHttp({"/jwks": route}).running() as server:
        clock = FakeClock()
        keys = url_keys(server, clock)
        verifier = JwtVerifier(auth_settings(), keys)
        await verifier.verify(issuer.token())
        answers["status"] = 503
        clock.now += 400  # past the TTL: a refresh is tried and fails
        assert (await verifier.verify(issuer.token())).client_id == "alice"
        assert server.hits["/jwks"] == 2


async def test_an_unreachable_jwks_refuses_tokens_without_crashing(
    issuer: Issuer,
) -> None:
    settings = auth_settings(jwks_url="http://127.0.0.1:9/jwks")
    verifier = JwtVerifier(settings, jwks_keys(settings))
    with pytest.raises(TokenRejected, match="signing keys are not available"):
        await verifier.verify(issuer.token())


async def test_an_issuer_that_is_down_is_asked_at_most_once_per_interval(
    issuer: Issuer,
) -> None:
    clock = FakeClock()
    attempts: list[float] = []

    async def down() -> dict[str, Any]:
        attempts.append(clock.now)
        raise ValueError("connection refused")

    keys = JwksKeys(down, cache_seconds=300, refresh_min_seconds=10, clock=clock)
    verifier = JwtVerifier(auth_settings(), keys)
    for _ in range(20):
        with pytest.raises(TokenRejected, match="not available"):
            await verifier.verify(issuer.token())
    clock.now += 10
    with pytest.raises(TokenRejected, match="not available"):
        await verifier.verify(issuer.token())
    assert attempts == [1000.0, 1010.0]


async def test_a_jwks_file_is_reread_when_a_kid_is_unknown(
    tmp_path: Path, issuer: Issuer
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(issuer.jwks()))
    clock = FakeClock()
    settings = auth_settings(jwks_file=str(path))
    verifier = JwtVerifier(settings, jwks_keys(settings, clock=clock))
    new = issuer.rotate()
    path.write_text(json.dumps(issuer.jwks()))
    clock.now += 10
    assert (await verifier.verify(issuer.token(new))).client_id == "alice"


# ---------------------------------------------------- start-up and config


def test_an_unreadable_jwks_file_is_a_configuration_error(tmp_path: Path) -> None:
    settings = auth_settings(jwks_file=str(tmp_path / "missing.json"))
    with pytest.raises(ConfigurationError, match=r"auth\.jwks_file.*cannot read"):
        oauth_verifier(settings)
    (tmp_path / "bad.json").write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')
    settings = auth_settings(jwks_file=str(tmp_path / "bad.json"))
    with pytest.raises(ConfigurationError, match="no usable signing key"):
        oauth_verifier(settings)


def test_a_plain_http_jwks_url_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    oauth_verifier(auth_settings(jwks_url="http://id.example.test/jwks"))
    oauth_verifier(auth_settings(jwks_url="http://127.0.0.1:1/jwks"))
    oauth_verifier(auth_settings(jwks_url="https://id.example.test/jwks"))
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == [
        "http://id.example.test/jwks is plain http and not loopback; "
        "use https in production"
    ]


def test_offline_access_is_not_a_resource_scope() -> None:
    with pytest.raises(ConfigurationError, match="offline_access"):
        auth_settings(required_scopes=["tasks", "offline_access"])


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"audience": AUDIENCE, "jwks_url": "https://x/j"}, "auth.issuer"),
        ({"issuer": ISSUER, "jwks_url": "https://x/j"}, "auth.audience"),
        (
            {"issuer": ISSUER, "audience": "mcp-tasks", "jwks_url": "https://x/j"},
            "auth.audience",
        ),
        ({"issuer": ISSUER, "audience": AUDIENCE}, "auth.jwks_url"),
        (
            {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "jwks_url": "https://x/j",
                "jwks_file": "f",
            },
            "auth.jwks_url",
        ),
        (
            {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "jwks_url": "https://x/j",
                "algorithms": ["HS256"],
            },
            "auth.algorithms",
        ),
        (
            {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "jwks_url": "https://x/j",
                "algorithms": ["none"],
            },
            "auth.algorithms",
        ),
        (
            {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "introspection_url": "https://x/i",
            },
            "auth.introspection_client_id",
        ),
        (
            {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "jwks_url": "https://x/j",
                "required_scopes": ["a b"],
            },
            "auth.required_scopes",
        ),
        (
            {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "jwks_url": "https://x/j",
                "tiers": {"gold": {"concurrency": 2, "backlog": 5}},
            },
            "auth.tier_claim",
        ),
        (
            {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "jwks_url": "https://x/j",
                "owner": "sub",
            },
            "auth.owner",
        ),
    ],
)
def test_bad_auth_tables_name_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_auth(raw)
    assert caught.value.key == key


def test_the_auth_table_is_read_from_the_config(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        "[auth]\n"
        f'issuer = "{ISSUER}"\n'
        f'audience = "{AUDIENCE}"\n'
        'jwks_url = "https://id.example.test/jwks"\n'
        'owner_claim = "azp"\n'
        'required_scopes = ["tasks"]\n'
        'tier_claim = "tier"\n'
        "[auth.tiers.gold]\nconcurrency = 9\nbacklog = 99\n"
    )
    settings = Settings.load(config)
    assert settings.oauth is not None
    assert settings.auth_enabled
    assert settings.oauth.owner_claim == "azp"
    assert settings.oauth.required_scopes == ("tasks",)
    assert settings.oauth.advertised_servers == (ISSUER,)
    assert settings.oauth.tiers == {"gold": TierLimits(9, 99)}
    assert not Settings().auth_enabled


# ------------------------------------------- token file, operators, tiers


async def test_the_token_file_keeps_working_next_to_oauth(
    tmp_path: Path, issuer: Issuer
) -> None:
    verifier = file_verifier(tmp_path, issuer, required_scopes=["tasks"])
    either = EitherVerifier(
        TokenFileVerifier({"static-token-0123456789": "ci"}, ["tasks"]), verifier
    )
    static = await either.verify_token("static-token-0123456789")
    assert static is not None
    assert (static.client_id, static.scopes) == ("ci", ["tasks"])
    oauth = await either.verify_token(issuer.token())
    assert oauth is not None
    assert oauth.client_id == "alice"
    assert await either.verify_token("neither-one") is None


def test_http_auth_from_settings(tmp_path: Path, issuer: Issuer) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(issuer.jwks()))
    assert HttpAuth.from_settings(Settings()) is None
    plain = HttpAuth.from_settings(Settings(tokens={"t" * 16: "ci"}))
    assert plain is not None
    assert isinstance(plain.verifier, TokenFileVerifier)
    oauth = auth_settings(jwks_file=str(path))
    both = HttpAuth.from_settings(Settings(tokens={"t" * 16: "ci"}, oauth=oauth))
    assert both is not None
    assert isinstance(both.verifier, EitherVerifier)
    sdk = both.sdk_settings("http://127.0.0.1:1/mcp")
    assert str(sdk.resource_server_url) == AUDIENCE


async def test_operator_access_is_the_operator_scope(
    tmp_path: Path, issuer: Issuer
) -> None:
    settings = auth_settings(operator_scope="tasks:operator")
    verifier = file_verifier(tmp_path, issuer)
    operator = await verifier.verify(issuer.token(scope="tasks tasks:operator"))
    user = await verifier.verify(issuer.token(scope="tasks"))
    assert is_operator(operator, settings)
    assert not is_operator(user, settings)
    assert not is_operator(operator, auth_settings())
    assert not is_operator(None, settings)


async def test_a_tier_claim_gives_a_client_its_tier_limits(
    tmp_path: Path, issuer: Issuer
) -> None:
    oauth = auth_settings(
        tier_claim="tier", tiers={"gold": {"concurrency": 9, "backlog": 99}}
    )
    settings = Settings(oauth=oauth, client_overrides={"bob": ClientLimits(1, 2)})
    limits_of = tier_limits(settings)
    verifier = file_verifier(tmp_path, issuer)
    gold = await verifier.verify(issuer.token(tier="gold"))
    assert limits_of(gold) == ClientLimits(9, 99)
    assert limits_of(await verifier.verify(issuer.token(tier="tin"))) is None
    assert limits_of(await verifier.verify(issuer.token())) is None
    # A client's own configured caps win over its tier.
    bob = await verifier.verify(issuer.token(sub="bob", tier="gold"))
    assert limits_of(bob) is None


# ----------------------------------------------------------- introspection


def introspection_route(
    answers: dict[str, dict[str, Any]],
) -> Any:
    expected = "Basic " + base64.b64encode(b"mcp-tasks:s3cret").decode()

    def route(
        method: str, form: dict[str, list[str]], headers: dict[str, str]
    ) -> tuple[int, Any]:
        if headers.get("Authorization") != expected:
            return 401, {"error": "invalid_client"}
        return 200, answers.get(form["token"][0], {"active": False})

    return route


@pytest.fixture
def introspection(tmp_path: Path) -> Iterator[tuple[IntrospectionVerifier, LocalHttp]]:
    import time

    now = int(time.time())
    good = {
        "active": True,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "carol",
        "scope": "tasks",
        "exp": now + 60,
    }
    answers = {
        "good": good,
        "inactive": {"active": False},
        "other-aud": {**good, "aud": "https://other.example.test"},
        "other-iss": {**good, "iss": "https://evil.example.test"},
        "expired": {**good, "exp": now - 3600},
        "no-owner": {**good, "sub": None},
    }
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    with LocalHttp({"/introspect": introspection_route(answers)}).running() as server:
        settings = auth_settings(
            introspection_url=server.url("/introspect"),
            introspection_client_id="mcp-tasks",
            introspection_client_secret_file=str(secret),
        )
        verifier = oauth_verifier(settings)
        assert isinstance(verifier, IntrospectionVerifier)
        yield verifier, server


async def test_introspection_accepts_an_active_token_for_us(
    introspection: tuple[IntrospectionVerifier, LocalHttp],
) -> None:
    verifier, _ = introspection
    token = await verifier.verify("good")
    assert (token.client_id, token.scopes) == ("carol", ["tasks"])


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("inactive", "not active"),
        ("unknown", "not active"),
        ("other-aud", "not for this server"),
        ("other-iss", "another issuer"),
        ("expired", "expired"),
        ("no-owner", "'sub' claim"),
    ],
)
async def test_introspection_refuses(
    introspection: tuple[IntrospectionVerifier, LocalHttp], token: str, reason: str
) -> None:
    verifier, _ = introspection
    with pytest.raises(TokenRejected, match=reason):
        await verifier.verify(token)


async def test_accepted_introspections_are_cached_when_asked_until_exp(
    tmp_path: Path,
) -> None:
    import time

    now = time.time()
    answers = {
        "long": {"active": True, "aud": AUDIENCE, "sub": "carol", "exp": now + 3600},
        "short": {"active": True, "aud": AUDIENCE, "sub": "carol", "exp": now + 5},
    }
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    clock = FakeClock()
    clock.now = now
    with LocalHttp({"/introspect": introspection_route(answers)}).running() as server:
        settings = auth_settings(
            introspection_url=server.url("/introspect"),
            introspection_client_id="mcp-tasks",
            introspection_client_secret_file=str(secret),
            introspection_cache_seconds=60,
        )
        verifier = IntrospectionVerifier(settings, "s3cret", clock=clock)
        for _ in range(3):
            await verifier.verify("long")
            await verifier.verify("short")
        assert verifier.requests == 2
        with pytest.raises(TokenRejected, match="not active"):
            await verifier.verify("unknown")
        with pytest.raises(TokenRejected, match="not active"):
            await verifier.verify("unknown")
        assert verifier.requests == 4  # refusals are never remembered
        # Past "short"'s exp (and the 30 s leeway), within "long"'s 60 s.
        clock.now += 40
        await verifier.verify("long")
        assert verifier.requests == 4
        with pytest.raises(TokenRejected, match="expired"):
            await verifier.verify("short")
        assert verifier.requests == 5
        clock.now += 60
        await verifier.verify("long")
        assert verifier.requests == 6


async def test_introspection_is_not_cached_by_default(
    introspection: tuple[IntrospectionVerifier, LocalHttp],
) -> None:
    verifier, server = introspection
    for _ in range(3):
        await verifier.verify("good")
    assert server.hits["/introspect"] == 3


async def test_introspection_with_a_wrong_secret_refuses(tmp_path: Path) -> None:
    with LocalHttp({"/introspect": introspection_route({})}).running() as server:
        secret = tmp_path / "secret"
        secret.write_text("wrong")
        settings = auth_settings(
            introspection_url=server.url("/introspect"),
            introspection_client_id="mcp-tasks",
            introspection_client_secret_file=str(secret),
        )
        verifier = oauth_verifier(settings)
        with pytest.raises(TokenRejected, match="introspection failed"):
            await verifier.verify("good")


def test_the_readme_example_is_a_valid_auth_table() -> None:
    import tomllib

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("```toml\n[auth]\n") + len("```toml\n")
    example = tomllib.loads(readme[start : readme.index("```", start)])
    settings = parse_auth(example["auth"])
    assert settings.audience == "https://mcp.example.com/mcp"
    assert settings.jwks_url is not None
