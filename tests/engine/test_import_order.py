"""Modules that used to import each other (driver <-> engine, config <-> auth) import in any order,
each in a fresh interpreter: no order-dependent partial-module errors."""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
from pathlib import Path

import pytest

import tesp_api.config.settings as settings_module

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


def runtime_imports(source: str) -> set[str]:
    """tesp_api modules a source imports when it runs (``if TYPE_CHECKING:`` blocks left out)."""
    tree = ast.parse(source)
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
        for n in ast.walk(block)
    }
    return {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and node.module
        and node.module.startswith("tesp_api")
        and id(node) not in typing_only
    }


def test_config_uses_only_auth_modules_that_import_no_tesp_api() -> None:
    """No config <-> auth cycle: settings.py uses only stdlib-only leaves of tesp_api.auth."""
    settings_py = Path(settings_module.__file__)
    used = {m for m in runtime_imports(settings_py.read_text()) if m.startswith("tesp_api.auth")}
    assert used == {"tesp_api.auth.passwords", "tesp_api.auth.urls"}
    for module in used:
        source = (settings_py.parents[1] / module.split(".")[-2] / f"{module.split('.')[-1]}.py").read_text()
        assert runtime_imports(source) == set(), module
