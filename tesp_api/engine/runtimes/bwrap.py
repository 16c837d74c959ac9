"""bubblewrap: a sandbox without an image, for hosts with no container engine.

The image is ignored: the host's userland (/usr, /etc, ...) is mounted read-only and the TES
paths are bind-mounted from the job directory. New PID/IPC/UTS namespaces, a private /tmp, a clean
environment, and ``--die-with-parent`` so that killing the job (Pulsar's cancel) kills the
sandboxed command too. No CPU/RAM limits (bwrap has none): see docs/runtimes.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tesp_api.engine.runtimes.base import ExecutorRun
from tesp_api.engine.shell import Word

HOST_READ_ONLY = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/opt")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class BwrapRuntime:
    binary: str = "bwrap"
    kind: str = "bwrap"
    extra_args: list[str] = field(default_factory=list)
    needs_workdir_mount: bool = True

    def command(self, run: ExecutorRun) -> list[Word]:
        argv: list[Word] = [
            self.binary, "--die-with-parent", "--new-session",
            "--unshare-pid", "--unshare-ipc", "--unshare-uts",
        ]
        argv.append("--ro-bind")
        argv += ["/usr", "/usr"]
        for path in HOST_READ_ONLY[1:]:
            argv += ["--ro-bind-try", path, path]
        argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        # Parents before children, so a nested mount is not hidden by its parent's.
        for m in sorted(run.mounts, key=lambda m: (m.container.count("/"), m.container)):
            argv += ["--ro-bind" if m.read_only else "--bind", m.host, m.container]
        argv += ["--chdir", run.workdir or "/"]
        argv += ["--clearenv", "--setenv", "PATH", DEFAULT_PATH, "--setenv", "HOME", "/tmp"]
        for key, value in run.env.items():
            argv += ["--setenv", key, value]
        argv += [*self.extra_args, "--", *run.command]
        return argv

    def cleanup_command(self, run: ExecutorRun) -> list[Word] | None:
        return None
