"""``preexec_fn`` for service processes a test starts: the child gets SIGTERM when the test process dies.

A test run killed from outside (CI's time limit, ``timeout``, Ctrl-C twice) runs no fixture finalizer,
so a server it started in its own session would live on, holding its port and state directory.
Linux's parent-death signal (prctl PR_SET_PDEATHSIG) survives ``exec`` (bash -> scripts/run.sh ->
tesp-api local keep it), so the server still stops its own children (Pulsar) on that SIGTERM.

prctl is looked up here, at import, so that the child (between fork and exec, where a multi-threaded
parent's locks may be held) only makes the one C call: that is what makes this ``preexec_fn`` safe.
"""

from __future__ import annotations

import ctypes
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def _find_prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _find_prctl()


def die_with_parent() -> None:
    """Runs in the child between fork and exec; a no-op where prctl is unavailable."""
    if _PRCTL is None:
        return
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)
