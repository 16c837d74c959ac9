"""HTTP Basic: users from the settings; anything missing or garbled is a 401, never a 500."""

from __future__ import annotations

import base64

import pytest

from tesp_api.auth.authenticator import build_authenticator
from tesp_api.auth.errors import Unauthenticated
from tesp_api.auth.principal import ANONYMOUS_ADMIN
from tesp_api.config.settings import Settings
from tesp_api.store.port import Owner
from tests.auth.conftest import basic_settings, cheap_hash


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


async def test_auth_off_makes_everybody_an_anonymous_admin() -> None:
    authenticator = build_authenticator(Settings())
    assert await authenticator.authenticate(None) == ANONYMOUS_ADMIN
    assert await authenticator.authenticate("Bearer whatever") == ANONYMOUS_ADMIN


async def test_a_user_with_the_right_password_is_its_own_owner() -> None:
    principal = await build_authenticator(basic_settings()).authenticate(basic("alice", "alice-pw"))
    assert principal.owner == Owner("alice", "basic")
    assert not principal.is_admin
    assert principal.read_scope == Owner("alice", "basic")


async def test_repeated_requests_keep_working_from_the_verified_cache() -> None:
    authenticator = build_authenticator(basic_settings())
    for _ in range(3):
        assert (await authenticator.authenticate(basic("bob", "bob-pw"))).owner == Owner("bob", "basic")


async def test_a_user_marked_admin_sees_everything() -> None:
    principal = await build_authenticator(basic_settings()).authenticate(basic("root", "root-pw"))
    assert principal.is_admin and principal.read_scope is None


async def test_admin_subjects_make_a_basic_user_admin() -> None:
    authenticator = build_authenticator(basic_settings(admin_subjects=["bob"]))
    assert (await authenticator.authenticate(basic("bob", "bob-pw"))).is_admin


async def test_a_wrong_password_is_refused_with_a_basic_challenge() -> None:
    with pytest.raises(Unauthenticated) as info:
        await build_authenticator(basic_settings()).authenticate(basic("alice", "bob-pw"))
    assert info.value.status_code == 401
    assert info.value.www_authenticate == 'Basic realm="tesp-api", charset="UTF-8"'
    assert "bob-pw" not in info.value.message


async def test_a_wrong_password_after_a_right_one_is_still_refused() -> None:
    authenticator = build_authenticator(basic_settings())
    await authenticator.authenticate(basic("alice", "alice-pw"))
    with pytest.raises(Unauthenticated):
        await authenticator.authenticate(basic("alice", "alice-pw2"))


async def test_an_unknown_user_gets_the_same_answer_as_a_wrong_password() -> None:
    authenticator = build_authenticator(basic_settings())
    with pytest.raises(Unauthenticated) as unknown:
        await authenticator.authenticate(basic("mallory", "alice-pw"))
    with pytest.raises(Unauthenticated) as wrong:
        await authenticator.authenticate(basic("alice", "nope"))
    assert unknown.value.message == wrong.value.message


async def test_missing_credentials_are_a_401_with_the_challenge() -> None:
    with pytest.raises(Unauthenticated) as info:
        await build_authenticator(basic_settings()).authenticate(None)
    assert info.value.message == "authentication required"
    assert info.value.www_authenticate is not None and info.value.www_authenticate.startswith("Basic ")


@pytest.mark.parametrize(
    "header",
    [
        "Basic",
        "Basic ",
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"no-colon-here").decode(),
        "Basic " + base64.b64encode(b":password-without-user").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
        "Digest username=alice",
        "Bearer some.jwt.token",
        "basic",
    ],
)
async def test_garbled_or_foreign_authorization_headers_are_a_401(header: str) -> None:
    with pytest.raises(Unauthenticated):
        await build_authenticator(basic_settings()).authenticate(header)


async def test_the_scheme_word_is_case_insensitive() -> None:
    header = basic("alice", "alice-pw").replace("Basic", "bASIC")
    assert (await build_authenticator(basic_settings()).authenticate(header)).owner == Owner("alice", "basic")


async def test_a_password_may_contain_colons() -> None:
    settings = Settings.model_validate(
        {"auth": {"mode": "basic", "users": [{"username": "c", "password_hash": cheap_hash("a:b:c")}]}}
    )
    assert (await build_authenticator(settings).authenticate(basic("c", "a:b:c"))).owner == Owner(
        "c", "basic"
    )


async def test_the_legacy_basic_auth_user_logs_in_as_admin() -> None:
    settings = Settings.model_validate(
        {"basic_auth": {"enable": True, "username": "old", "password_hash": cheap_hash("pw")}}
    )
    principal = await build_authenticator(settings).authenticate(basic("old", "pw"))
    assert principal.owner == Owner("old", "basic") and principal.is_admin
