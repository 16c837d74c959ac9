"""check_input_url / check_output_url: what the API turns into 400 at task creation."""

from pathlib import Path

from tesp_api.config.settings import TransferSettings
from tesp_api.tes.models import TesFileType
from tesp_api.transfer.validate import check_input_url, check_output_url


def settings(allowed: Path | None = None, **kw: object) -> TransferSettings:
    return TransferSettings.model_validate({"allowed_dirs": [str(allowed)] if allowed else [], **kw})


def test_remote_urls_of_every_scheme_are_accepted() -> None:
    for url in ["http://h/x", "https://h:8443/x", "ftp://u:p@h/x/y", "s3://bucket/key"]:
        assert check_input_url(url, settings()) is None, url
        assert check_output_url(url, settings()) is None, url


def test_file_url_inside_allowed_dir_is_accepted(tmp_path: Path) -> None:
    assert check_input_url(f"file://{tmp_path}/a.txt", settings(tmp_path)) is None


def test_plain_absolute_path_inside_allowed_dir_is_accepted(tmp_path: Path) -> None:
    assert check_output_url(f"{tmp_path}/new/dir/out.txt", settings(tmp_path)) is None


def test_file_url_outside_allowed_dirs_is_rejected(tmp_path: Path) -> None:
    error = check_input_url("file:///etc/passwd", settings(tmp_path))
    assert error is not None and "outside" in error


def test_dot_dot_escape_is_rejected(tmp_path: Path) -> None:
    assert check_input_url(f"{tmp_path}/../../etc/passwd", settings(tmp_path)) is not None


def test_symlink_escape_is_rejected(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "link").symlink_to("/etc")
    assert check_input_url(f"file://{allowed}/link/passwd", settings(allowed)) is not None


def test_file_urls_are_rejected_when_no_dir_is_allowed() -> None:
    assert check_input_url("file:///tmp/x", settings()) is not None


def test_file_url_naming_a_host_is_rejected(tmp_path: Path) -> None:
    assert check_input_url(f"file://otherhost{tmp_path}/x", settings(tmp_path)) is not None


def test_unsupported_scheme_is_rejected() -> None:
    error = check_input_url("gs://bucket/x", settings())
    assert error is not None and "gs" in error


def test_scheme_disabled_in_settings_is_rejected() -> None:
    assert check_input_url("ftp://h/x", settings(schemes=["http", "https"])) is not None


def test_relative_path_is_rejected() -> None:
    assert check_input_url("data/x.txt", settings()) is not None


def test_malformed_urls_are_rejected() -> None:
    for url in ["http://", "http://h:99999/x", "s3://bucket", "s3:///key", "ftp://h/", "", " http://h/x"]:
        assert check_input_url(url, settings()) is not None, url


def test_http_directory_input_is_rejected() -> None:
    error = check_input_url("https://h/dir/", settings(), TesFileType.DIRECTORY)
    assert error is not None and "DIRECTORY" in error


def test_error_message_does_not_repeat_secrets() -> None:
    error = check_input_url("gs://user:pa55word@h/x?sig=T0KEN", settings())
    assert error is not None and "pa55word" not in error and "T0KEN" not in error
