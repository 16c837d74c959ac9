"""Where tesp-api's per-task cost on a real container runtime goes, without Pulsar: one process per run.

bench_engine.py compares whole tasks through Pulsar; this one takes the executor phase apart. Every
case is one process started the way Pulsar starts a job (clean environment, stdin /dev/null, stdout
and stderr to files, its own process group), timed from spawn to reap, with the CPU the process tree
used (``wait4`` rusage: the process and the children it reaped, i.e. the runner, bash and the
docker/podman CLI; not dockerd/containerd, which are the daemon's own cost):

* ``runner``: ``python3 -I -S tes_runner.py tes-job.json`` in a fresh Pulsar-like job directory, with
  the spec tesp-api's job_script.build_job_spec makes for ``{"image": local/busybox:1, "command":
  ["true"]}`` (the executor's ``docker run`` argv, the watchdog, the logs tar, the manifest);
* ``direct``: ``bash job.sh``, job.sh being the same ``docker run`` line (bench_engine's direct side);
* ``runner, no executor``: the same runner with no executor: what the runner costs by itself;
* ``python -I -S -c pass``: the interpreter's start alone;
* ``docker run`` variants (``--runtime docker`` only): the bare ``docker run --rm local/busybox:1 true``
  and that line plus each least-privilege option tesp-api adds, so each option's price is measured.

Rounds alternate the cases (case A, B, C, ... then again), so the machine's load hits every case alike;
medians are printed with the load average at the start and the end.

    .venv/bin/python benchmarks/bench_runtime_overhead.py --runtime docker --rounds 20
    .venv/bin/python benchmarks/bench_runtime_overhead.py --runtime podman --rounds 20
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.runtime_side import private_runtime, real_python, session_cpu

IMAGE = "local/busybox:1"
PATH_PYTHON = (
    shutil.which("python3") or sys.executable
)  # runtime.runner_python's default, as Pulsar's PATH finds it


def spawn_timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of the tree it reaped, exit code) of one run, started like a Pulsar job."""
    out = os.open(cwd / "stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(cwd / "stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    old = os.getcwd()
    os.chdir(cwd)
    try:
        started = time.perf_counter()
        pid = os.posix_spawn(
            argv[0],
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, null, 0),
                (os.POSIX_SPAWN_DUP2, out, 1),
                (os.POSIX_SPAWN_DUP2, err, 2),
            ],
            setpgroup=0,
        )
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - started
    finally:
        os.chdir(old)
        for fd in (out, err, null):
            os.close(fd)
    return wall, usage.ru_utime + usage.ru_stime, os.waitstatus_to_exitcode(status)


class Case:
    def __init__(self, name: str, prepare: Callable[[Path], tuple[list[str], dict[str, str], Path]]) -> None:
        self.name = name
        self.prepare = prepare  # a fresh directory -> (argv, env, cwd); not timed
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.daemon_cpu: list[float] = []


def runner_case(
    runtime: dict[str, Any], python: str, executors: bool = True, watchdog: bool = True
) -> Callable[[Path], Any]:
    from tesp_api.config.settings import RuntimeSettings
    from tesp_api.engine.file_mapper import FileMapper
    from tesp_api.engine.job_script import SCRIPT_NAME, SPEC_NAME, build_job_spec, spec_bytes
    from tesp_api.engine.runner import runner_source
    from tesp_api.engine.runtimes import build_runtime
    from tesp_api.tes.models import TesTask

    settings = RuntimeSettings.model_validate(runtime)
    rt = build_runtime(settings)
    source = runner_source()

    def prepare(d: Path) -> tuple[list[str], dict[str, str], Path]:
        task = TesTask.model_validate({"executors": [{"image": IMAGE, "command": ["true"]}]})
        mapper = FileMapper(task, map_workdirs=rt.needs_workdir_mount)
        spec = build_job_spec(task, d.name, rt, mapper, [], tail_bytes=65536, settings=settings)
        if not executors:
            spec["executors"] = []
        if not watchdog:
            for ex in spec["executors"]:
                ex["cleanup"] = None
        for sub in ("tool_files", "inputs", "working"):
            (d / sub).mkdir(parents=True)
        (d / "tool_files" / SCRIPT_NAME).write_bytes(source)
        (d / "tool_files" / SPEC_NAME).write_bytes(spec_bytes(spec))
        argv = [python, "-I", "-S", str(d / "tool_files" / SCRIPT_NAME), str(d / "tool_files" / SPEC_NAME)]
        return argv, dict(PULSAR_ENV), d / "working"

    return prepare


# What Pulsar's managers give a job (galaxy.util.commands.new_clean_env): HOME, PATH, TMPDIR, LC_CTYPE.
PULSAR_ENV = {k: os.environ[k] for k in ("HOME", "PATH", "TMPDIR") if k in os.environ} | {
    "LC_CTYPE": "C.UTF-8"
}


def shell_case(line: Callable[[str], str], cli_env: dict[str, str]) -> Callable[[Path], Any]:
    bash = shutil.which("bash") or "/bin/bash"
    exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in cli_env.items())

    def prepare(d: Path) -> tuple[list[str], dict[str, str], Path]:
        d.mkdir(parents=True)
        (d / "job.sh").write_text(exports + line(f"tes-{d.name}-0") + "\n")
        return [bash, str(d / "job.sh")], dict(PULSAR_ENV), d

    return prepare


def flag_line(base: str, flag: str) -> Callable[[str], str]:
    def line(name: str) -> str:
        return " ".join(w for w in (base.format(n=name), flag, "--", IMAGE, "true") if w)

    return line


def python_case(python: str) -> Callable[[Path], Any]:
    def prepare(d: Path) -> tuple[list[str], dict[str, str], Path]:
        d.mkdir(parents=True)
        return [python, "-I", "-S", "-c", "pass"], dict(PULSAR_ENV), d

    return prepare


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runtime", choices=["docker", "podman"], default="docker")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--no-variants", action="store_true", help="only runner / direct / runner alone / python")
    args = ap.parse_args()
    from tesp_api.config.settings import RuntimeSettings
    from tesp_api.engine.runtimes import build_runtime
    from tesp_api.engine.runtimes.base import ExecutorRun
    from tesp_api.engine.shell import render

    load0 = os.getloadavg()
    with (
        tempfile.TemporaryDirectory(prefix="bench-rt-") as tmpdir,
        private_runtime(args.runtime, Path(tmpdir)) as (cli, env, sid),
    ):
        tmp = Path(tmpdir)
        runtime = {"type": args.runtime, f"{args.runtime}_bin": cli, "env": env}
        rt = build_runtime(RuntimeSettings.model_validate(runtime))
        name_mark = "tes-NAME-0"
        full = render(rt.command(ExecutorRun(name=name_mark, image=IMAGE, command=["true"])))
        fast = real_python()
        cases = [
            Case(f"runner via {fast} (tesp-api's job)", runner_case(runtime, fast)),
            Case(
                "direct: bash job.sh with the same run line",
                shell_case(lambda n: full.replace(name_mark, n), env),
            ),
            Case(f"runner via `python3` on PATH ({PATH_PYTHON})", runner_case(runtime, PATH_PYTHON)),
            Case("runner without its watchdog", runner_case(runtime, fast, watchdog=False)),
            Case("runner with no executor", runner_case(runtime, fast, executors=False)),
            Case(f"{fast} -I -S -c pass", python_case(fast)),
            Case(f"{PATH_PYTHON} -I -S -c pass", python_case(PATH_PYTHON)),
        ]
        if not args.no_variants:
            q = shlex.quote
            base = f"{q(cli)} run --rm -i --name {{n}}"
            flags = {
                "bare: run --rm -i --name": "",
                "+ --pull=missing": "--pull=missing",
                "+ --network none": "--network none",
                "+ --cap-drop ALL": "--cap-drop ALL",
                "+ --security-opt no-new-privileges": "--security-opt no-new-privileges",
                "+ --pids-limit 4096": "--pids-limit 4096",
            }
            if args.runtime == "podman":
                flags["+ --http-proxy=false"] = "--http-proxy=false"
            for label, flag in flags.items():
                cases.append(Case(label, shell_case(flag_line(base, flag), env)))
        for r in range(args.rounds):
            for i, case in enumerate(cases):
                d = tmp / "runs" / f"r{r}c{i}"
                argv, penv, cwd = case.prepare(d)
                daemon0 = session_cpu(sid)
                wall, cpu, code = spawn_timed(argv, penv, cwd)
                time.sleep(0.05)  # the daemon's work after the CLI exits (container removal) is its own
                daemon = session_cpu(sid) - daemon0
                if code != 0:
                    raise SystemExit(f"{case.name}: exit {code}: {(cwd / 'stderr').read_text()[-500:]}")
                if r > 0:  # the first round warms caches (image layers, page cache): not counted
                    case.wall.append(wall)
                    case.cpu.append(cpu)
                    case.daemon_cpu.append(daemon)
                shutil.rmtree(d, ignore_errors=True)
    load1 = os.getloadavg()
    print(
        f"## Executor phase on {args.runtime}, {args.rounds - 1} alternating rounds "
        f"(measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
        f"load average {load0[0]:.1f} -> {load1[0]:.1f})\n"
    )
    ref = statistics.median(cases[1].wall)
    print(
        "| case | wall median | wall p90 | CPU median (process tree) | daemon CPU median | wall vs direct |"
    )
    print("|---|---|---|---|---|---|")
    for case in cases:
        w = sorted(case.wall)
        print(
            f"| {case.name} | {statistics.median(w) * 1000:.1f} ms | {w[int(len(w) * 0.9) - 1] * 1000:.1f} ms "
            f"| {statistics.median(case.cpu) * 1000:.1f} ms | {statistics.median(case.daemon_cpu) * 1000:.0f} ms "
            f"| {statistics.median(w) / ref:.2f} |"
        )
    print(f"\nfull run line: `{full}`")


if __name__ == "__main__":
    main()
