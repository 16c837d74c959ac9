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
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/hostname",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/mime.types",
    "/etc/magic",
    "/etc/debian_version",
    "/etc/os-release",
    "/etc/profile",
    "/etc/bash.bashrc",
    "/etc/inputrc",
    "/etc/terminfo",
    "/etc/fonts",
    "/etc/java",
    "/etc/python3",
    "/etc/perl",
    "/etc/R",
)
SETPRIV = (
    "/usr/bin/setpriv"  # util-linux, on every Debian/RHEL host; resolved inside the sandbox (/usr is bound)
)
SETPRIV_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")  # what setpriv needs to drop to the sandbox user
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
        return self._argv(run, None)

    def root_command(self, run: ExecutorRun) -> list[Word] | None:
        """When the runner is root, a user namespace would still leave the executor uid 0 on the host, the
        owner of the device nodes ``--dev`` binds read-write from the host (/dev/null...): ``chmod`` needs no
        capability then. So bwrap sets up the sandbox as root in the host's user namespace, with only the
        capabilities setpriv needs, and setpriv drops to ``runtime.sandbox_user`` (no groups, empty
        bounding set, no_new_privs from bwrap) before the command runs: every capability is gone, and the
        host's root-owned files are out of reach. The runner makes the job's fs/ tree that user's."""
        return None if self.hardening.sandbox_user is None else self._argv(run, self.hardening.sandbox_user)

    def _argv(self, run: ExecutorRun, drop_to: tuple[int, int] | None) -> list[Word]:
        argv: list[Word] = [self.binary, "--die-with-parent", "--new-session"]
        if drop_to is None:
            argv.append("--unshare-user")
        argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts"]
        if run.network == "none":
            argv.append("--unshare-net")
        argv += ["--cap-drop", "ALL"]
        caps = list(self.hardening.cap_add)
        if drop_to is not None:
            caps += [c for c in SETPRIV_CAPS if c not in caps]
        for cap in caps:
            argv += ["--cap-add", cap]
        host_paths = (*HOST_READ_ONLY[1:], *HOST_ETC, *self.hardening.bind_host_paths)
        # The private /tmp first: a host path under /tmp (runtime.bind_host_paths, e.g. a venv there)
        # bound before it would be hidden by it.
        argv += ["--proc", "/proc", "--dev", "/dev"]
        if drop_to is not None:
            argv += ["--perms", "1777"]  # the sandbox user's HOME and scratch, like a host's /tmp
        argv += ["--tmpfs", "/tmp"]  # noqa: S108 - a private tmpfs inside the sandbox
        if drop_to is not None:
            # bwrap, as root, makes the missing parents of a mount point 0700: the sandbox user could not
            # reach /etc/passwd or a task's /a/b/data. Make them 0755 first.
            targets = ("/usr", *host_paths, *(m.container for m in run.mounts))
            for parent in _parents(targets):
                argv += ["--perms", "0755", "--dir", parent]
        argv += ["--ro-bind", "/usr", "/usr"]
        for path in host_paths:
            argv += ["--ro-bind-try", path, path]
        # Parents before children, so a nested mount is not hidden by its parent's.
        for m in sorted(run.mounts, key=lambda m: (m.container.count("/"), m.container)):
            argv += ["--ro-bind" if m.read_only else "--bind", m.host, m.container]
        argv += ["--chdir", run.workdir or "/"]
        argv += ["--clearenv", "--setenv", "PATH", DEFAULT_PATH, "--setenv", "HOME", "/tmp"]  # noqa: S108 - HOME inside the sandbox (its private /tmp)
        if run.env:
            argv += ["--args", ArgsFd()]
        # Through ``exec`` in a shell (which replaces itself): a command that is not found exits 127 and
        # one that cannot run 126, as in docker and podman; bwrap's own execvp failure would exit 1.
        argv += [*self.extra_args, "--"]
        if drop_to is not None:
            kept = ",".join("+" + c.removeprefix("CAP_").lower() for c in self.hardening.cap_add)
            argv += [
                SETPRIV,
                f"--reuid={drop_to[0]}",
                f"--regid={drop_to[1]}",
                "--clear-groups",
                "--bounding-set=-all" + ("," + kept if kept else ""),
            ]
            if kept:
                argv += [f"--inh-caps={kept}", f"--ambient-caps={kept}"]
            argv.append("--")
        argv += [*EXEC_SHIM, *run.command]
        return argv

    def cleanup_command(self, run: ExecutorRun) -> list[Word] | None:
        return None


def _parents(targets: tuple[str, ...]) -> list[str]:
    """The directories above ``targets`` (not "/", not a target itself), parents first."""
    found = {
        "/".join(parts[:n])
        for target in targets
        for parts in [target.rstrip("/").split("/")]
        for n in range(2, len(parts))
    }
    return sorted(found - set(targets), key=lambda p: (p.count("/"), p))
