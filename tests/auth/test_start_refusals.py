"""`tesp-api serve` refuses to start with settings that would put a plain password in use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def serve_with(tmp_path: Path, settings_text: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "settings.toml").write_text(settings_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESP_API") and k != "FASTAPI_PROFILE"}
    env["TESP_API_ENGINE__ENABLED"] = "false"
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "tesp-api"),
            "serve",
            "--settings",
            "settings.toml",
            "--port",
            "0",
        ],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_legacy_plain_password_stops_the_start_with_the_way_to_hash_it(tmp_path: Path) -> None:
    done = serve_with(
        tmp_path, '[default.basic_auth]\nenable = true\nusername = "admin"\npassword = "hunter2"\n'
    )
    assert done.returncode == 2
    assert "tesp-api hash-password" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    "auth",
    [
        '[default.auth]\nmode = "basic"\n[[default.auth.users]]\nusername = "a"\npassword_hash = "hunter2"\n',
        '[default.auth]\nmode = "oidc"\n[[default.auth.issuers]]\nissuer = "https://idp.example.org"\n',
    ],
    ids=["plain-password-as-hash", "issuer-without-audience"],
)
def test_unsafe_auth_settings_stop_the_start(tmp_path: Path, auth: str) -> None:
    done = serve_with(tmp_path, auth)
    assert done.returncode == 2
    assert "invalid settings" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout
