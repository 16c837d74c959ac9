"""The ONE bash script a Pulsar job runs for a TES task (uploaded as a file, never in a URL).

Layout inside the Pulsar job directory (the script finds it from its own location)::

    tool_files/tes-job.sh        this script
    inputs/tes-in-<i>[.tar]      uploaded inputs (content, or fetched by this service)
    working/fs/<container path>  every TES path (inputs, outputs, volumes, std streams)
    working/tes-meta/            per executor: <i>.start, <i>.end, <i>.exit (RFC 3339 / int),
                                 <i>.stdout.tail, <i>.stderr.tail; manifest (outputs found)
    working/tes-meta.tar         the small files above, fetched in one request after the job
                                 (or, when small, read from the script's stdout: see INLINE_META_*)
    tes-started/                 made atomically at the start: a second run exits at once

The script stops at the first executor that fails unless it has ignore_error, always writes the
output manifest (NUL-separated ``index, size, path`` records: directories and wildcards are
expanded here, on the Pulsar side) and exits with the failing executor's code (0 otherwise).
Every argument is shell-quoted (engine/shell.py); nothing from the task is ever evaluated.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from tesp_api.engine.file_mapper import FileMapper, has_wildcard, host_path, host_rel, wildcard_base
from tesp_api.engine.runtimes.base import ExecutorRun, Runtime
from tesp_api.engine.shell import Word, render, render_word
from tesp_api.tes.models import TesExecutor, TesFileType, TesTask

SCRIPT_NAME = "tes-job.sh"
META_DIR = "tes-meta"
META_TAR = "tes-meta.tar"
ALREADY_RAN_EXIT = 75
# The packed logs also ride on the script's stdout (which Pulsar's final status carries, up to
# 64 KiB) when small, between these lines, base64 (gzipped first when too big plain): the
# engine then needs no download.
INLINE_META_BEGIN = "TESP-META-BEGIN"
INLINE_META_END = "TESP-META-END"
INLINE_META_MAX = 48 * 1024  # base64 characters; well under Pulsar's 64 KiB status stream cut


@dataclass(frozen=True, slots=True)
class PlacedInput:
    upload_name: str  # under the job's inputs directory
    container_path: str
    is_archive: bool = False  # a directory input, uploaded as a tar


def input_upload_name(index: int, is_archive: bool) -> str:
    return f"tes-in-{index}" + (".tar" if is_archive else "")


def container_name(task_id: str, index: int) -> str:
    return f"tes-{task_id}-{index}"


def _q(value: str) -> str:
    return shlex.quote(value)


def executor_runs(task: TesTask, task_id: str, mapper: FileMapper) -> list[ExecutorRun]:
    res = task.resources
    return [
        ExecutorRun(
            name=container_name(task_id, i),
            image=ex.image,
            command=list(ex.command),
            workdir=ex.workdir,
            env=dict(ex.env or {}),
            mounts=mapper.mounts(),
            cpu_cores=res.cpu_cores if res else None,
            ram_gb=res.ram_gb if res else None,
        )
        for i, ex in enumerate(task.executors)
    ]


def build_job_script(
    task: TesTask,
    task_id: str,
    runtime: Runtime,
    mapper: FileMapper,
    inputs: list[PlacedInput],
    *,
    tail_bytes: int,
) -> str:
    w = render_word
    lines: list[str] = [
        "#!/bin/bash",
        f"# tesp-api job script for TES task {task_id} (runtime {runtime.kind}); generated, do not edit.",
        "set -u",
        "umask 022",
        "# Builtins where a command would do: every process started costs each job milliseconds.",
        'tes_self="${BASH_SOURCE[0]}"',
        '[[ "$tes_self" == */* ]] || tes_self="./$tes_self"',
        'cd -P "${tes_self%/*}/.." || exit 70',
        'TES_JOB="$PWD"',
        'TES_WORK="$TES_JOB/working"',
        'cd "$TES_WORK" || exit 70',
        f'TES_META="$TES_WORK"/{META_DIR}',
        "# Run at most once, even if Pulsar were asked twice (crash between submit and its record).",
        'if ! mkdir "$TES_JOB/tes-started" 2>/dev/null; then',
        '  echo "tesp-api: this job has already run; not running it again" >&2',
        f"  exit {ALREADY_RAN_EXIT}",
        "fi",
        # bash >= 5 has the time as a variable; the decimal mark follows the locale.
        "if [ -n \"${EPOCHREALTIME:-}\" ]; then",
        "  tes_now() { local t=$EPOCHREALTIME; TZ=UTC0 printf '%(%Y-%m-%dT%H:%M:%S)T.%sZ\\n' \"${t%[.,]*}\" \"${t#*[.,]}\"; }",
        "else",
        "  tes_now() { date -u +%Y-%m-%dT%H:%M:%S.%6NZ; }",
        "fi",
        "tes_fail() { echo \"tesp-api: $1\" >&2; exit 70; }",
        "# Mount roots: every TES path lives below one of these.",
    ]
    directories = ['"$TES_META"'] + [w(host_path(root.container)) for root in mapper.roots if not root.is_file]
    lines.append(f"mkdir -p {' '.join(directories)} || tes_fail 'cannot create a mount point'")  # one process
    for root in mapper.roots:
        hp = w(host_path(root.container))
        if root.is_file:
            lines.append(f"mkdir -p \"$(dirname {hp})\" && touch {hp} || tes_fail 'cannot create a mount point'")
    lines.append("# Inputs, at their container paths.")
    for inp in inputs:
        src = f'"$TES_JOB/inputs"/{_q(inp.upload_name)}'
        dest = w(host_path(inp.container_path))
        if inp.is_archive:
            lines.append(f"mkdir -p {dest} && tar -xf {src} -C {dest} --no-same-owner "
                         f"|| tes_fail {_q('cannot unpack input ' + inp.container_path)}")
        else:
            lines.append(f"mkdir -p \"$(dirname {dest})\" && mv -f {src} {dest} "
                         f"|| tes_fail {_q('cannot place input ' + inp.container_path)}")
    for vol in task.volumes or []:
        lines.append(f"mkdir -p {w(host_path(vol))}")
    lines.append("tes_rc=0")
    runs = executor_runs(task, task_id, mapper)
    for i, (ex, run) in enumerate(zip(task.executors, runs, strict=True)):
        lines += _executor_function(i, ex, run, runtime, tail_bytes)
    if runs:
        lines += [
            f"for tes_i in {' '.join(str(i) for i in range(len(runs)))}; do",
            '  "tes_exec_$tes_i"',
            '  [ "$tes_rc" -eq 0 ] || break',
            "done",
        ]
    lines += _manifest(task)
    lines += [
        (
            f'tar -b 1 -cf "$TES_WORK"/{META_TAR} -C "$TES_META" --exclude=\'*.stdout\' --exclude=\'*.stderr\' . '
            "|| tes_fail 'cannot pack the executor logs'"
        ),
        f'tes_inline="$(base64 -w0 "$TES_WORK"/{META_TAR} 2>/dev/null)"',
        f'if [ "${{#tes_inline}}" -gt {INLINE_META_MAX} ]; then',
        f'  tes_inline="$(gzip -c "$TES_WORK"/{META_TAR} 2>/dev/null | base64 -w0 2>/dev/null)"',
        "fi",
        f'if [ -n "$tes_inline" ] && [ "${{#tes_inline}}" -le {INLINE_META_MAX} ]; then',
        f"  printf '%s\\n%s\\n%s\\n' {INLINE_META_BEGIN} \"$tes_inline\" {INLINE_META_END}",
        "fi",
        'exit "$tes_rc"',
    ]
    return "\n".join(lines) + "\n"


def _executor_function(i: int, ex: TesExecutor, run: ExecutorRun, runtime: Runtime, tail_bytes: int) -> list[str]:
    """One executor as a shell function: it records start/end/exit and the log tails, and sets
    tes_rc when it fails without ignore_error (the loop then stops)."""
    w = render_word
    meta = f'"$TES_META"/{i}'
    out = w(host_path(ex.stdout)) if ex.stdout else f"{meta}.stdout"
    err = w(host_path(ex.stderr)) if ex.stderr else f"{meta}.stderr"
    stdin = w(host_path(ex.stdin)) if ex.stdin else "/dev/null"
    body = [f"tes_exec_{i}() {{", "  local rc"]
    if ex.workdir and runtime.needs_workdir_mount:
        body.append(f"  mkdir -p {w(host_path(ex.workdir))}")
    for stream in (ex.stdout, ex.stderr):
        if stream:
            body.append(f'  mkdir -p "$(dirname {w(host_path(stream))})"')
    body.append(f"  tes_now > {meta}.start")
    cleanup: list[Word] | None = runtime.cleanup_command(run)
    if cleanup:
        # A detached watchdog (outside the job's process tree, so Pulsar's kill spares it)
        # removes the container once this script is gone, whatever killed it.
        body.append(
            "  ( setsid bash -c 'while kill -0 \"$1\" 2>/dev/null; do sleep 2; done; \"${@:2}\" >/dev/null 2>&1' "
            f"tes-watchdog $$ {render(cleanup)} </dev/null >/dev/null 2>&1 & )"
        )
    body += [
        f"  {render(runtime.command(run))} <{stdin} >{out} 2>{err}",
        "  rc=$?",
        f"  tes_now > {meta}.end",
        f'  echo "$rc" > {meta}.exit',
    ]
    for path, tail in ((out, f"{meta}.stdout.tail"), (err, f"{meta}.stderr.tail")):
        # No `tail` process for an empty stream (the common case for trivial commands).
        body.append(f"  if [ -s {path} ]; then tail -c {int(tail_bytes)} {path} > {tail} 2>/dev/null; else : > {tail}; fi")
    if ex.ignore_error:
        body.append("  return 0  # ignore_error: the next executor runs whatever this one returned")
    else:
        body.append('  if [ "$rc" -ne 0 ]; then tes_rc=$rc; fi')
    body.append("}")
    return body


def _manifest(task: TesTask) -> list[str]:
    lines = ["# Output manifest: index NUL size NUL path-under-working NUL; symlinks never listed.",
             'tes_manifest="$TES_META/manifest"', ': > "$tes_manifest"', 'cd "$TES_WORK" || tes_fail "no working dir"']
    for i, out in enumerate(task.outputs or []):
        fmt = _q(str(i) + "\\0%s\\0%p\\0")
        if has_wildcard(out.path):
            base = host_rel(wildcard_base(out.path))
            lines.append(f"[ -d {_q(base)} ] && [ ! -L {_q(base)} ] && "
                         f"find {_q(base)} -type f -printf {fmt} >> \"$tes_manifest\"")
        elif out.type == TesFileType.DIRECTORY:
            rel = host_rel(out.path)
            lines.append(f"[ -d {_q(rel)} ] && [ ! -L {_q(rel)} ] && "
                         f"find {_q(rel)} -type f -printf {fmt} >> \"$tes_manifest\"")
        else:
            rel = host_rel(out.path)
            lines.append(f"[ -f {_q(rel)} ] && [ ! -L {_q(rel)} ] && "
                         f"printf '%s\\0%s\\0%s\\0' {i} \"$(stat -c %s {_q(rel)})\" {_q(rel)} >> \"$tes_manifest\"")
    return lines
