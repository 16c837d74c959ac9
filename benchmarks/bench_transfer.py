"""Data-transfer benchmark: TransferMux against plain boto3, same moto S3 server, same run.

Stages a file (1 GiB by default) from S3 to local disk and copies it back out to S3, once through
``TransferMux`` (``s3://`` download + upload, default transfer settings) and once with plain
boto3 ``download_file`` + ``upload_file`` (default TransferConfig). Prints throughput, the mux as
a ratio of the plain copy (goal >= 70 %), and the process's RSS growth during each phase, sampled
every 20 ms from /proc/self/statm (goal: under 100 MiB for the mux).

Everything runs on 127.0.0.1 (moto_server on a free port, stopped by PID) in a temporary
directory that is deleted at the end. Prints a Markdown block for docs/benchmarks.md.

    .venv/bin/python benchmarks/bench_transfer.py [--size-mib 1024] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tesp_api.config.settings import S3Credential, TransferSettings
from tesp_api.transfer.mux import TransferMux
from tests.services.s3_server import S3Server, s3_server

MIB = 1024 * 1024
BUCKET = "bench"
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


@contextmanager
def rss_growth() -> Iterator[Callable[[], int]]:
    """Peak RSS above the value at entry, sampled every 20 ms by a thread, while the block runs."""
    start = rss()
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield lambda: peak[0] - start
    finally:
        stop.set()
        sampler.join()
        peak[0] = max(peak[0], rss())


def make_file(path: Path, size: int) -> None:
    block = os.urandom(MIB)
    with open(path, "wb") as out:
        out.writelines(block for _ in range(size // MIB))


def plain_copy(server: S3Server, local: Path) -> None:
    client = server.client()
    client.download_file(BUCKET, "source.bin", str(local))
    client.upload_file(str(local), BUCKET, "plain-out.bin")
    client.close()


async def mux_copy(server: S3Server, local: Path) -> None:
    settings = TransferSettings(
        s3=[
            S3Credential(
                endpoint_url=server.endpoint_url,
                region=server.region,
                access_key_id=server.access_key,
                secret_access_key=server.secret_key,
            )
        ]
    )
    mux = TransferMux(settings)
    try:
        await mux.download(f"s3://{BUCKET}/source.bin", local)
        await mux.upload(local, f"s3://{BUCKET}/mux-out.bin")
    finally:
        await mux.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    size = args.size_mib * MIB
    plain_times: list[float] = []
    mux_times: list[float] = []
    plain_rss: list[int] = []
    mux_rss: list[int] = []
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp, s3_server() as server:
        work = Path(tmp)
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        make_file(work / "source.bin", size)
        client.upload_file(str(work / "source.bin"), BUCKET, "source.bin")
        (work / "source.bin").unlink()
        for _ in range(args.rounds):
            # Alternate which goes first so neither always meets a warmer server.
            for name in ("mux", "plain") if _ % 2 == 0 else ("plain", "mux"):
                local = work / f"{name}.bin"
                with rss_growth() as growth:
                    started = time.perf_counter()
                    if name == "mux":
                        asyncio.run(mux_copy(server, local))
                    else:
                        plain_copy(server, local)
                    elapsed = time.perf_counter() - started
                assert local.stat().st_size == size
                local.unlink()
                (mux_times if name == "mux" else plain_times).append(elapsed)
                (mux_rss if name == "mux" else plain_rss).append(growth())
    moved = 2 * size / MIB  # down and up
    plain_best, mux_best = min(plain_times), min(mux_times)
    print(f"### S3 -> local -> S3, {args.size_mib} MiB, moto on 127.0.0.1 (best of {args.rounds})\n")
    print("| copy | time (s) | throughput (MiB/s, down+up) | peak RSS growth (MiB) |")
    print("|---|---|---|---|")
    print(f"| plain boto3 | {plain_best:.1f} | {moved / plain_best:.0f} | {max(plain_rss) / MIB:.0f} |")
    print(f"| TransferMux | {mux_best:.1f} | {moved / mux_best:.0f} | {max(mux_rss) / MIB:.0f} |")
    print(f"\nTransferMux throughput = {100 * plain_best / mux_best:.0f} % of plain boto3 (goal >= 70 %);")
    print(f"its peak RSS growth = {max(mux_rss) / MIB:.0f} MiB (goal < 100 MiB).")


if __name__ == "__main__":
    main()
