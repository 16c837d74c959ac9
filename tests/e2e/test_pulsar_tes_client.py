"""Galaxy's way of using TES, end to end: Pulsar's own TES client against a real `tesp-api local`.

Galaxy's PulsarTesJobRunner hands each job to pulsar-app's coexecution TES client. That client POSTs
a task whose executors run pulsar's own CLI (``pulsar-submit`` stages the inputs in from Galaxy's job
files endpoint, the tool runs, ``pulsar-finish`` posts the outputs back), every executor with
``workdir: "/"``, all sharing the volume ``/pulsar_staging``; it then polls the task with view FULL
through pydantic-tes. Pulsar proves that with its integration tests (galaxyproject/pulsar
test/integration_test.py: ``test_tes_polling_integration``, ``test_coexecution_tes_polling_integration``
and ``test_coexecution_integration_tes_mq``). Those tests are not shipped on PyPI, but the driver they
call is: ``pulsar.client.test.check.run``. The cases below call it with the same options the upstream
cases pass (read from upstream, never copied), against tesp-api instead of Funnel:

- no tool container: one executor, ``pulsar-submit --wait`` runs the tool itself; status by TES polling;
- coexecution: three executors (stage-in, tool in its container, stage-out); status by TES polling;
- coexecution over MQ: the same task, but the in-container Pulsar publishes the job's status to
  RabbitMQ and the client listens there (skipped when no broker runs on 127.0.0.1:5672).

``check.run`` itself asserts that every output came back with the right contents (outputs posted to
the job files endpoint). Each case also asserts what tesp-api received (GET /tasks), so that a run
which silently bypassed tesp-api cannot pass: pulsar 0.16's driver passes ``tes_url`` but its
``build_client_manager`` picks the TES client only on ``tes_enabled`` (see ``_tes_enabled_shim``).

Runtime: bubblewrap (pinned; docker/podman installed on the machine would change what "auto" picks).
The image is ignored, so the executors run the host's userland; Pulsar's venv (this interpreter's
``sys.prefix``, and the Python it was made from) is bound read-only into the sandbox and put first on
PATH, because the executors call ``pulsar-submit``/``pulsar-finish``/``python`` by bare name. The
stage-in and stage-out executors must reach the job files endpoint on 127.0.0.1, so executors get the
host network (``runtime.network = "host"``). The coexecution case runs once more in real containers,
on a private dockerd and a private podman store (skipped, saying why, where they cannot run).
docs/clients.md says what each setting is for and what this test found.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from tests.services import rabbitmq
from tests.services.images import BUSYBOX_IMAGE
from tests.services.job_files_server import job_files_server
from tests.services.tesp_local import LocalServiceProcess

check = pytest.importorskip(
    "pulsar.client.test.check", reason="pulsar-app (the pulsar extra) is not installed"
)
pytest.importorskip("pydantictes", reason="pydantic-tes (a pulsar-app dependency) is not installed")

pytestmark = [pytest.mark.pulsar, pytest.mark.slow, pytest.mark.timeout(240)]

# What upstream passes to every TES case (their `external_queue_test_configuration` + run_job).
UPSTREAM_COMMON: dict[str, Any] = {
    "direct_interface": False,
    "test_requirement": False,
    "test_unicode": True,
    "test_env": True,
    "test_rewrite_action": True,
    "suppress_output": False,
    "private_token": None,
    "local_setup": True,
    "default_file_action": "remote_transfer",
    # upstream's _update_options_for_app: a coexecution client stages into the shared volume
    "jobs_directory": "/pulsar_staging",
}
TEST_TOOL_CONTAINER = "conda/miniconda3"  # upstream's tool container; bwrap ignores the image
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _pulsar_host_paths() -> list[str]:
    """The read-only host paths executors need to run pulsar's CLI: the venv and its base Python."""
    paths = [sys.prefix]
    if sys.base_prefix != sys.prefix and not sys.base_prefix.startswith("/usr"):
        paths.append(sys.base_prefix)  # the venv's python is a link into it (pyenv, a built Python)
    return paths


def _service_env() -> dict[str, str]:
    """TESP_API_* settings for `tesp-api local`: bwrap pinned, host network, Pulsar's venv visible."""
    return {
        "TESP_API_RUNTIME__TYPE": "bwrap",
        "TESP_API_RUNTIME__NETWORK": "host",
        "TESP_API_RUNTIME__BIND_HOST_PATHS": json.dumps(_pulsar_host_paths()),
        # after tesp-api's own --setenv PATH in the bwrap argv, so this one wins
        "TESP_API_RUNTIME__BWRAP_ARGS": json.dumps(["--setenv", "PATH", f"{sys.prefix}/bin:{DEFAULT_PATH}"]),
    }


@contextlib.contextmanager
def _local_service(state_dir: Path, env: dict[str, str]) -> Iterator[LocalServiceProcess]:
    proc = LocalServiceProcess(state_dir, **env)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        if os.environ.get("TESP_TEST_SHOW_LOGS"):
            print(proc.log_text())


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServiceProcess]:
    if shutil.which("bwrap") is None:
        pytest.skip("bwrap (bubblewrap) is not installed")
    with _local_service(tmp_path_factory.mktemp("tesp-local"), _service_env()) as proc:
        yield proc


# Real containers: no registry is reachable, so the images Pulsar's client names are the test's
# local/busybox:1 (tests/services/images.py) tagged with those names; the host's /usr, /lib and
# Pulsar's venv are mounted read-only into each container, in place of an image with pulsar-app
# (galaxy/pulsar-pod-staging holds it in production).
PULSAR_STAGING_IMAGE = "galaxy/pulsar-pod-staging:0.15.0.0"  # pulsar 0.16's PULSAR_CONTAINER_IMAGE


def _container_mounts() -> list[str]:
    args: list[str] = []
    for path in ("/usr", "/lib", "/lib64", *_pulsar_host_paths()):
        if os.path.exists(path):
            args += ["-v", f"{path}:{path}:ro"]
    return [*args, "-e", f"PATH={sys.prefix}/bin:{DEFAULT_PATH}"]


def _container_env(kind: str, binary: str, cli_env: dict[str, str]) -> dict[str, str]:
    args = _container_mounts()
    return {
        "TESP_API_RUNTIME__TYPE": kind,
        f"TESP_API_RUNTIME__{kind.upper()}_BIN": binary,
        "TESP_API_RUNTIME__ENV": "@json " + json.dumps(cli_env),  # dynaconf: a table from JSON
        "TESP_API_RUNTIME__NETWORK": "host",
        "TESP_API_RUNTIME__PULL_POLICY": "never",
        f"TESP_API_RUNTIME__{kind.upper()}_ARGS": json.dumps(args),
    }


@pytest.fixture(scope="module", params=["docker", "podman"])
def container_service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalServiceProcess]:
    """`tesp-api local` on a private dockerd or podman store (session fixtures of tests/conftest.py)."""
    kind: str = request.param
    if kind == "docker":
        daemon = request.getfixturevalue("docker_daemon")
        cli, binary, cli_env = daemon.cli, daemon.client, daemon.env
    else:
        store = request.getfixturevalue("podman_store")
        cli, binary, cli_env = store.cli, store.binary, store.env
    for name in (PULSAR_STAGING_IMAGE, TEST_TOOL_CONTAINER):
        cli("tag", BUSYBOX_IMAGE, name)
    with _local_service(
        tmp_path_factory.mktemp(f"tesp-local-{kind}"), _container_env(kind, binary, cli_env)
    ) as proc:
        yield proc


@pytest.fixture
def client_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """check.run makes its Galaxy-side job files under tempfile's directory: keep them in the test's."""
    root = tmp_path / "galaxy"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def _tes_enabled_shim(monkeypatch: pytest.MonkeyPatch, *, amqp_key_prefix: str | None = None) -> None:
    """pulsar 0.16: map ``tes_url`` to ``tes_enabled`` (what Galaxy's runner sets) for check.run.

    Without it build_client_manager(tes_url=...) returns a plain ClientManager, whose client talks to
    a Pulsar server directly: the "TES" case would then never send a task to tesp-api. For the MQ case
    the client also gets a queue prefix of its own (and hands it to the in-container Pulsar through
    ``amqp_key_prefix`` in the destination), so that the shared broker's other users never take our
    status updates.
    """
    real_build: Callable[..., Any] = check.build_client_manager
    real_extract: Callable[..., dict[str, Any]] = check.extract_client_options

    def build_client_manager(**kwargs: Any) -> Any:
        if kwargs.get("tes_url"):
            kwargs["tes_enabled"] = True
        if amqp_key_prefix and kwargs.get("amqp_url"):
            kwargs["amqp_key_prefix"] = amqp_key_prefix
        return real_build(**kwargs)

    def extract_client_options(options: Any) -> dict[str, Any]:
        client_options = real_extract(options)
        if amqp_key_prefix:
            client_options["amqp_key_prefix"] = amqp_key_prefix
        return client_options

    monkeypatch.setattr(check, "build_client_manager", build_client_manager)
    monkeypatch.setattr(check, "extract_client_options", extract_client_options)


def _task_ids(service: LocalServiceProcess) -> set[str]:
    answer = httpx.get(f"{service.url}/v1/tasks", params={"view": "MINIMAL", "page_size": 2000}, timeout=10)
    answer.raise_for_status()
    return {t["id"] for t in answer.json().get("tasks", [])}


def _full(service: LocalServiceProcess, task_id: str) -> dict[str, Any]:
    answer = httpx.get(f"{service.url}/v1/tasks/{task_id}", params={"view": "FULL"}, timeout=10)
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    return body


FAILED_FINAL = {"EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED"}


def _record_client_calls(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[str]]:
    """The ids tesp-api answered to the client's POST /tasks, and the views of the client's GETs
    that pydantic-tes parsed (TesClient.create_task / get_task: a view it cannot parse raises)."""
    from pydantictes.api import TesClient

    created: list[str] = []
    parsed_views: list[str] = []
    real_create: Callable[..., Any] = TesClient.create_task
    real_get: Callable[..., Any] = TesClient.get_task

    def create_task(self: Any, task: Any) -> Any:
        answer = real_create(self, task)
        created.append(answer.id)
        return answer

    def get_task(self: Any, has_task_id: Any, view: Any) -> Any:
        answer = real_get(self, has_task_id, view)
        parsed_views.append(str(view))
        return answer

    monkeypatch.setattr(TesClient, "create_task", create_task)
    monkeypatch.setattr(TesClient, "get_task", get_task)
    return created, parsed_views


def _fail_fast_waiter(
    monkeypatch: pytest.MonkeyPatch, service: LocalServiceProcess, created: list[str], how: list[str]
) -> None:
    """check.Waiter.wait, ending at once when tesp-api has failed the task.

    Upstream's loop waits for "complete"/"cancelled" only, for 120 s: a task that ended
    SYSTEM_ERROR (Pulsar's TES client maps it to "failed") would cost two minutes before the error.
    Same wait otherwise: TES polling through the client, or the MQ status callback.
    """

    def wait(self: Any, seconds: float = 120) -> dict[str, Any]:
        how.append("mq" if self.background else "polling")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.background:
                if self.event.wait(0.5):
                    final: dict[str, Any] = self.final_status
                    return final
            else:
                answer: dict[str, Any] = self.client.raw_check_complete()
                if answer["status"] in ("complete", "cancelled"):
                    return answer
                time.sleep(0.5)
            for task_id in created:
                state = _full(service, task_id)["state"]
                if state in FAILED_FINAL:
                    raise AssertionError(f"tesp-api ended task {task_id} {state}")
        raise AssertionError("Job not completed properly")

    monkeypatch.setattr(check.Waiter, "wait", wait)


def _wait_final(service: LocalServiceProcess, task_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _full(service, task_id)["state"] not in FAILED_FINAL | {"COMPLETE"}:
        if time.monotonic() > deadline:
            raise AssertionError(f"tesp-api task {task_id} not final {timeout} s after the client finished")
        time.sleep(0.2)


def _print_task(task: dict[str, Any]) -> None:
    """What tesp-api saw and did, for whoever reads a failure."""
    logs = task.get("logs") or [{}]
    print(f"tesp-api task {task['id']}: {task['state']}; system_logs={logs[0].get('system_logs')}")
    for i, ex_log in enumerate(logs[0].get("logs") or []):
        print(
            f"  executor {i}: exit {ex_log.get('exit_code')}\n    stdout: {ex_log.get('stdout', '')[-3000:]}"
            f"\n    stderr: {ex_log.get('stderr', '')[-3000:]}"
        )


class Outcome:
    """What one check.run did: the tasks tesp-api received (FULL views), how status reached the
    client, and the views of the client's own GETs of the task."""

    def __init__(self, tasks: list[dict[str, Any]], status_via: list[str], polled_views: list[str]) -> None:
        self.tasks = tasks
        self.status_via = status_via
        self.polled_views = polled_views


def _run_check(
    service: LocalServiceProcess, monkeypatch: pytest.MonkeyPatch, files_url: str, **case: Any
) -> Outcome:
    """check.run with upstream's options for one case; what tesp-api received for it."""
    # check.run starts with logging.basicConfig(level=DEBUG): not for the rest of the test session
    monkeypatch.setattr(logging, "basicConfig", lambda **_: None)
    created, polled_views = _record_client_calls(monkeypatch)
    status_via: list[str] = []
    _fail_fast_waiter(monkeypatch, service, created, status_via)
    options = SimpleNamespace(**UPSTREAM_COMMON, files_endpoint=files_url, tes_url=f"{service.url}/", **case)
    try:
        check.run(options)
        # Over MQ the client hears "complete" from the in-task Pulsar (pulsar-finish) a moment before
        # tesp-api has seen the last executor exit: the TES task is still RUNNING then.
        for task_id in created:
            _wait_final(service, task_id)
    finally:
        for task_id in created:
            _print_task(_full(service, task_id))
    listed = _task_ids(service)
    assert set(created) <= listed, f"GET /tasks does not list the tasks the client created: {created}"
    return Outcome([_full(service, task_id) for task_id in created], status_via, polled_views)


def _assert_galaxy_shaped(tasks: list[dict[str, Any]], *, executors: int) -> None:
    """tesp-api really ran the task, shaped as Pulsar's TES client shapes it, to COMPLETE."""
    assert len(tasks) == 1, f"expected exactly one task sent to tesp-api, got {len(tasks)}"
    task = tasks[0]
    assert task["state"] == "COMPLETE", task.get("logs")
    assert task["name"].startswith("pulsar-")
    assert task["volumes"] == ["/pulsar_staging/"]  # CONTAINER_STAGING_DIRECTORY, trailing slash and all
    assert [ex["workdir"] for ex in task["executors"]] == ["/"] * executors
    commands = [ex["command"][0] for ex in task["executors"]]
    expected = ["pulsar-submit"] if executors == 1 else ["pulsar-submit", "sh", "pulsar-finish"]
    assert commands == expected
    assert [lg["exit_code"] for lg in task["logs"][0]["logs"]] == [0] * executors


def test_tes_polling_without_tool_container_runs_through_tesp_api(
    service: LocalServiceProcess, client_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """upstream test_tes_polling_integration: one executor, pulsar-submit --wait runs the tool."""
    _tes_enabled_shim(monkeypatch)
    with job_files_server(client_root) as files:
        outcome = _run_check(
            service,
            monkeypatch,
            files.url,
            expecting_full_metadata=False,
            remote_pulsar_app_config=non_root_app_config(),
        )
        assert files.served_files, "Pulsar inside the task never fetched an input from the job files endpoint"
    _assert_galaxy_shaped(outcome.tasks, executors=1)
    assert outcome.status_via == ["polling"]
    assert outcome.polled_views and set(outcome.polled_views) == {"FULL"}


def test_coexecution_tes_polling_runs_three_executors_through_tesp_api(
    service: LocalServiceProcess, client_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """upstream test_coexecution_tes_polling_integration: stage-in, tool container, stage-out."""
    _tes_enabled_shim(monkeypatch)
    with job_files_server(client_root) as files:
        outcome = _run_check(
            service,
            monkeypatch,
            files.url,
            container=TEST_TOOL_CONTAINER,
            expecting_full_metadata=False,
            remote_pulsar_app_config=non_root_app_config(),
        )
        assert files.served_files, "Pulsar inside the task never fetched an input from the job files endpoint"
    _assert_galaxy_shaped(outcome.tasks, executors=3)
    assert outcome.tasks[0]["executors"][1]["image"] == TEST_TOOL_CONTAINER
    assert outcome.status_via == ["polling"]
    assert outcome.polled_views and set(outcome.polled_views) == {"FULL"}


def _mq_case(
    service: LocalServiceProcess, client_root: Path, monkeypatch: pytest.MonkeyPatch, **app_config: Any
) -> Outcome:
    """upstream test_coexecution_integration_tes_mq's options; queues of its own on the shared broker."""
    rabbitmq.require_broker()
    url = rabbitmq.URL + "/"  # Pulsar's kombu form of the default vhost
    prefix = rabbitmq.unique_prefix("galaxy")
    _tes_enabled_shim(monkeypatch, amqp_key_prefix=prefix)
    try:
        with job_files_server(client_root) as files:
            outcome = _run_check(
                service,
                monkeypatch,
                files.url,
                container=TEST_TOOL_CONTAINER,
                manager_url=url,
                remote_pulsar_app_config={"message_queue_url": url, **non_root_app_config(), **app_config},
            )
            assert files.served_files, (
                "Pulsar inside the task never fetched an input from the job files endpoint"
            )
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(
                rabbitmq.delete_queues(
                    [
                        f"{prefix}_{name}"
                        for name in ("setup", "status", "kill", "status_update", "status_update_ack")
                    ]
                )
            )
    return outcome


def test_coexecution_tes_with_status_over_mq_runs_through_tesp_api(
    service: LocalServiceProcess, client_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """upstream test_coexecution_integration_tes_mq: the in-task Pulsar publishes the job's status.

    Upstream leaves expecting_full_metadata at True here: check.run also asserts the tool's exit code
    (4) and stdout from the final status message, and collects the outputs through the client.
    """
    outcome = _mq_case(service, client_root, monkeypatch)
    _assert_galaxy_shaped(outcome.tasks, executors=3)
    assert outcome.status_via == ["mq"]


# Executors are not root (bwrap under a root runner runs them as runtime.sandbox_user; podman's "/" is
# dr-xr-xr-x with --cap-drop ALL): the in-task Pulsar's default tool_dependency_dir ("dependencies"
# below the workdir "/") cannot be made, so a Galaxy admin points it into the shared volume.
# A new dict per case: check.run adds its own manager settings to the one it is given.
def non_root_app_config() -> dict[str, Any]:
    return {"tool_dependency_dir": "/pulsar_staging/dependencies"}


def _container_app_config(service: LocalServiceProcess) -> dict[str, Any]:
    """What the in-task Pulsar needs on this runtime, as a Galaxy admin's destination pulsar_app_config."""
    if service.env["TESP_API_RUNTIME__TYPE"] == "podman":
        # podman shows a container's "/" as dr-xr-xr-x, and with --cap-drop ALL even root cannot write
        # there: the in-task Pulsar's default tool_dependency_dir ("dependencies" below the workdir "/")
        # fails with EACCES.
        return {"tool_dependency_dir": "/pulsar_staging/dependencies"}
    return {}


def test_coexecution_tes_polling_runs_in_real_containers(
    container_service: LocalServiceProcess, client_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coexecution case again, the three executors in real docker / podman containers."""
    _tes_enabled_shim(monkeypatch)
    extra: dict[str, Any] = {}
    app_config = _container_app_config(container_service)
    if app_config:
        extra["remote_pulsar_app_config"] = app_config
    with job_files_server(client_root) as files:
        outcome = _run_check(
            container_service,
            monkeypatch,
            files.url,
            container=TEST_TOOL_CONTAINER,
            expecting_full_metadata=False,
            **extra,
        )
        assert files.served_files, "Pulsar inside the task never fetched an input from the job files endpoint"
    _assert_galaxy_shaped(outcome.tasks, executors=3)
    assert outcome.tasks[0]["executors"][0]["image"] == PULSAR_STAGING_IMAGE


def test_galaxys_own_path_coexecution_with_mq_status_runs_in_real_containers(
    container_service: LocalServiceProcess, client_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What Galaxy's PulsarTesJobRunner (a message-queue runner) does, on docker / podman: the executors
    reach Galaxy's files endpoint and the broker from their containers."""
    outcome = _mq_case(
        container_service, client_root, monkeypatch, **_container_app_config(container_service)
    )
    _assert_galaxy_shaped(outcome.tasks, executors=3)
    assert outcome.status_via == ["mq"]
