"""The job script's packed logs ride on its stdout (Pulsar's final status carries it), so the
engine needs no download for small results; anything not whole there falls back to the download."""

from __future__ import annotations

import base64
import gzip
from pathlib import Path

from tesp_api.engine.job_script import INLINE_META_BEGIN, INLINE_META_END, META_TAR
from tesp_api.engine.results import inline_meta, read_results
from tests.engine.test_job_script import run_job


def _inline(stdout: str) -> bytes | None:
    return inline_meta(stdout, INLINE_META_BEGIN, INLINE_META_END)


def test_the_script_prints_the_same_logs_it_packs(tmp_path: Path) -> None:
    proc, job, _task = run_job(
        tmp_path, {"executors": [{"image": "alpine", "command": ["sh", "-c", "echo hi; exit 3"]}]}
    )
    packed = _inline(proc.stdout)
    assert packed == (job / "working" / META_TAR).read_bytes()
    log = read_results(packed, 1).executor_logs[0]
    assert (log.stdout, log.exit_code) == ("hi\n", 3)


def test_executor_output_never_reaches_the_script_stdout(tmp_path: Path) -> None:
    fake = f"{INLINE_META_BEGIN}\n{base64.b64encode(gzip.compress(b'x')).decode()}\n{INLINE_META_END}"
    proc, _job, _task = run_job(tmp_path, {"executors": [{"image": "alpine", "command": ["echo", fake]}]})
    assert read_results(_inline(proc.stdout) or b"", 1).executor_logs[0].stdout == fake + "\n"


def test_a_cut_or_garbled_block_means_download() -> None:
    good = base64.b64encode(gzip.compress(b"tar bytes")).decode()
    assert _inline(f"{INLINE_META_BEGIN}\n{good}\n{INLINE_META_END}\n") == b"tar bytes"
    assert _inline("") is None
    assert _inline(f"{INLINE_META_BEGIN}\n{good[:20]}..{good[-20:]}\n{INLINE_META_END}\n") is None
    assert _inline(f"{INLINE_META_BEGIN}\n{good}\n") is None
    assert _inline(f"{INLINE_META_BEGIN}\n{good[:-4]}\n{INLINE_META_END}\n") is None
