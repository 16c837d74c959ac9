"""``pulsar-serve`` with Pulsar's job script started through its interpreter, not exec'd: no "Text file busy".

Why (pulsar-app 0.16, read off pulsar/managers/base/directory.py and unqueued.py): to start a job,
Pulsar writes ``<job>/command.sh`` (open, write, close, chmod) in the thread that handles the submit,
then a worker thread runs ``Popen(<path>, shell=True)``, i.e. ``/bin/sh -c <path>``, and the shell
``execve``\\ s the file. Meanwhile any other thread of the same process may ``fork`` (another job's
``Popen``): the child holds a copy of every open descriptor, the one still writing another job's
``command.sh`` included, until it reaches its own ``exec``. A script some process holds open for
writing cannot be executed: the shell fails with ETXTBSY, ``command.sh: Text file busy``, exit
126, the job never ran and the task ended SYSTEM_ERROR (about 1 in 300 tasks in the 200-300 task
bursts, docs/benchmarks.md). Our own runner is already safe from it (``python tes_runner.py``: read, never exec'd).

The fix here: every job's ``command.sh`` is started as ``<its #! interpreter> <path>``; the
interpreter reads the script as a file, which no writer anywhere can make fail, so the race is
gone whatever else forks. Nothing else about the job changes (same interpreter, cwd, environment,
process group). :func:`install` patches ``pulsar.managers.unqueued.execute`` (the one function
every ``queued_python``/``unqueued`` launch goes through) before gunicorn forks its workers, so they
inherit it; it refuses to start on a Pulsar whose ``execute`` is not the function it knows.

Two entry points, both patched in-process before Pulsar starts its manager threads:

* ``python -m tesp_api.pulsar.serve [pulsar-serve args]``: REST, ``pulsar-serve`` (gunicorn);
* ``python -m tesp_api.pulsar.serve --pulsar-main [pulsar-main args]``: AMQP (or REST without
  gunicorn), ``pulsar-main`` (its ``-d`` daemon mode forks after the patch, which the child keeps).

``tesp_api.local.LocalPulsar`` (``tesp-api local``, the test suite, the benchmarks), the AMQP test
Pulsar (tests/services/pulsar_amqp.py) and the docker/pulsar image (both variants: the file is
copied alone, it needs only the standard library and pulsar-app) run Pulsar this way. An
operator's own Pulsar started otherwise keeps the race (``benchmarks/bench_text_busy.py`` counts
it); the engine then submits a job that failed so again (tesp_api/engine/exec_race.py, docs/runtimes.md).
"""

from __future__ import annotations

import inspect
import os
import shlex
import sys
from collections.abc import Callable
from typing import IO, Any

JOB_SCRIPT = "command.sh"  # pulsar/managers/base/directory.py _write_job_script
EXPECTED_PARAMETERS = ["command_line", "working_directory", "stdout", "stderr"]
_FALLBACK_SHELL = "/bin/sh"
MAIN_FLAG = "--pulsar-main"  # first argument: run pulsar-main instead of pulsar-serve

__all__ = ["JOB_SCRIPT", "MAIN_FLAG", "install", "main", "through_interpreter"]


def _interpreter(path: str) -> list[str]:
    """The script's ``#!`` line as argv words (Pulsar's template writes ``#!/bin/bash``)."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline(4096)
    except OSError:
        return [_FALLBACK_SHELL]
    if not first.startswith(b"#!"):
        return [_FALLBACK_SHELL]
    words = first[2:].decode(errors="replace").split()
    return words or [_FALLBACK_SHELL]


def through_interpreter(command_line: str) -> str:
    """``command_line`` as Pulsar's shell will run it: a bare path to a job's ``command.sh`` becomes
    ``<interpreter> <path>`` (read, not exec'd); anything else is returned unchanged."""
    path = command_line.strip()
    if os.path.basename(path) != JOB_SCRIPT or not os.path.isabs(path) or not os.path.isfile(path):
        return command_line
    return " ".join(shlex.quote(w) for w in [*_interpreter(path), path])


def install() -> None:
    """Patch Pulsar's ``unqueued.execute`` (idempotent). Raises RuntimeError on a Pulsar whose
    ``execute`` has another signature: starting unpatched would bring the race back unseen."""
    from pulsar.managers import unqueued  # type: ignore[import-untyped]

    current: Callable[..., Any] = unqueued.execute
    if getattr(current, "_tesp_through_interpreter", False):
        return
    if list(inspect.signature(current).parameters) != EXPECTED_PARAMETERS:
        raise RuntimeError(
            f"pulsar.managers.unqueued.execute{inspect.signature(current)} is not the function "
            "tesp_api.pulsar.serve knows: update it for this pulsar-app version"
        )

    def execute(command_line: str, working_directory: str, stdout: IO[Any], stderr: IO[Any]) -> Any:
        return current(through_interpreter(command_line), working_directory, stdout, stderr)

    execute._tesp_through_interpreter = True  # type: ignore[attr-defined]
    unqueued.execute = execute


def main(argv: list[str] | None = None) -> int:
    """``pulsar-serve`` (same arguments), or with :data:`MAIN_FLAG` first ``pulsar-main`` (its
    arguments after the flag), with :func:`install` applied first."""
    args = sys.argv[1:] if argv is None else list(argv)
    install()
    if args[:1] == [MAIN_FLAG]:
        from pulsar.main import main as run  # type: ignore[import-untyped]

        sys.argv[0], args = "pulsar-main", args[1:]
    else:
        from pulsar.scripts.serve import main as run  # type: ignore[import-untyped]

        sys.argv[0] = "pulsar-serve"
    result = run(args)
    return int(result or 0)


def _drop_own_directory() -> None:
    """Run as a file (``python serve.py``), Python puts this file's directory first on sys.path;
    from a tesp-api checkout that is tesp_api/pulsar/, whose ``amqp.py`` would shadow py-amqp and
    make kombu, hence pulsar-main, fail ("kombu dependency unavailable"). Pulsar needs none of it."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]


if __name__ == "__main__":
    if not __package__:  # run as a file, not with -m
        _drop_own_directory()
    sys.exit(main())
