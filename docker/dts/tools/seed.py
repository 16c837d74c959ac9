"""Put the example input files into the three data-transfer test servers (the `dts-seed` service).

Creates the S3 bucket and writes ``inputs/hello.txt`` to S3, FTP and HTTP, so that the example
task in docs/deploy.md has something to read from each scheme. Waits for each server (they start
in parallel), then exits 0; any failure exits 1 with the reason. Safe to run again.

Environment (all set by docker/dts/docker-compose.yaml from docker/dts/.env):
  DTS_S3_ENDPOINT, DTS_S3_ACCESS_KEY, DTS_S3_SECRET_KEY, DTS_S3_BUCKET (default tesp)
  DTS_FTP_HOST, DTS_FTP_PORT (2121), DTS_FTP_USER, DTS_FTP_PASSWORD
  DTS_HTTP_URL (e.g. http://dts-http:8000), DTS_HTTP_TOKEN
  DTS_SEED_TIMEOUT (seconds to wait for each server, default 60)
"""

from __future__ import annotations

import ftplib
import io
import logging
import os
import sys
import time
import urllib.request
from collections.abc import Callable

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger("dts-seed")

SAMPLE_NAME = "inputs/hello.txt"
SAMPLE = b"hello from the tesp-api data-transfer test stack\n"


def env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if not value:
        raise SystemExit(f"dts-seed: {name} is not set")
    return value


def with_retries(what: str, action: Callable[[], None], timeout: float) -> None:
    """Run ``action`` until it succeeds or ``timeout`` seconds passed (servers start in parallel)."""
    deadline = time.monotonic() + timeout
    delay = 0.2
    while True:
        try:
            action()
            log.info("%s: done", what)
            return
        except (OSError, ftplib.Error, BotoCoreError, ClientError) as exc:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{what}: {type(exc).__name__}: {exc}") from None
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def seed_s3(endpoint: str, access_key: str, secret_key: str, bucket: str) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    try:
        s3.create_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in (
            "BucketAlreadyOwnedByYou",
            "BucketAlreadyExists",
        ):
            raise
    s3.put_object(Bucket=bucket, Key=SAMPLE_NAME, Body=SAMPLE)


def seed_ftp(host: str, port: int, user: str, password: str) -> None:
    with ftplib.FTP() as ftp:
        ftp.connect(host, port, timeout=10)
        ftp.login(user, password)
        directory, _, name = SAMPLE_NAME.rpartition("/")
        try:
            ftp.mkd(directory)
        except ftplib.error_perm:
            pass  # exists already
        ftp.storbinary(f"STOR {directory}/{name}", io.BytesIO(SAMPLE))


def seed_http(base_url: str, token: str) -> None:
    request = urllib.request.Request(
        f"{base_url.rstrip('/')}/{SAMPLE_NAME}",
        data=SAMPLE,
        method="PUT",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    timeout = float(os.environ.get("DTS_SEED_TIMEOUT", "60"))
    jobs: list[tuple[str, Callable[[], None]]] = [
        (
            "s3",
            lambda: seed_s3(
                env("DTS_S3_ENDPOINT"),
                env("DTS_S3_ACCESS_KEY"),
                env("DTS_S3_SECRET_KEY"),
                env("DTS_S3_BUCKET", "tesp"),
            ),
        ),
        (
            "ftp",
            lambda: seed_ftp(
                env("DTS_FTP_HOST"),
                int(env("DTS_FTP_PORT", "2121")),
                env("DTS_FTP_USER"),
                env("DTS_FTP_PASSWORD"),
            ),
        ),
        ("http", lambda: seed_http(env("DTS_HTTP_URL"), env("DTS_HTTP_TOKEN"))),
    ]
    try:
        for what, action in jobs:
            with_retries(what, action, timeout)
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
