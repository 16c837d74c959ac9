"""Password hashes and `tesp-api hash-password`; settings never accept a plain password."""

from __future__ import annotations

import io

import pytest

from tesp_api.auth.passwords import InvalidPasswordHash, hash_password, main, parse_hash, verify_password
from tesp_api.config.settings import Settings
from tests.auth.conftest import cheap_hash


def test_a_hash_verifies_its_password_only() -> None:
    hashed = parse_hash(cheap_hash("s3cret"))
    assert verify_password("s3cret", hashed)
    assert not verify_password("s3cret ", hashed)


def test_hashes_are_salted_and_self_describing() -> None:
    first, second = cheap_hash("same"), cheap_hash("same")
    assert first != second
    assert first.startswith("$scrypt$ln=10,r=8,p=1$")


def test_the_default_cost_is_memory_hard() -> None:
    assert parse_hash(hash_password("x")).log2_n >= 15


@pytest.mark.parametrize(
    "text",
    [
        "plain-password",
        "$scrypt$ln=10$abc",
        "$bcrypt$x$y$z",
        "$scrypt$ln=40,r=8,p=1$YQ$YWFhYWFhYWFhYWFhYWFhYQ",
    ],
)
def test_text_that_is_not_a_usable_hash_is_refused(text: str) -> None:
    with pytest.raises(InvalidPasswordHash):
        parse_hash(text)


def test_hash_password_command_reads_stdin_and_prints_a_hash() -> None:
    out = io.StringIO()
    assert main(["--cost", "10"], stdin=io.StringIO("pa:ss wörd\n"), stdout=out) == 0
    printed = out.getvalue().strip()
    assert verify_password("pa:ss wörd", parse_hash(printed))
    assert "wörd" not in printed


def test_hash_password_command_refuses_an_empty_password() -> None:
    out = io.StringIO()
    assert main(["--cost", "10"], stdin=io.StringIO("\n"), stdout=out) == 2
    assert out.getvalue() == ""


def test_settings_refuse_a_user_whose_password_hash_is_plain_text() -> None:
    with pytest.raises(ValueError, match="tesp-api hash-password") as info:
        Settings.model_validate(
            {"auth": {"mode": "basic", "users": [{"username": "a", "password_hash": "hunter2"}]}}
        )
    assert "hunter2" not in str(info.value)


def test_legacy_basic_auth_with_a_plain_password_is_refused_with_the_way_to_hash_it() -> None:
    raw = {"basic_auth": {"enable": True, "username": "admin", "password": "hunter2"}}
    with pytest.raises(ValueError, match="hash-password") as info:
        Settings.model_validate(raw)
    assert "hunter2" not in str(info.value)


def test_legacy_basic_auth_that_is_disabled_may_keep_its_old_password() -> None:
    settings = Settings.model_validate({"basic_auth": {"enable": False, "username": "a", "password": "old"}})
    assert settings.auth.mode == ["none"]
