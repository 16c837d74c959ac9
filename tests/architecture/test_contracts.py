"""The architecture gate (import-linter, pyproject.toml's [tool.importlinter]) holds on the code, and
it really refuses what docs/architecture.md forbids: each test breaks one rule in a copy of the
package and runs the real `lint-imports` on it with the project's own contracts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` in ``root`` (a checkout: its pyproject.toml and tesp_api/)."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(root / "pyproject.toml")],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},  # this tesp_api, not the installed checkout
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A copy of the package and its pyproject.toml, to break."""
    shutil.copytree(ROOT / "tesp_api", tmp_path / "tesp_api", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def add_import(root: Path, module: str, line: str) -> None:
    path = root / (module.replace(".", "/") + ".py")
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_code_keeps_every_contract() -> None:
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_the_engine_importing_fastapi_is_refused(copy: Path) -> None:
    add_import(copy, "tesp_api.engine.driver", "import fastapi  # noqa")
    done = lint(copy)
    assert done.returncode == 1
    assert "tesp_api.engine is not allowed to import fastapi" in done.stdout
    assert "tesp_api.engine.driver -> fastapi" in done.stdout


def test_the_api_importing_the_engine_is_refused(copy: Path) -> None:
    add_import(copy, "tesp_api.api.admin", "from tesp_api.engine.routing import Router  # noqa")
    done = lint(copy)
    assert done.returncode == 1
    assert "tesp_api.api is not allowed to import tesp_api.engine" in done.stdout


def test_the_domain_importing_an_adapter_is_refused(copy: Path) -> None:
    add_import(copy, "tesp_api.tes.states", "from tesp_api.store.sqlite import SqliteTaskStore  # noqa")
    done = lint(copy)
    assert done.returncode == 1
    assert "tesp_api.tes is not allowed to import tesp_api.store" in done.stdout


def test_an_import_cycle_between_modules_is_refused(copy: Path) -> None:
    # engine.context is imported by engine.driver; importing driver back closes a cycle.
    add_import(copy, "tesp_api.engine.context", "import tesp_api.engine.driver  # noqa")
    done = lint(copy)
    assert done.returncode == 1
    assert "No cycles are allowed in tesp_api.engine" in done.stdout
