"""bubblewrap: a sandbox without an image, for hosts with no container engine.

The image is ignored: the host's userland (/usr, /bin, /lib...) is mounted read-only and the TES paths
are bind-mounted from the job directory. Least privilege: a new user namespace and PID/IPC/UTS (and,
unless the network is allowed, network) namespaces, every capability dropped (``runtime.cap_add``
gives some back), ``--new-session`` (no terminal injection), ``--die-with-parent`` so that killing the
job (Pulsar's cancel) kills the sandboxed command too. Of /etc only what commands need is bound (users,
name resolution, TLS roots, the loader cache), never /etc/shadow. The task's env is read by bwrap from
an fd (``--args``), never argv. No CPU/RAM limits (bwrap has none): see docs/runtimes.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tesp_api.engine.runtimes.base import ExecutorRun, Hardening
from tesp_api.engine.shell import ArgsFd, Word

HOST_READ_ONLY = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/opt")
# What of the host's /etc commands need (users, DNS, TLS, the loader, time zone); never shadow/gshadow,
# ssh host keys, sudoers or other secrets.
HOST_ETC = (
    "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/hosts", "/etc/host.conf", "/etc/resolv.conf",
    "/etc/gai.conf", "/etc/services", "/etc/protocols", "/etc/hostname", "/etc/localtime", "/etc/timezone",
    "/etc/ssl", "/etc/ca-certificates", "/etc/pki", "/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf",
    "/etc/ld.so.conf.d", "/etc/mime.types", "/etc/magic", "/etc/debian_version", "/etc/os-release",
    "/etc/profile", "/etc/bash.bashrc", "/etc/inputrc", "/etc/terminfo", "/etc/fonts", "/etc/java",
    "/etc/python3", "/etc/perl", "/etc/R",
)
EXEC_SHIM = ("/bin/sh", "-c", 'exec "$@"', "sh")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class BwrapRuntime:
    binary: str = "bwrap"
    kind: str = "bwrap"
    extra_args: list[str] = field(default_factory=list)
    hardening: Hardening = field(default_factory=Hardening)
    needs_workdir_mount: bool = True
    env_prefix: str | None = None

    @property
    def system_exit_codes(self) -> Mapping[int, str]:
        return {}

    def command(self, run: ExecutorRun) -> list[Word]:
        argv: list[Word] = [
            self.binary, "--die-with-parent", "--new-session",
            "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
        ]
        if run.network == "none":
            argv.append("--unshare-net")
        argv += ["--cap-drop", "ALL"]
        for cap in self.hardening.cap_add:
            argv += ["--cap-add", cap]
        argv += ["--ro-bind", "/usr", "/usr"]
        for path in (*HOST_READ_ONLY[1:], *HOST_ETC, *self.hardening.bind_host_paths):
            argv += ["--ro-bind-try", path, path]
        argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        # Parents before children, so a nested mount is not hidden by its parent's.
        for m in sorted(run.mounts, key=lambda m: (m.container.count("/"), m.container)):
            argv += ["--ro-bind" if m.read_only else "--bind", m.host, m.container]
        argv += ["--chdir", run.workdir or "/"]
        argv += ["--clearenv", "--setenv", "PATH", DEFAULT_PATH, "--setenv", "HOME", "/tmp"]
        if run.env:
            argv += ["--args", ArgsFd()]
        # Through ``exec`` in a shell (which replaces itself): a command that is not found exits 127 and
        # one that cannot run 126, as in docker and podman; bwrap's own execvp failure would exit 1.
        argv += [*self.extra_args, "--", *EXEC_SHIM, *run.command]
        return argv

    def cleanup_command(self, run: ExecutorRun) -> list[Word] | None:
        return None
