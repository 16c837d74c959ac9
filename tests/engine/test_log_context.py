"""Log lines about a task name it: task id, worker id and Pulsar server (tesp_api/log_context.py).

Real engine runs on the real Pulsar of tests/engine/conftest.py (executors under bwrap), logging
configured by ``configure_logging`` exactly as ``tesp-api serve`` does, in text and JSON output.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tesp_api import log_context
from tesp_api.config.settings import LoggingSettings
from tesp_api.engine import Engine
from tesp_api.service import _CHATTY_LIBRARIES, configure_logging
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesState
from tests.engine.conftest import submit, wait_for
from tests.engine.serve_process import ServeProcess
from tests.services.pulsar import LocalPulsar

pytestmark = pytest.mark.pulsar

TEXT_LINE = re.compile(
    r"^\S+ \S+ (?P<level>[A-Z]+) (?P<logger>\S+): (?:\[(?P<context>[^\]]*)\] )?(?P<message>.*)$"
)


@pytest.fixture
def configured_output() -> Iterator[Any]:
    """``configure_logging`` (it replaces the root handlers) with its handler writing to a buffer;
    the root handlers and level are put back afterwards."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    # configure_logging at DEBUG also opens up the client libraries (botocore, aio-pika...): put those back
    # too, or every later test logs (and pytest keeps) each S3 chunk's DEBUG lines.
    libraries = {name: logging.getLogger(name).level for name in _CHATTY_LIBRARIES}
    buffers: list[io.StringIO] = []

    def configure(output_json: bool) -> io.StringIO:
        configure_logging(LoggingSettings(level="DEBUG", output_json=output_json))
        buffer = io.StringIO()
        handler = root.handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(buffer)
        buffers.append(buffer)
        return buffer

    yield configure
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved:
        root.addHandler(handler)
    root.setLevel(level)
    for name, lib_level in libraries.items():
        logging.getLogger(name).setLevel(lib_level)


def parse(output: str, output_json: bool) -> list[dict[str, str]]:
    """Each line as {"logger", "message", "task_id", "worker_id", "pulsar_server"} (the last three
    only when the line carries them)."""
    entries = []
    for line in output.splitlines():
        if output_json:
            entries.append(json.loads(line))
            continue
        m = TEXT_LINE.match(line)
        if m is None:  # a traceback's continuation lines
            continue
        entry = {"logger": m["logger"], "message": m["message"]}
        short = {v: k for k, v in log_context.FIELDS.items()}
        for part in (m["context"] or "").split():
            name, _, value = part.partition("=")
            entry[short[name]] = value
        entries.append(entry)
    return entries


@pytest.mark.parametrize("output_json", [False, True], ids=["text", "json"])
async def test_every_line_written_while_a_task_is_driven_names_the_task_worker_and_server(
    engine: Engine, store: SqliteTaskStore, configured_output: Any, output_json: bool
) -> None:
    buffer = configured_output(output_json)
    tid = await submit(store, {"executors": [{"image": "a", "command": ["echo", "hi"]}]})
    rec = await wait_for(store, tid)
    assert rec.state == TesState.COMPLETE
    entries = parse(buffer.getvalue(), output_json)
    about_task = [e for e in entries if tid in e["message"] or e["logger"] == "tesp_api.engine.driver"]
    # the driver's own end line and httpx's lines on the Pulsar job (code that knows nothing of tasks)
    assert any(
        e["logger"] == "tesp_api.engine.driver" and e["message"] == "COMPLETE, done" for e in about_task
    )
    assert any(e["logger"] == "httpx" for e in about_task)
    for e in about_task:
        assert e.get("task_id") == tid, e
        assert e.get("worker_id") == engine.worker_id, e
        assert e.get("pulsar_server") == "default", e


async def test_two_tasks_driven_at_once_keep_their_own_ids(
    engine: Engine, store: SqliteTaskStore, configured_output: Any
) -> None:
    buffer = configured_output(True)
    a, b = [
        await submit(store, {"executors": [{"image": "a", "command": ["sleep", "0.3"]}]}) for _ in range(2)
    ]
    await asyncio.gather(wait_for(store, a), wait_for(store, b))
    entries = parse(buffer.getvalue(), True)
    for tid in (a, b):
        mine = [e for e in entries if f"/jobs/{tid}" in e["message"]]
        assert mine, f"no Pulsar request line for {tid}"
        assert {e.get("task_id") for e in mine} == {tid}


def test_a_line_outside_any_task_has_no_context_fields(configured_output: Any) -> None:
    text = configured_output(False)
    logging.getLogger("tesp_api.test").warning("plain")
    assert text.getvalue().rstrip().endswith("tesp_api.test: plain")
    as_json = configured_output(True)
    logging.getLogger("tesp_api.test").warning("plain")
    assert set(json.loads(as_json.getvalue())) == {"time", "level", "logger", "message"}


def test_bound_fields_are_gone_after_the_block(configured_output: Any) -> None:
    buffer = configured_output(True)
    with log_context.bound(task_id="t-1", worker_id="w-1"):
        logging.getLogger("tesp_api.test").warning("inside")
    logging.getLogger("tesp_api.test").warning("after")
    inside, after = (json.loads(line) for line in buffer.getvalue().splitlines())
    assert (inside["task_id"], inside["worker_id"], "pulsar_server" in inside) == ("t-1", "w-1", False)
    assert "task_id" not in after and "worker_id" not in after


def test_only_the_known_fields_can_be_bound() -> None:
    with pytest.raises(TypeError, match="unknown log context field"):
        log_context.bind(task="t-1")


def wait_final(api: str, tid: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task: dict[str, Any] = httpx.get(f"{api}/tasks/{tid}").json()
        if task["state"] in {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"}:
            return task
        time.sleep(0.1)
    raise AssertionError(f"task {tid} not final after {timeout}s")


def test_the_served_apis_request_lines_carry_no_stale_task_id(tmp_path: Path, pulsar: LocalPulsar) -> None:
    """A real `tesp-api serve` (JSON output): the engine's lines name the task, while uvicorn's
    access lines and the API's own lines, even for requests made after the task ran, do not."""
    # DEBUG: the API's "task ... created" line is a DEBUG line (one access line per request at INFO).
    server = ServeProcess(
        tmp_path, pulsar.url, TESP_API_LOGGING__OUTPUT_JSON="true", TESP_API_LOGGING__LEVEL="DEBUG"
    )
    server.start()
    api = server.url + "/ga4gh/tes/v1"
    try:
        tid = httpx.post(
            f"{api}/tasks", json={"executors": [{"image": "a", "command": ["echo", "x"]}]}
        ).json()["id"]
        assert wait_final(api, tid)["state"] == "COMPLETE"
        assert httpx.get(f"{api}/tasks/{tid}").status_code == 200  # after the driver ended
        assert httpx.get(f"{api}/service-info").status_code == 200
    finally:
        server.stop()
    entries = [json.loads(line) for line in server.log_file.read_text().splitlines() if line.startswith("{")]
    access = [e for e in entries if e["logger"] == "uvicorn.access"]
    api_lines = [e for e in entries if e["logger"].startswith("tesp_api.api")]
    assert any(tid in e["message"] for e in access) and any(tid in e["message"] for e in api_lines)
    for e in access + api_lines:
        assert "task_id" not in e and "pulsar_server" not in e, e
    driver = [e for e in entries if e["logger"] == "tesp_api.engine.driver"]
    assert driver and all(e["task_id"] == tid and e["pulsar_server"] == "default" for e in driver)


@pytest.mark.amqp
async def test_the_amqp_consumer_started_inside_a_task_does_not_name_that_task_forever(
    tmp_path: Path, configured_output: Any
) -> None:
    """AmqpBackend starts lazily, on the first task's first call, so inside that task's driver: its
    consumer must not copy the task's context, or every later line it writes would name that task.
    Real RabbitMQ (127.0.0.1:5672), no Pulsar: a malformed status update makes the consumer log."""
    from tesp_api.pulsar.amqp import AmqpBackend
    from tesp_api.pulsar.amqp_client import AmqpClientOptions
    from tesp_api.pulsar.amqp_names import PulsarQueues
    from tesp_api.pulsar.amqp_staging import StagingServer, StagingTokens
    from tests.pulsar.test_amqp_client import publish_as_pulsar
    from tests.services import rabbitmq

    rabbitmq.require_broker()
    buffer = configured_output(True)
    queues = PulsarQueues.for_manager(amqp_key_prefix=rabbitmq.unique_prefix("lc"))
    staging = StagingServer(tmp_path / "received", StagingTokens(b"k" * 32, ttl=60))
    backend = AmqpBackend(
        "default", rabbitmq.URL, queues, staging, options=AmqpClientOptions(reconcile_after=3600)
    )
    try:
        with log_context.bound(task_id="first-task", worker_id="w", pulsar_server="default"):
            await backend.start()
        await publish_as_pulsar(queues, b"not json")
        for _ in range(200):
            if backend.client.stats.rejected:
                break
            await asyncio.sleep(0.05)
        assert backend.client.stats.rejected >= 1  # through the shared and the own queue
    finally:
        await backend.aclose()
        await rabbitmq.delete_queues([*queues.consumed_by_pulsar, queues.status_update])
    entries = parse(buffer.getvalue(), True)
    dropped = [e for e in entries if e["message"].startswith("dropping malformed status update")]
    assert dropped and all("task_id" not in e for e in dropped), dropped
