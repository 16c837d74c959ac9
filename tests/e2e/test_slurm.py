"""A real cluster behind Pulsar: TES tasks run as Slurm jobs.

Real parts: Debian's slurmctld + slurmd + munged on 127.0.0.1 (tests/services/slurm.py, a private
slurm.conf and munge key, stopped by PID), one pulsar-serve whose managers are ``queued_cli`` with the
Slurm job plugin (sbatch / squeue / scancel), `tesp-api serve` as a child process, bubblewrap for the
executors. Pulsar's CLI manager takes no per-job resources, so each resource class is a Pulsar manager
of its own (``job_-c``/``job_--mem``: the ``#SBATCH`` lines of its jobs) and one ``pulsar.servers`` entry
in tesp-api (``<pulsar>/managers/<class>``); docs/deploy.md says why and how a task gets its class.
Without Slurm installed (Debian: slurmctld slurmd slurm-client munge) the tests skip and say so.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.test_crash_safety import FINAL
from tests.engine.serve_process import ServeProcess
from tests.services.slurm import Slurm, SlurmPulsar, SlurmUnavailable, slurm_cluster

pytestmark = [pytest.mark.pulsar, pytest.mark.slow]
CLASSES = {"c2_m2": (2, 2048), "c2_m1": (2, 1024)}  # Pulsar manager -> (Slurm -c, --mem in MB)
# tesp-api server name -> (Pulsar manager, its declared max_cpu_cores/max_ram_gb). pulsar.routing is
# tightest_fit; the larger 2-CPU class is listed first so that least_loaded (ties by this order) would
# choose it for a task asking cpu_cores=2, ram_gb=1, and tightest_fit must not. The default manager
# takes Slurm's default request (1 CPU), so it declares 1 core and is the tightest for a task that
# asks for nothing.
SERVERS: list[tuple[str, str | None, dict[str, float]]] = [
    ("slurm", None, {"max_cpu_cores": 1}),
    ("slurm-c2-m2", "c2_m2", {"max_cpu_cores": 2, "max_ram_gb": 2}),
    ("slurm-c2-m1", "c2_m1", {"max_cpu_cores": 2, "max_ram_gb": 1}),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slurm]:
    try:
        with slurm_cluster(tmp_path_factory.mktemp("slurm")) as slurm:
            yield slurm
    except SlurmUnavailable as exc:
        pytest.skip(f"no Slurm here: {exc}")


@pytest.fixture(scope="module")
def api(cluster: Slurm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    mp = pytest.MonkeyPatch()
    mp.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])  # Pulsar's sbatch/squeue/scancel find the cluster so
    pulsar = SlurmPulsar(tmp_path_factory.mktemp("pulsar"), CLASSES)
    pulsar.start()
    work = tmp_path_factory.mktemp("serve")
    (work / "settings.toml").write_text(
        '[default.pulsar]\nrouting = "tightest_fit"\n'
        + "".join(
            f"[[default.pulsar.servers]]\nname = {json.dumps(name)}\n"
            f"url = {json.dumps(pulsar.manager_url(manager) if manager else pulsar.url)}\n"
            + "".join(f"{key} = {value}\n" for key, value in limits.items())
            for name, manager, limits in SERVERS
        )
    )
    serve = ServeProcess(work, pulsar.url)
    try:
        serve.start()
        yield serve.url + "/ga4gh/tes/v1"
    finally:
        serve.stop()
        pulsar.stop(timeout=3.0)
        mp.undo()


def task(command: str, **resources: object) -> dict[str, object]:
    body: dict[str, object] = {"executors": [{"image": "alpine", "command": ["sh", "-c", command]}]}
    if resources:
        body["resources"] = resources
    return body


def create(api: str, body: dict[str, object]) -> str:
    answer = httpx.post(f"{api}/tasks", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id"])


def wait_state(api: str, task_id: str, states: set[str], timeout: float = 120) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        got = dict(httpx.get(f"{api}/tasks/{task_id}", params={"view": "FULL"}, timeout=10).json())
        if got["state"] in states:
            return got
        assert time.monotonic() < deadline, f"still {got['state']}: {got}"
        time.sleep(0.2)


def slurm_job_of(cluster: Slurm, task_id: str, timeout: float = 60) -> dict[str, str]:
    """The Slurm job Pulsar submitted for this task (Pulsar names it pulsar_<job id>, the job id being the task id)."""
    deadline = time.monotonic() + timeout
    while True:
        for job in cluster.jobs():
            if job.get("JobName") == f"pulsar_{task_id}":
                return job
        assert time.monotonic() < deadline, f"no Slurm job for {task_id}: {cluster.jobs()}"
        time.sleep(0.2)


def sacct_job(cluster: Slurm, task_id: str, state: str, timeout: float = 60) -> dict[str, str]:
    """The task's job in Slurm's accounting (slurmdbd), once it has ``state`` there."""
    if not cluster.accounting:
        pytest.skip("no Slurm accounting here (Debian: slurmdbd and mariadb-server): sacct cannot answer")
    fields = "JobID,JobName,State,AllocCPUS,ReqMem,ReqTRES,Partition"
    deadline = time.monotonic() + timeout
    while True:
        rows = cluster.sacct("-X", "--name", f"pulsar_{task_id}", "-o", fields)
        if rows and rows[0]["State"].split()[0] == state and rows[0]["JobName"] == f"pulsar_{task_id}":
            return rows[0]
        assert time.monotonic() < deadline, f"sacct: {rows}"
        time.sleep(0.3)


def test_a_tes_task_runs_as_a_slurm_job_and_completes(cluster: Slurm, api: str) -> None:
    task_id = create(api, task('echo hello from slurm; echo "$SLURM_JOB_ID" > /dev/null'))
    done = wait_state(api, task_id, FINAL)
    assert done["state"] == "COMPLETE", done
    assert done["logs"][-1]["logs"][0]["stdout"] == "hello from slurm\n"  # type: ignore[index]
    job = slurm_job_of(cluster, task_id)
    assert job["JobState"] == "COMPLETED", job
    assert job["Partition"] == "tes"
    squeue = cluster.command(
        "squeue", "-a", "-h", "-t", "all", "-o", "%i %j %T", "-j", job["JobId"]
    ).stdout.split()
    assert squeue == [job["JobId"], f"pulsar_{task_id}", "COMPLETED"]


def test_cancel_of_a_running_task_reaches_scancel(cluster: Slurm, api: str) -> None:
    task_id = create(api, task("sleep 300"))
    wait_state(api, task_id, {"RUNNING"})
    deadline = time.monotonic() + 60
    while slurm_job_of(cluster, task_id)["JobState"] != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert httpx.post(f"{api}/tasks/{task_id}:cancel", timeout=10).status_code == 200
    assert wait_state(api, task_id, FINAL)["state"] == "CANCELED"
    deadline = time.monotonic() + 60
    while (job := slurm_job_of(cluster, task_id))["JobState"] != "CANCELLED":
        assert time.monotonic() < deadline, f"the Slurm job was not cancelled: {job}"
        time.sleep(0.2)


def test_sacct_shows_each_tasks_job_with_its_request_and_end(cluster: Slurm, api: str) -> None:
    done_id = create(
        api, task("true", cpu_cores=2, ram_gb=1, backend_parameters={"pulsar_server": "slurm-c2-m1"})
    )
    cancelled_id = create(api, task("sleep 300", backend_parameters={"pulsar_server": "slurm"}))
    assert wait_state(api, done_id, FINAL)["state"] == "COMPLETE"
    wait_state(api, cancelled_id, {"RUNNING"})
    assert httpx.post(f"{api}/tasks/{cancelled_id}:cancel", timeout=10).status_code == 200
    done = sacct_job(cluster, done_id, "COMPLETED")
    assert (done["AllocCPUS"], done["ReqMem"], done["Partition"]) == ("2", "1G", "tes"), done
    assert "cpu=2" in done["ReqTRES"] and "mem=1G" in done["ReqTRES"], done
    assert sacct_job(cluster, cancelled_id, "CANCELLED")["AllocCPUS"] == "1"


def test_the_resource_class_a_task_is_routed_to_becomes_its_slurm_request(cluster: Slurm, api: str) -> None:
    task_id = create(
        api, task("nproc", cpu_cores=2, ram_gb=1, backend_parameters={"pulsar_server": "slurm-c2-m1"})
    )
    done = wait_state(api, task_id, FINAL)
    assert done["state"] == "COMPLETE", done
    job = slurm_job_of(cluster, task_id)
    assert (job["NumCPUs"], job["MinMemoryNode"]) == ("2", "1G"), job
    assert "cpu=2,mem=1G" in job["TRES"]


def test_a_task_without_a_class_gets_the_default_manager_and_slurms_defaults(
    cluster: Slurm, api: str
) -> None:
    task_id = create(api, task("true", backend_parameters={"pulsar_server": "slurm"}))
    assert wait_state(api, task_id, FINAL)["state"] == "COMPLETE"
    job = slurm_job_of(cluster, task_id)
    assert job["NumCPUs"] == "1", job


def test_tightest_fit_sends_an_unpinned_task_to_the_slurm_class_of_its_size(cluster: Slurm, api: str) -> None:
    task_id = create(api, task("nproc", cpu_cores=2, ram_gb=1))  # no pulsar_server
    done = wait_state(api, task_id, FINAL)
    assert done["state"] == "COMPLETE", done
    job = slurm_job_of(cluster, task_id)
    assert (job["NumCPUs"], job["MinMemoryNode"]) == ("2", "1G"), job  # c2_m1, not c2_m2 (2G) or 1 CPU
    if cluster.accounting:  # and in Slurm's accounting, where slurmdbd runs
        row = sacct_job(cluster, task_id, "COMPLETED")
        assert (row["AllocCPUS"], row["ReqMem"]) == ("2", "1G"), row


def test_tightest_fit_sends_a_task_that_asks_for_nothing_to_the_default_manager(
    cluster: Slurm, api: str
) -> None:
    task_id = create(api, task("true"))
    assert wait_state(api, task_id, FINAL)["state"] == "COMPLETE"
    assert slurm_job_of(cluster, task_id)["NumCPUs"] == "1"
