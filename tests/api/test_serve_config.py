"""The uvicorn options of every serve mode (tesp_api.service.uvicorn_config), which the API benchmark's
bare app uses too: the access log is on by default and ``api.access_log = false`` turns it off."""

from __future__ import annotations

from tesp_api.service import uvicorn_config
from tests.api.conftest import make_settings


def test_access_log_is_on_by_default() -> None:
    assert uvicorn_config(object(), make_settings()).access_log is True


def test_api_access_log_false_turns_uvicorns_access_log_off() -> None:
    assert uvicorn_config(object(), make_settings(api={"access_log": False})).access_log is False


def test_serve_options_keep_the_address_proxy_and_server_header_settings() -> None:
    config = uvicorn_config(object(), make_settings(api={"host": "127.0.0.2", "port": 8123}))
    assert (config.host, config.port, config.proxy_headers, config.server_header) == (
        "127.0.0.2",
        8123,
        True,
        False,
    )
