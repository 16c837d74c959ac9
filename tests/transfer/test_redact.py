"""redact_url: what a log line or a client may see of a transfer URL."""

from tesp_api.transfer.errors import TransferError
from tesp_api.transfer.redact import redact_url, scrub


def test_password_in_userinfo_is_removed() -> None:
    assert redact_url("ftp://alice:hunter22@ftp.example.org/data/x") == "ftp://***@ftp.example.org/data/x"


def test_query_of_signed_url_is_removed() -> None:
    url = "https://bucket.s3.amazonaws.com/k?X-Amz-Signature=abc123&X-Amz-Credential=AKIA"
    assert redact_url(url) == "https://bucket.s3.amazonaws.com/k?***"


def test_fragment_is_removed() -> None:
    assert "tok" not in redact_url("https://h/x#access_token=tok")


def test_plain_path_is_kept() -> None:
    assert redact_url("/data/in/file.txt") == "/data/in/file.txt"


def test_url_without_secrets_is_unchanged() -> None:
    assert redact_url("s3://bucket/key/a.txt") == "s3://bucket/key/a.txt"


def test_url_with_empty_host_keeps_its_slashes() -> None:
    assert redact_url("file:///data/x?y=1") == "file:///data/x?***"


def test_scrub_replaces_known_secrets() -> None:
    assert scrub("login alice/hunter22 failed", ["hunter22", None]) == "login alice/*** failed"


def test_transfer_error_message_names_the_redacted_url() -> None:
    error = TransferError("https://u:pw-secret@h/x?sig=s1gn", "not found (HTTP 404)", direction="download")
    assert str(error) == "download of https://***@h/x?*** failed: not found (HTTP 404)"
