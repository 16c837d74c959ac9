"""Modules that used to import each other (driver <-> engine, config <-> auth) import in any order,
each in a fresh interpreter: no order-dependent partial-module errors."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

MODULES = (
    "tesp_api.config.settings",
    "tesp_api.auth.effective",
    "tesp_api.engine.driver",
    "tesp_api.engine.engine",
)


@pytest.mark.parametrize("first,second", list(itertools.permutations(MODULES, 2)))
def test_modules_import_in_either_order_and_settings_validate(first: str, second: str) -> None:
    code = (
        f"import {first}, {second}\n"
        "from tesp_api.config.settings import Settings\n"
        "Settings.model_validate({'auth': {'mode': ['none']}})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
