"""Container HEALTHCHECK without curl (the slim Python images have none): exit 0 when the URL answers.

Usage: python healthcheck.py URL [TIMEOUT_SECONDS]

Any HTTP answer below 500 means the server is up and serving: 401/403 is what a healthy tesp-api
answers when service-info is not public, and what a Pulsar with a private_token answers to /healthz
without the token. Connection errors, timeouts and 5xx mean unhealthy (exit 1). Query strings are
never printed, so a token in the URL does not end up in `docker inspect` health logs.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit


def probe(url: str, timeout: float) -> tuple[bool, str]:
    """(healthy, short reason) for one GET of ``url``."""
    where = urlsplit(url)._replace(query="", fragment="").geturl()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return True, f"{where}: HTTP {answer.status}"
    except urllib.error.HTTPError as err:
        return err.code < 500, f"{where}: HTTP {err.code}"
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        return False, f"{where}: {type(err).__name__}: {reason}"


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        sys.stderr.write("usage: healthcheck.py URL [TIMEOUT_SECONDS]\n")
        return 2
    timeout = float(argv[2]) if len(argv) == 3 else 4.0
    healthy, reason = probe(argv[1], timeout)
    (sys.stdout if healthy else sys.stderr).write(reason + "\n")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
