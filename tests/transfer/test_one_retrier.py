"""One retrier per layer, from tenacity: no hand-written retry loops in the transfer layer or the
Pulsar REST client (issue 12: three layers of hand-written loops nested, and their deadlines
added up). A loop with a sleep or a counted attempt loop is what such a retrier looks like."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "tesp_api"
FILES = sorted(
    [*(ROOT / "transfer").glob("*.py"), ROOT / "pulsar" / "rest.py", ROOT / "pulsar" / "factory.py"]
)
HAND_WRITTEN = [
    re.compile(r"^\s*for \w*(attempt|tr[iy]\w*) in range\(", re.MULTILINE),  # for attempt in range(n): ...
    re.compile(r"await asyncio\.sleep\("),  # a backoff sleep
    re.compile(r"^\s*while True:", re.MULTILINE),
]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_hand_written_retry_loop(path: Path) -> None:
    text = path.read_text()
    found = [p.pattern for p in HAND_WRITTEN if p.search(text)]
    assert not found, f"{path.name}: {found}; retry with tenacity (see transfer/mux.py _retrying)"


def test_the_retriers_are_tenacitys() -> None:
    assert "AsyncRetrying" in (ROOT / "transfer" / "mux.py").read_text()
    assert "AsyncRetrying" in (ROOT / "pulsar" / "retrying.py").read_text()
