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


# (what breaks the rule, the module it goes in, the import added, lines the gate must print)
VIOLATIONS = {
    "the_engine_importing_fastapi": (
        "tesp_api.engine.driver",
        "import fastapi",
        ["tesp_api.engine is not allowed to import fastapi", "tesp_api.engine.driver -> fastapi"],
    ),
    "the_api_importing_the_engine": (
        "tesp_api.api.admin",
        "from tesp_api.engine.routing import Router",
        ["tesp_api.api is not allowed to import tesp_api.engine"],
    ),
    "the_domain_importing_an_adapter": (
        "tesp_api.tes.states",
        "from tesp_api.store.sqlite import SqliteTaskStore",
        ["tesp_api.tes is not allowed to import tesp_api.store"],
    ),
    # engine.context is imported by engine.driver; importing driver back closes a cycle.
    "an_import_cycle_between_modules": (
        "tesp_api.engine.context",
        "import tesp_api.engine.driver",
        ["No cycles are allowed in tesp_api.engine"],
    ),
}


@pytest.mark.parametrize("violation", list(VIOLATIONS))
def test_the_gate_refuses(violation: str, copy: Path) -> None:
    module, line, messages = VIOLATIONS[violation]
    add_import(copy, module, f"{line}  # noqa")
    done = lint(copy)
    assert done.returncode == 1, done.stdout
    for message in messages:
        assert message in done.stdout
