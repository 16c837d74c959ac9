"""``runtime.env`` holds environment variable names (DOCKER_HOST, CONTAINERS_CONF...): the loader
lower-cases setting names, but must keep the case of these keys, or the runtime CLI in the Pulsar
job gets ``docker_host`` and talks to the default socket."""

from __future__ import annotations

from pathlib import Path

import pytest

from tesp_api.config import load_settings
from tesp_api.config.settings import RuntimeSettings

pytestmark = pytest.mark.skipif(
    "env" not in RuntimeSettings.model_fields, reason="no runtime.env setting in this tree"
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("TESP_API") or key in {"FASTAPI_PROFILE", "CONTAINER_TYPE"}:
            monkeypatch.delenv(key)


def test_runtime_env_names_keep_their_case_in_a_settings_file(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(
        '[default.runtime]\ntype = "docker"\n[default.runtime.env]\nDOCKER_HOST = "unix:///d.sock"\n'
    )
    assert load_settings(path).runtime.env == {"DOCKER_HOST": "unix:///d.sock"}


def test_runtime_env_names_keep_their_case_in_an_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TESP_API_RUNTIME__ENV", '{CONTAINERS_CONF="/c.conf"}')
    assert load_settings(tmp_path / "missing.toml").runtime.env == {"CONTAINERS_CONF": "/c.conf"}
