"""A one-node Slurm cluster on 127.0.0.1 (Debian's slurmctld, slurmd and munge) for one test session.

Everything lives under one directory D and nothing of the machine's is used or changed: a private
munge key and socket (``munged --socket D/munge/munge.socket --origin 127.0.0.1``: no host name
lookup), a private ``D/slurm.conf`` that the Slurm commands find through ``SLURM_CONF`` (without it they
would look for /etc/slurm/slurm.conf and then ask DNS for SRV records: :meth:`Slurm.env` must be in
the environment of every ``sbatch``/``squeue``/``scancel``/``scontrol``), free ports for slurmctld and
slurmd, state and spool directories, pid and log files. The controller and the node are named after
this host (slurmctld only runs where ``SlurmctldHost`` is this host's name) with address 127.0.0.1.

The node is declared with ``CPUs=2 RealMemory=2048`` and ``SlurmdParameters=config_overrides`` (so a
CI machine of another shape still takes it), memory is a consumable resource (``CR_Core_Memory``), so a
job's ``--mem`` is part of its request and shows in ``scontrol show job``. No slurmdbd (it needs a
MySQL/MariaDB server): ``sacct`` answers "accounting storage is disabled"; jobs stay visible to
``squeue -j``/``scontrol show job`` for ``MinJobAge`` (600 s) after they end, and each finished job gets a
line in ``D/jobcomp.log`` (jobcomp/filetxt).

The three daemons run in the foreground as children of the test (``-D``/``-F``), each stopped by its
PID (SIGTERM, SIGKILL after a grace time), with the parent-death signal set (die_with_parent) so a test
run killed from outside leaves none behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tesp_api.local import LocalPulsar
from tests.services.die_with_parent import die_with_parent

__all__ = ["Slurm", "SlurmPulsar", "SlurmUnavailable", "missing_slurm_binaries", "slurm_cluster"]

NODE = "tesnode"
PARTITION = "tes"
CPUS = 2
REAL_MEMORY_MB = 2048
BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo")


class SlurmUnavailable(RuntimeError):
    """Slurm or munge is missing or cannot start here: the tests that need it skip with this reason."""


def missing_slurm_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Slurm:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.host = socket.gethostname().split(".")[0]
        self.ctld_port = _free_port()
        self.slurmd_port = _free_port()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def env(self) -> dict[str, str]:
        """What every Slurm command needs (sbatch & co. started by Pulsar's manager, the test's own)."""
        return {"SLURM_CONF": str(self.conf)}

    def write_config(self) -> None:
        r = self.root
        for sub in ("munge", "state", "spool", "log"):
            (r / sub).mkdir(parents=True, exist_ok=True)
            (r / sub).chmod(0o700)
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=tesp",
                    f"SlurmctldHost={self.host}(127.0.0.1)",
                    f"SlurmctldPort={self.ctld_port}",
                    f"SlurmdPort={self.slurmd_port}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={self.munge_socket}",
                    f"StateSaveLocation={r / 'state'}",
                    f"SlurmdSpoolDir={r / 'spool'}",
                    f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                    f"SlurmdPidFile={r / 'slurmd.pid'}",
                    f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core_Memory",
                    "SchedulerType=sched/backfill",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    "SlurmdParameters=config_overrides",
                    "JobCompType=jobcomp/filetxt",
                    f"JobCompLoc={r / 'jobcomp.log'}",
                    "AccountingStorageType=accounting_storage/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "MinJobAge=600",
                    "KillWait=5",
                    "InactiveLimit=0",
                    "SlurmctldTimeout=30",
                    "SlurmdTimeout=30",
                    (
                        f"NodeName={NODE} NodeHostname={self.host} NodeAddr=127.0.0.1 CPUs={CPUS} "
                        f"RealMemory={REAL_MEMORY_MB} State=UNKNOWN"
                    ),
                    f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
                ]
            )
            + "\n"
        )
        key = r / "munge" / "munge.key"
        if not key.exists():
            self._run([_binary("mungekey"), "--create", f"--keyfile={key}"])
            key.chmod(0o600)

    def _run(self, argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def command(self, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """A Slurm client command against this cluster (``scontrol show job 3``, ``squeue -j 3`` ...)."""
        return self._run([_binary(argv[0]), *argv[1:]], timeout=timeout)

    def _start(self, name: str, argv: list[str]) -> None:
        with (self.root / "log" / f"{name}.out").open("ab") as out:
            self.processes[name] = subprocess.Popen(
                argv,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - one C call, see die_with_parent.py
            )

    def _alive(self, name: str) -> None:
        proc = self.processes[name]
        if proc.poll() is not None:
            raise SlurmUnavailable(f"{name} exited ({proc.returncode}) at start: {self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 8) -> str:
        texts = []
        for path in (self.root / "log" / f"{name}.log", self.root / "log" / f"{name}.out"):
            try:
                texts += path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                pass
        return " | ".join(texts) or "(no log)"

    def start(self, timeout: float = 60.0) -> None:
        missing = missing_slurm_binaries()
        if missing:
            raise SlurmUnavailable(
                f"not installed: {', '.join(missing)} (Debian: slurmctld slurmd slurm-client munge)"
            )
        if os.geteuid() != 0:
            raise SlurmUnavailable("slurmd needs root to start jobs as their user")
        self.write_config()
        r = self.root
        self._start(
            "munged",
            [
                _binary("munged"),
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={r / 'munge' / 'munge.key'}",
                f"--pid-file={r / 'munge' / 'munged.pid'}",
                f"--log-file={r / 'log' / 'munged.log'}",
                f"--seed-file={r / 'munge' / 'munged.seed'}",
                "--origin=127.0.0.1",
            ],
        )
        deadline = time.monotonic() + timeout
        while not self.munge_socket.exists():
            self._alive("munged")
            if time.monotonic() > deadline:
                self.stop()
                raise SlurmUnavailable(f"munged did not start: {self.log_tail('munged')}")
            time.sleep(0.05)
        self._start("slurmctld", [_binary("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._start("slurmd", [_binary("slurmd"), "-D", "-N", NODE, "-f", str(self.conf)])
        while True:
            for name in ("slurmctld", "slurmd"):
                try:
                    self._alive(name)
                except SlurmUnavailable:
                    self.stop()
                    raise
            state = self.command("sinfo", "-h", "-n", NODE, "-o", "%T", timeout=10).stdout.strip()
            if state.rstrip("*") in ("idle", "mixed", "allocated"):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise SlurmUnavailable(
                    f"node {NODE} not idle within {timeout}s (state {state!r}): {self.log_tail('slurmctld')} "
                    f"{self.log_tail('slurmd')}"
                )
            time.sleep(0.2)

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job -o <id>`` as a dict (JobState, NumCPUs, MinMemoryNode, TRES, Command ...)."""
        out = self.command("scontrol", "show", "job", "-o", job_id).stdout.strip()
        fields: dict[str, str] = {}
        for word in out.split():
            key, sep, value = word.partition("=")
            if sep:
                fields[key] = value
        return fields

    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller still knows (running or ended less than MinJobAge ago)."""
        out = self.command("scontrol", "show", "job", "-o").stdout
        found = []
        for line in out.splitlines():
            fields = {}
            for word in line.split():
                key, sep, value = word.partition("=")
                if sep:
                    fields[key] = value
            if "JobId" in fields:
                found.append(fields)
        return found

    def stop(self, timeout: float = 10.0) -> None:
        for name in ("slurmd", "slurmctld", "munged"):  # the node first: it kills its jobs' processes
            proc = self.processes.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextmanager
def slurm_cluster(root: Path) -> Iterator[Slurm]:
    cluster = Slurm(root)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


class SlurmPulsar(LocalPulsar):
    """pulsar-serve whose managers submit through Slurm (``queued_cli``, ``job_plugin: Slurm``): ``_default_``
    with Slurm's defaults and one manager per resource class, ``classes[name] = (cpus, mem_mb)``, whose
    ``job_-c``/``job_--mem`` options become the ``#SBATCH -c``/``--mem`` lines of every job it submits
    (Pulsar's CliQueueManager ignores per-job submit_params: docs/deploy.md). A class is reached at
    ``<url>/managers/<name>``. The Slurm commands find the cluster through ``SLURM_CONF``, which must be in
    this process's environment when :meth:`start` runs (Pulsar's LocalShell passes its own on)."""

    def __init__(self, state_dir: Path, classes: dict[str, tuple[int, int]], **kw: object) -> None:
        super().__init__(state_dir, **kw)  # type: ignore[arg-type]
        self.classes = classes

    def manager_url(self, name: str) -> str:
        return f"{self.url}/managers/{name}"

    def write_config(self) -> None:
        super().write_config()
        app = self.state_dir / "app.yml"
        head, _, rest = app.read_text().partition("managers:\n")
        others = [line for line in rest.splitlines() if not line.startswith(" ")]  # the _default_ block goes
        managers = ["managers:"]
        for name, request in {"_default_": None, **self.classes}.items():
            managers += [
                f"  {name}:",
                "    type: queued_cli",
                "    job_plugin: Slurm",
                "    shell_plugin: LocalShell",
            ]
            managers.append(f"    job_-p: {PARTITION}")
            if request is not None:
                managers += [f"    job_-c: {request[0]}", f"    job_--mem: {request[1]}"]
        app.write_text(head + "\n".join(managers + others) + "\n")
