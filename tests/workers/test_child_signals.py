"""A forked api.workers child must not keep the parent's SIGTERM handler.

The parent's handler only sets the parent's own stop flag. A child inherits it across fork, so a
parent-death SIGTERM arriving before uvicorn (or the engine) installs its handlers would be
swallowed and the child would outlive the parent as an orphan. Real fork, real signals."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from typing import Any

from tesp_api.workers import _die_with_parent


def _child_waits_for_a_term(ready: Any) -> None:
    _die_with_parent()
    ready.set()
    time.sleep(60)  # no handler of its own yet: as a child before uvicorn starts
    os._exit(3)  # reached only if the SIGTERM was swallowed


def test_a_child_killed_before_it_has_its_own_handlers_dies_of_sigterm() -> None:
    ctx = multiprocessing.get_context("fork")
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)  # the parent's kind of handler
    try:
        ready = ctx.Event()
        child = ctx.Process(target=_child_waits_for_a_term, args=(ready,))
        child.start()
        assert ready.wait(30)
        assert child.pid is not None
        os.kill(child.pid, signal.SIGTERM)
        child.join(30)
        if child.is_alive():
            child.kill()
            child.join(5)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert child.exitcode == -signal.SIGTERM
