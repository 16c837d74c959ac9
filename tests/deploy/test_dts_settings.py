"""The data-transfer example: docker/dts/example-task.json and tesp-api.secrets.toml.example agree
with the DTS compose stack, and tesp-api accepts the task with those settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tesp_api.api.url_checks import url_checkers
from tesp_api.config import load_settings
from tesp_api.config.settings import Settings
from tesp_api.tes.validate import ValidationLimits, validate_task
from tests.deploy import compose
from tests.deploy.conftest import DTS_ENV

DTS_DIR = compose.REPO / "docker" / "dts"
TASK = json.loads((DTS_DIR / "example-task.json").read_text())


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """dev-docker settings with the example secrets file beside settings.toml, as the docs say."""
    import os

    for name in list(os.environ):
        if name.startswith("TESP_API_") or name == "FASTAPI_PROFILE":
            monkeypatch.delenv(name)
    shutil.copy(compose.REPO / "settings.toml", tmp_path / "settings.toml")
    shutil.copy(DTS_DIR / "tesp-api.secrets.toml.example", tmp_path / ".secrets.toml")
    return load_settings(tmp_path / "settings.toml", profile="dev-docker")


def dts_services() -> dict[str, dict]:  # type: ignore[type-arg]
    return compose.load(compose.DTS_FILE, DTS_ENV)["services"]  # type: ignore[no-any-return]


def test_the_example_task_is_accepted_with_the_example_settings(settings: Settings) -> None:
    check_input, check_output = url_checkers(settings.transfer)
    validated = validate_task(
        TASK, ValidationLimits(), check_input_url=check_input, check_output_url=check_output
    )
    assert {urlsplit(i.url or "").scheme for i in validated.task.inputs or []} == {"s3", "ftp", "http"}
    assert {urlsplit(o.url).scheme for o in validated.task.outputs or []} == {"s3", "ftp", "http"}


def test_the_example_urls_name_the_dts_services_and_their_container_ports() -> None:
    services = dts_services()
    ports = {
        "dts-ftp": int(compose.environment(services["dts-ftp"])["DTS_FTP_PORT"]),
        "dts-http": int(compose.environment(services["dts-http"])["DTS_HTTP_PORT"]),
    }
    for entry in TASK["inputs"] + TASK["outputs"]:
        url = urlsplit(entry["url"])
        if url.scheme in ("ftp", "http"):
            assert url.hostname in ports and url.port == ports[url.hostname], entry["url"]
        else:
            assert url.hostname == compose.environment(services["dts-seed"])["DTS_S3_BUCKET"], entry["url"]


def test_the_example_settings_name_the_dts_services(settings: Settings) -> None:
    services = dts_services()
    (s3,) = settings.transfer.s3
    endpoint = urlsplit(s3.endpoint_url or "")
    assert endpoint.hostname == "dts-minio"
    assert f":{endpoint.port}" in services["dts-minio"]["command"]
    assert compose.environment(services["dts-seed"])["DTS_S3_ENDPOINT"] == s3.endpoint_url
    assert [c.host for c in settings.transfer.ftp] == [
        compose.environment(services["dts-seed"])["DTS_FTP_HOST"]
    ]
    (http,) = settings.transfer.http
    assert f"http://{http.host}" == compose.environment(services["dts-seed"])["DTS_HTTP_URL"]
    assert http.bearer_token is not None


def test_the_example_settings_hold_placeholders_not_secrets(settings: Settings) -> None:
    (s3,) = settings.transfer.s3
    (ftp,) = settings.transfer.ftp
    (http,) = settings.transfer.http
    for secret in (s3.access_key_id, s3.secret_access_key, ftp.password, http.bearer_token):
        assert secret is not None and secret.get_secret_value().startswith("<DTS_")
