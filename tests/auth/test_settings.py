"""The auth settings refuse configurations that would be insecure or could not work."""

from __future__ import annotations

import pytest

from tesp_api.auth.effective import effective_auth_settings
from tesp_api.config.settings import Settings
from tests.auth.conftest import cheap_hash, settings_with


def test_auth_is_off_by_default() -> None:
    assert Settings().auth.mode == ["none"]


def test_none_cannot_be_combined_with_another_mode() -> None:
    with pytest.raises(ValueError, match="cannot be combined"):
        settings_with(mode=["none", "basic"], users=[{"username": "a", "password_hash": cheap_hash("p")}])


def test_basic_and_oidc_can_be_enabled_together() -> None:
    settings = settings_with(
        mode=["basic", "oidc"],
        users=[{"username": "a", "password_hash": cheap_hash("p")}],
        issuers=[{"issuer": "https://idp.example.org", "audience": "tesp"}],
    )
    assert settings.auth.mode == ["basic", "oidc"]


def test_basic_mode_without_users_is_refused() -> None:
    with pytest.raises(ValueError, match="no user"):
        settings_with(mode="basic")


def test_oidc_mode_without_issuers_is_refused() -> None:
    with pytest.raises(ValueError, match="no issuer"):
        settings_with(mode="oidc")


def test_an_issuer_without_audience_is_refused() -> None:
    with pytest.raises(ValueError, match="audience is required"):
        settings_with(mode="oidc", issuers=[{"issuer": "https://idp.example.org"}])


@pytest.mark.parametrize("alg", ["none", "HS256", "HS512"])
def test_symmetric_and_none_algorithms_are_refused(alg: str) -> None:
    with pytest.raises(ValueError, match="algorithms must be among"):
        settings_with(
            mode="oidc", issuers=[{"issuer": "https://idp.example.org", "audience": "a", "algorithms": [alg]}]
        )


def test_a_username_with_a_colon_is_refused() -> None:
    with pytest.raises(ValueError, match="':'"):
        settings_with(mode="basic", users=[{"username": "a:b", "password_hash": cheap_hash("p")}])


def test_legacy_basic_auth_with_a_hash_becomes_an_admin_user() -> None:
    settings = Settings.model_validate(
        {"basic_auth": {"enable": True, "username": "old", "password_hash": cheap_hash("p")}}
    )
    auth = effective_auth_settings(settings)
    assert auth.mode == ["basic"]
    assert [(u.username, u.admin) for u in auth.users] == [("old", True)]


def test_legacy_oauth_needs_the_issuer_and_audience() -> None:
    with pytest.raises(ValueError, match="oauth.issuer"):
        Settings.model_validate({"oauth": {"enable": True}})


def test_legacy_oauth_adds_its_issuer_to_the_allowlist() -> None:
    settings = Settings.model_validate(
        {"oauth": {"enable": True, "issuer": "https://idp.example.org", "audience": "tesp"}}
    )
    auth = effective_auth_settings(settings)
    assert auth.mode == ["oidc"]
    assert [(i.issuer, i.audience) for i in auth.issuers] == [("https://idp.example.org", ["tesp"])]
