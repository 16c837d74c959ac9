"""schemathesis against the document a real ``tesp-api serve`` serves (engine off, SQLite): every
answer to generated (valid and invalid) requests is no server error and conforms to the document:
documented status, content type and schema. Bounded: at most MAX_EXAMPLES cases per operation and
phase, a fixed seed, no example database (nothing written outside the test's directory).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services.tesp_serve import running_tesp_serve

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 50
CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_tesp_serve(tmp_path_factory.mktemp("tesp")) as served:
        yield served


def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_document(
    url: str, tmp_path: Path
) -> None:
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if cli is None:
        pytest.skip("schemathesis is not installed (pip install schemathesis)")
    done = subprocess.run(
        [
            cli, "run", f"{url}/openapi.json",
            "--checks", CHECKS,
            "--max-examples", str(MAX_EXAMPLES),
            "--seed", "14",
            "--generation-database", "none",
            # One worker: schemathesis' threads trip CPython 3.11's "AST constructor recursion depth
            # mismatch" (ast compiled in two threads at once; seen once here in CI-like runs).
            "--workers", "1",
            "--request-timeout", "30",
            "--no-color",
        ],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]
    assert "passed" in done.stdout and "failed" not in done.stdout.split("SUMMARY")[-1], done.stdout[-5000:]
