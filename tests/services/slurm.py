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
job's ``--mem`` is part of its request and shows in ``scontrol show job`` and ``sacct``.

Accounting (``sacct``) needs slurmdbd and a MySQL/MariaDB server. Where both are installed (Debian:
slurmdbd, mariadb-server) the cluster gets a private MariaDB server (its own datadir, socket and a free
port on 127.0.0.1; the machine's own server, if one runs, is never used), a database user with a
random password for slurmdbd, slurmdbd on 127.0.0.1, and the cluster registered with sacctmgr:
:attr:`Slurm.accounting` is then true. Without them ``sacct`` answers "accounting storage is
disabled". Either way jobs stay visible to ``squeue -j -t all``/``scontrol show job`` for ``MinJobAge``
(600 s) after they end, and each finished job gets a line in ``D/jobcomp.log`` (jobcomp/filetxt).

The daemons run in the foreground as children of the test (``-D``/``-F``), each stopped by its
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
from tests.services.leftovers import kill_trees, processes

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


DB_BINARIES = ("mariadbd", "mariadb-install-db", "mariadb", "slurmdbd", "sacctmgr", "sacct")


def accounting_available() -> bool:
    """slurmdbd and a MariaDB server are installed (Debian: slurmdbd mariadb-server): sacct can then work."""
    return all(shutil.which(b) or Path("/usr/sbin", b).exists() for b in DB_BINARIES)


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Slurm:
    def __init__(self, root: Path, accounting: bool | None = None) -> None:
        self.root = root.resolve()
        self.conf = self.root / "slurm.conf"
        # slurmdbd + a private MariaDB server when both are installed (None: whenever they are)
        self.accounting = accounting_available() if accounting is None else accounting
        self.db_port = _free_port()
        self.dbd_port = _free_port()
        self.db_password = os.urandom(12).hex()
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
                    *(
                        [
                            "AccountingStorageType=accounting_storage/slurmdbd",
                            "AccountingStorageHost=127.0.0.1",
                            f"AccountingStoragePort={self.dbd_port}",
                            # with slurmdbd + munge this names munged's socket for the accounting
                            # connections (AuthInfo does not reach them): slurm.conf(5)
                            f"AccountingStoragePass={self.munge_socket}",
                        ]
                        if self.accounting
                        else ["AccountingStorageType=accounting_storage/none"]
                    ),
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

    def _run(
        self, argv: list[str], timeout: float = 30.0, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            input=stdin if stdin is not None else "",
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

    def start(self, timeout: float = 120.0) -> None:
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
        if self.accounting:
            try:
                self._start_accounting(deadline)
            except SlurmUnavailable:
                self.stop()
                raise
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

    def _start_accounting(self, deadline: float) -> None:
        """A private MariaDB server (own datadir, socket, 127.0.0.1 and a free port; never the machine's
        own), a database user for slurmdbd with a random password, slurmdbd on 127.0.0.1, and the
        cluster registered with ``sacctmgr`` before slurmctld starts."""
        r = self.root
        db = r / "db"
        sock = r / "db.sock"
        if not (db / "mysql").exists():
            init = self._run(
                [
                    _binary("mariadb-install-db"),
                    "--no-defaults",
                    f"--datadir={db}",
                    "--user=root",
                    "--auth-root-authentication-method=socket",
                    "--skip-test-db",
                ],
                timeout=max(10.0, deadline - time.monotonic()),
            )
            if init.returncode != 0:
                raise SlurmUnavailable(
                    f"mariadb-install-db failed: {init.stdout[-300:]} {init.stderr[-300:]}"
                )
        self._start(
            "mariadbd",
            [
                _binary("mariadbd"),
                "--no-defaults",
                f"--datadir={db}",
                f"--socket={sock}",
                f"--port={self.db_port}",
                "--bind-address=127.0.0.1",
                f"--pid-file={r / 'mariadbd.pid'}",
                f"--log-error={r / 'log' / 'mariadbd.log'}",
                "--user=root",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=16M",
            ],
        )
        client = [_binary("mariadb"), "--no-defaults", f"--socket={sock}", "-u", "root"]
        while self._run([*client, "-e", "SELECT 1"], timeout=10).returncode != 0:
            self._alive("mariadbd")
            if time.monotonic() > deadline:
                raise SlurmUnavailable(f"mariadbd did not start: {self.log_tail('mariadbd')}")
            time.sleep(0.2)
        sql = (
            f"CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '{self.db_password}'; "
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
        )
        made = self._run(client, timeout=30, stdin=sql)  # on stdin: a password never goes on a command line
        if made.returncode != 0:
            raise SlurmUnavailable(f"cannot create the database user: {made.stderr[-300:]}")
        dbd_conf = r / "slurmdbd.conf"  # beside slurm.conf: where slurmdbd looks for it
        dbd_conf.touch(mode=0o600)
        dbd_conf.chmod(0o600)  # it holds the database password: slurmdbd insists on 0600
        dbd_conf.write_text(
            "\n".join(
                [
                    "AuthType=auth/munge",
                    f"AuthInfo=socket={self.munge_socket}",
                    f"DbdHost={self.host}",
                    "DbdAddr=127.0.0.1",
                    f"DbdPort={self.dbd_port}",
                    "SlurmUser=root",
                    f"PidFile={r / 'slurmdbd.pid'}",
                    f"LogFile={r / 'log' / 'slurmdbd.log'}",
                    "StorageType=accounting_storage/mysql",
                    "StorageHost=127.0.0.1",
                    f"StoragePort={self.db_port}",
                    "StorageUser=slurm",
                    f"StoragePass={self.db_password}",
                    "StorageLoc=slurm_acct_db",
                ]
            )
            + "\n"
        )
        self._start("slurmdbd", [_binary("slurmdbd"), "-D"])
        while (ask := self.command("sacctmgr", "-n", "list", "cluster", timeout=10)).returncode != 0:
            self._alive("slurmdbd")
            if time.monotonic() > deadline:
                raise SlurmUnavailable(
                    f"slurmdbd did not answer ({ask.stderr.strip()}): {self.log_tail('slurmdbd')}"
                )
            time.sleep(0.3)
        self.command("sacctmgr", "-i", "add", "cluster", "tesp", timeout=30)

    def sacct(self, *args: str) -> list[dict[str, str]]:
        """``sacct --parsable2`` rows as dicts (needs accounting: see :attr:`accounting`)."""
        out = self.command("sacct", "-a", "--parsable2", *args, timeout=30)
        lines = out.stdout.splitlines()
        if out.returncode != 0 or not lines:
            return []
        head = lines[0].split("|")
        return [dict(zip(head, line.split("|"), strict=False)) for line in lines[1:]]

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

    def _leftover_steps(self) -> list[int]:
        """slurmstepd processes of this cluster (they outlive slurmd, waiting to report to it)."""
        mine = f"SLURM_CONF={self.conf}".encode()
        return processes("slurmstepd", lambda env: mine in env, source="environ")

    def stop(self, timeout: float = 10.0) -> None:
        ctld = self.processes.get("slurmctld")
        if ctld is not None and ctld.poll() is None:  # end the jobs first, so no job step is left behind
            self.command("scancel", "-p", PARTITION, timeout=10)
            deadline = time.monotonic() + timeout
            while self.command("squeue", "-h", "-p", PARTITION, timeout=10).stdout.strip():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        # the node first: it kills its jobs' processes; the database last
        for name in ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"):
            proc = self.processes.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        kill_trees(self._leftover_steps())


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
