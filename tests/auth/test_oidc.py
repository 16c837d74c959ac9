"""OIDC bearer tokens, checked against a real local issuer (discovery + JWKS over HTTP)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator

import jwt
import pytest

from tesp_api.auth.authenticator import Authenticator, build_authenticator
from tesp_api.auth.errors import AuthUnavailable, Unauthenticated
from tesp_api.store.port import Owner
from tests.auth.conftest import AUDIENCE, FakeClock, basic_settings, cheap_hash, oidc_settings, settings_with
from tests.services.oidc_issuer import LocalOidcIssuer, SigningKey, running_issuer


@pytest.fixture
async def authenticator(issuer: LocalOidcIssuer, clock: FakeClock) -> AsyncIterator[Authenticator]:
    built = build_authenticator(oidc_settings(issuer), clock=clock)
    yield built
    await built.aclose()


def bearer(token: str) -> str:
    return f"Bearer {token}"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


async def refused(authenticator: Authenticator, token: str) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as info:
        await authenticator.authenticate(bearer(token))
    assert info.value.status_code == 401
    return info.value


async def test_a_valid_token_gives_its_subject_and_issuer(
    authenticator: Authenticator, issuer: LocalOidcIssuer
) -> None:
    principal = await authenticator.authenticate(bearer(issuer.mint("alice")))
    assert principal.owner == Owner("alice", issuer.issuer)
    assert not principal.is_admin


async def test_keys_are_fetched_once_and_then_cached(
    authenticator: Authenticator, issuer: LocalOidcIssuer
) -> None:
    for _ in range(3):
        await authenticator.authenticate(bearer(issuer.mint("alice")))
    assert issuer.requests["/jwks"] == 1
    assert issuer.requests["/.well-known/openid-configuration"] == 1


async def test_an_expired_token_is_refused(authenticator: Authenticator, issuer: LocalOidcIssuer) -> None:
    error = await refused(authenticator, issuer.mint(issued_at=time.time() - 3600, lifetime=600))
    assert error.message == "the token has expired"
    assert 'error="invalid_token"' in (error.www_authenticate or "")


async def test_a_token_expired_within_the_leeway_is_accepted(
    authenticator: Authenticator, issuer: LocalOidcIssuer
) -> None:
    token = issuer.mint(issued_at=time.time() - 605, lifetime=600)  # leeway is 30 s
    assert (await authenticator.authenticate(bearer(token))).owner is not None


async def test_a_token_not_valid_yet_is_refused(
    authenticator: Authenticator, issuer: LocalOidcIssuer
) -> None:
    error = await refused(authenticator, issuer.mint(issued_at=time.time() + 3600))
    assert error.message == "the token is not valid yet"


async def test_a_token_for_another_audience_is_refused(
    authenticator: Authenticator, issuer: LocalOidcIssuer
) -> None:
    error = await refused(authenticator, issuer.mint(audience="another-app"))
    assert "audience" in error.message


async def test_a_token_with_one_matching_audience_among_several_is_accepted(
    authenticator: Authenticator, issuer: LocalOidcIssuer
) -> None:
    assert await authenticator.authenticate(bearer(issuer.mint(audience=["other", AUDIENCE])))


async def test_a_token_with_a_wrong_signature_is_refused(
    authenticator: Authenticator, issuer: LocalOidcIssuer
) -> None:
    impostor = SigningKey()
    impostor.kid = issuer.signing_key.kid  # claims to be signed by the published key
    error = await refused(authenticator, issuer.mint(key=impostor))
    assert error.message == "the token signature is invalid"


async def test_a_token_with_altered_claims_is_refused(
    authenticator: Authenticator, issuer: LocalOidcIssuer
) -> None:
    header, _, signature = issuer.mint("alice").split(".")
    forged_claims = jwt.decode(issuer.mint("alice"), options={"verify_signature": False}) | {"sub": "root"}
    await refused(authenticator, f"{header}.{b64url(json.dumps(forged_claims).encode())}.{signature}")


async def test_a_token_from_an_issuer_not_in_the_allowlist_is_refused_without_contacting_it(
    authenticator: Authenticator,
) -> None:
    with running_issuer() as stranger:
        error = await refused(authenticator, stranger.mint("alice"))
        assert error.message == "the token issuer is not trusted"
        assert sum(stranger.requests.values()) == 0


async def test_a_token_naming_a_trusted_issuer_but_signed_elsewhere_is_refused(
    authenticator: Authenticator, issuer: LocalOidcIssuer
) -> None:
    with running_issuer() as stranger:
        token = jwt.encode(
            {"iss": issuer.issuer, "sub": "root", "aud": AUDIENCE, "exp": int(time.time()) + 300},
            stranger.signing_key.private,
            algorithm="ES256",
            headers={"kid": stranger.signing_key.kid, "jku": f"{stranger.url}/jwks"},
        )
        await refused(authenticator, token)
        assert sum(stranger.requests.values()) == 0


async def test_an_unsigned_token_with_alg_none_is_refused(
    authenticator: Authenticator, issuer: LocalOidcIssuer
) -> None:
    claims = {"iss": issuer.issuer, "sub": "root", "aud": AUDIENCE, "exp": int(time.time()) + 300}
    header = {"alg": "none", "typ": "JWT", "kid": issuer.signing_key.kid}
    token = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}."
    error = await refused(authenticator, token)
    assert error.message == "the token algorithm is not accepted"


async def test_an_hs256_token_keyed_with_the_public_key_is_refused(
    authenticator: Authenticator, issuer: LocalOidcIssuer
) -> None:
    public_jwk = json.dumps(issuer.signing_key.public_jwk()).encode()
    claims = {"iss": issuer.issuer, "sub": "root", "aud": AUDIENCE, "exp": int(time.time()) + 300}
    header = {"alg": "HS256", "kid": issuer.signing_key.kid}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    import hashlib
    import hmac

    signature = hmac.new(public_jwk, signing_input.encode(), hashlib.sha256).digest()
    await refused(authenticator, f"{signing_input}.{b64url(signature)}")


@pytest.mark.parametrize("token", ["", "not-a-jwt", "a.b.c", "x" * 50])
async def test_garbage_bearer_tokens_are_a_401(authenticator: Authenticator, token: str) -> None:
    with pytest.raises(Unauthenticated):
        await authenticator.authenticate(bearer(token))


async def test_a_token_without_subject_is_refused(
    authenticator: Authenticator, issuer: LocalOidcIssuer
) -> None:
    token = jwt.encode(
        {"iss": issuer.issuer, "aud": AUDIENCE, "exp": int(time.time()) + 300},
        issuer.signing_key.private,
        algorithm="ES256",
        headers={"kid": issuer.signing_key.kid},
    )
    assert (await refused(authenticator, token)).message == "the token lacks the sub claim"


async def test_a_rotated_key_is_picked_up(
    authenticator: Authenticator, issuer: LocalOidcIssuer, clock: FakeClock
) -> None:
    await authenticator.authenticate(bearer(issuer.mint("alice")))
    issuer.rotate()
    clock.advance(31)  # past jwks_min_refresh_seconds
    principal = await authenticator.authenticate(bearer(issuer.mint("alice")))
    assert principal.owner == Owner("alice", issuer.issuer)
    assert issuer.requests["/jwks"] == 2


async def test_unknown_key_ids_do_not_refetch_the_keys_more_often_than_allowed(
    authenticator: Authenticator, issuer: LocalOidcIssuer, clock: FakeClock
) -> None:
    await authenticator.authenticate(bearer(issuer.mint("alice")))
    stranger_key = SigningKey()
    for _ in range(5):
        await refused(authenticator, issuer.mint("alice", key=stranger_key))
    assert issuer.requests["/jwks"] == 1
    clock.advance(31)
    await refused(authenticator, issuer.mint("alice", key=stranger_key))
    assert issuer.requests["/jwks"] == 2


async def test_a_withdrawn_key_stops_working_once_the_keys_are_refreshed(
    authenticator: Authenticator, issuer: LocalOidcIssuer, clock: FakeClock
) -> None:
    old_token = issuer.mint("alice")
    await authenticator.authenticate(bearer(old_token))
    issuer.rotate()
    clock.advance(3601)  # past jwks_max_age_seconds
    await refused(authenticator, old_token)


async def test_an_unreachable_issuer_is_a_503(authenticator: Authenticator, issuer: LocalOidcIssuer) -> None:
    token = issuer.mint("alice")
    issuer.stop()
    with pytest.raises(AuthUnavailable) as info:
        await authenticator.authenticate(bearer(token))
    assert info.value.status_code == 503


async def test_known_keys_keep_working_while_the_issuer_is_briefly_down(
    authenticator: Authenticator, issuer: LocalOidcIssuer, clock: FakeClock
) -> None:
    await authenticator.authenticate(bearer(issuer.mint("alice")))
    token = issuer.mint("bob")
    issuer.stop()
    clock.advance(3601)  # keys are due for a refresh, which fails
    assert (await authenticator.authenticate(bearer(token))).owner == Owner("bob", issuer.issuer)


async def test_a_new_key_while_the_issuer_is_down_is_a_503_not_a_401(
    authenticator: Authenticator, issuer: LocalOidcIssuer, clock: FakeClock
) -> None:
    await authenticator.authenticate(bearer(issuer.mint("alice")))
    issuer.rotate()
    token = issuer.mint("alice")
    issuer.stop()
    clock.advance(31)
    with pytest.raises(AuthUnavailable):
        await authenticator.authenticate(bearer(token))


async def test_a_discovery_document_of_another_issuer_is_not_trusted(issuer: LocalOidcIssuer) -> None:
    settings = oidc_settings(
        issuer,
        issuers=[
            {
                "issuer": "https://idp.example.org",
                "audience": [AUDIENCE],
                "discovery_url": f"{issuer.url}/.well-known/openid-configuration",
            }
        ],
    )
    authenticator = build_authenticator(settings)
    token = jwt.encode(
        {"iss": "https://idp.example.org", "sub": "a", "aud": AUDIENCE, "exp": int(time.time()) + 300},
        issuer.signing_key.private,
        algorithm="ES256",
        headers={"kid": issuer.signing_key.kid},
    )
    with pytest.raises(AuthUnavailable):
        await authenticator.authenticate(bearer(token))
    await authenticator.aclose()


async def test_a_configured_jwks_url_skips_discovery(issuer: LocalOidcIssuer) -> None:
    settings = oidc_settings(
        issuer, issuers=[{"issuer": issuer.issuer, "audience": AUDIENCE, "jwks_url": f"{issuer.url}/jwks"}]
    )
    authenticator = build_authenticator(settings)
    assert (await authenticator.authenticate(bearer(issuer.mint("alice")))).owner == Owner(
        "alice", issuer.issuer
    )
    assert issuer.requests["/.well-known/openid-configuration"] == 0
    await authenticator.aclose()


async def test_a_group_in_the_admin_claim_makes_an_admin(issuer: LocalOidcIssuer) -> None:
    authenticator = build_authenticator(
        oidc_settings(issuer, admin_claim="groups", admin_values=["tes-admins"])
    )
    assert (
        await authenticator.authenticate(bearer(issuer.mint("a", groups=["users", "tes-admins"])))
    ).is_admin
    assert not (await authenticator.authenticate(bearer(issuer.mint("b", groups=["users"])))).is_admin
    await authenticator.aclose()


async def test_the_admin_claim_may_be_a_nested_path(issuer: LocalOidcIssuer) -> None:
    authenticator = build_authenticator(
        oidc_settings(issuer, admin_claim="realm_access.roles", admin_values=["admin"])
    )
    token = issuer.mint("a", realm_access={"roles": ["admin"]})
    assert (await authenticator.authenticate(bearer(token))).is_admin
    await authenticator.aclose()


async def test_an_issuers_admin_subjects_make_an_admin_of_that_issuer_only(issuer: LocalOidcIssuer) -> None:
    issuers = [{"issuer": issuer.issuer, "audience": AUDIENCE, "admin_subjects": ["boss"]}]
    authenticator = build_authenticator(oidc_settings(issuer, issuers=issuers))
    assert (await authenticator.authenticate(bearer(issuer.mint("boss")))).is_admin
    assert not (await authenticator.authenticate(bearer(issuer.mint("alice")))).is_admin
    await authenticator.aclose()


async def test_basic_and_bearer_work_side_by_side(issuer: LocalOidcIssuer) -> None:
    users = [{"username": "carol", "password_hash": cheap_hash("pw")}]
    settings = settings_with(
        mode=["basic", "oidc"], users=users, issuers=[{"issuer": issuer.issuer, "audience": AUDIENCE}]
    )
    authenticator = build_authenticator(settings)
    basic_header = "Basic " + base64.b64encode(b"carol:pw").decode()
    assert (await authenticator.authenticate(basic_header)).owner == Owner("carol", "basic")
    assert (await authenticator.authenticate(bearer(issuer.mint("dave")))).owner == Owner(
        "dave", issuer.issuer
    )
    with pytest.raises(Unauthenticated) as info:
        await authenticator.authenticate(None)
    assert info.value.challenges == ('Basic realm="tesp-api", charset="UTF-8"', 'Bearer realm="tesp-api"')
    await authenticator.aclose()


async def test_a_bearer_token_is_refused_when_only_basic_is_enabled() -> None:
    with pytest.raises(Unauthenticated):
        await build_authenticator(basic_settings()).authenticate("Bearer x.y.z")
