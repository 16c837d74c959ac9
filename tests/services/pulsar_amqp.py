"""A real Pulsar (pulsar-app) in AMQP mode, run as a plain child process: ``pulsar-main -c DIR``,
through ``python -m tesp_api.pulsar.serve --pulsar-main`` (job scripts read, not exec'd: no "Text
file busy", tesp_api/pulsar/serve.py) unless ``exec_job_scripts``.

There is no container engine on the build machines, so Pulsar runs from the shared virtualenv with its
state (staging, persistence, HOME) in a temporary directory. It talks to the shared RabbitMQ broker on
127.0.0.1:5672 under a queue prefix of its own (``amqp_key_prefix``), so tests never see each other's
messages. Pulsar has no HTTP port in this mode: it is *ready* once its setup, kill and status queues
have a consumer. It is stopped by signalling its process group (never by name); job processes (Pulsar
starts each in a process group of its own) are killed at :meth:`PulsarAmqp.stop` from the pid files
Pulsar keeps in the job directories.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika

from tesp_api.local import job_process_groups
from tesp_api.pulsar.serve import MAIN_FLAG
from tests.services import rabbitmq

PULSAR_MAIN = str(Path(sys.executable).with_name("pulsar-main"))
PULSAR_QUEUES = ("setup", "kill", "status")


@dataclass
class PulsarAmqp:
    directory: Path
    key_prefix: str
    amqp_url: str = rabbitmq.URL
    manager: str = "_default_"
    num_concurrent_jobs: int = 4
    exec_job_scripts: bool = False  # Pulsar's own pulsar-main, which execs each job's command.sh
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log_handle: object | None = field(default=None, init=False)

    @property
    def staging_directory(self) -> Path:
        return self.directory / "files" / "staging"

    @property
    def log_path(self) -> Path:
        return self.directory / "pulsar.log"

    def queue_name(self, name: str) -> str:
        return f"{self.key_prefix}_{name}"

    def write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "home").mkdir(exist_ok=True)
        (self.directory / "dependencies").mkdir(exist_ok=True)
        config = "\n".join(
            [
                f"staging_directory: {self.staging_directory}",
                f"persistence_directory: {self.directory / 'files' / 'persisted_data'}",
                f"tool_dependency_dir: {self.directory / 'dependencies'}",
                "conda_auto_init: false",
                "conda_auto_install: false",
                f"message_queue_url: {self.amqp_url}",
                f"amqp_key_prefix: {self.key_prefix}",
                # Pulsar's outbox retries undelivered status updates (e.g. while the broker restarts).
                "status_outbox_drain_interval: 1.0",
                "managers:",
                f"  {self.manager}:",
                "    type: queued_python",
                f"    num_concurrent_jobs: {self.num_concurrent_jobs}",
                # Staging calls to tesp-api are retried (e.g. while it restarts), as a deployment should.
                "    preprocess_action_max_retries: 3",
                "    preprocess_action_interval_start: 1",
                "    postprocess_action_max_retries: 5",
                "    postprocess_action_interval_start: 1",
                "    postprocess_action_interval_max: 5",
                "",
            ]
        )
        (self.directory / "app.yml").write_text(config)

    def main_command(self) -> list[str]:
        """pulsar-main, as ``python -m tesp_api.pulsar.serve --pulsar-main`` unless ``exec_job_scripts``."""
        if self.exec_job_scripts:
            return [PULSAR_MAIN]
        return [sys.executable, "-m", "tesp_api.pulsar.serve", MAIN_FLAG]

    async def start(self, ready_timeout: float = 60.0) -> None:
        if not (self.directory / "app.yml").exists():
            self.write_config()
        env = dict(os.environ, HOME=str(self.directory / "home"))
        self._log_handle = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*self.main_command(), "-c", str(self.directory)],
            cwd=self.directory,
            env=env,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as a whole by stop()
        )
        await self._wait_ready(ready_timeout)

    async def _wait_ready(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"pulsar-main exited early; see {self.log_path}")
            if await self._consumers_present():
                return
            await asyncio.sleep(0.3)
        raise TimeoutError(f"pulsar-main not consuming after {timeout}s; see {self.log_path}")

    async def _consumers_present(self) -> bool:
        try:
            connection = await aio_pika.connect(self.amqp_url)
        except Exception:  # noqa: BLE001 - broker briefly unavailable: not ready yet
            return False
        try:
            for name in PULSAR_QUEUES:
                channel = await connection.channel()
                try:
                    queue = await channel.declare_queue(self.queue_name(name), passive=True)
                except Exception:  # noqa: BLE001 - not declared yet
                    return False
                if not queue.declaration_result.consumer_count:
                    return False
            return True
        finally:
            await connection.close()

    async def stop(self, kill_jobs: bool = True) -> None:
        """Stop Pulsar (its process group); with kill_jobs also the job processes it left running."""
        process = self.process
        self.process = None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            for _ in range(100):
                if process.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await asyncio.to_thread(process.wait, 10)
        if self._log_handle is not None:
            self._log_handle.close()  # type: ignore[attr-defined]
            self._log_handle = None
        if kill_jobs:
            self.kill_job_processes()

    async def restart(self, ready_timeout: float = 60.0) -> None:
        await self.stop(kill_jobs=False)
        await self.start(ready_timeout)

    def kill_job_processes(self) -> None:
        for pgid in job_process_groups(self.staging_directory).values():  # the one discovery, cwd-checked
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)

    def job_ids_with_pid_files(self) -> list[str]:
        return sorted(
            {p.relative_to(self.staging_directory).parts[0] for p in self.staging_directory.glob("*/**/pid")}
        )

    async def delete_queues(self) -> None:
        await rabbitmq.delete_queues(
            [self.queue_name(n) for n in (*PULSAR_QUEUES, "status_update", "status_update_ack")],
            self.amqp_url,
        )


# ---- helpers the AMQP tests share -----------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StagingHttpServer:
    """What Pulsar talks to for remote staging: GET /inputs/<name> serves files from ``input_dir``;
    POST /files?path=...&file_type=... takes Pulsar's multipart upload (field ``file``) into
    ``output_dir/<path>``. A real uvicorn server on 127.0.0.1 and a free port, run in the test's loop.
    """

    def __init__(self, root: Path) -> None:
        self.input_dir = root / "served"
        self.output_dir = root / "received"
        self.input_dir.mkdir(parents=True, exist_ok=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.uploads: list[tuple[str, str]] = []  # (path, file_type) in arrival order
        self._server: object | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def input_url(self, name: str) -> str:
        return f"{self.base_url}/inputs/{name}"

    @property
    def files_endpoint(self) -> str:
        return f"{self.base_url}/files?token=test-token"

    def _app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import FileResponse, PlainTextResponse, Response
        from starlette.routing import Route

        async def get_input(request: Request) -> Response:
            name = request.path_params["name"]
            path = (self.input_dir / name).resolve()
            if self.input_dir.resolve() not in path.parents or not path.is_file():
                return PlainTextResponse("not found", status_code=404)
            return FileResponse(path)

        async def post_file(request: Request) -> Response:
            if request.query_params.get("token") != "test-token":
                return PlainTextResponse("forbidden", status_code=403)
            rel = request.query_params.get("path", "")
            target = (self.output_dir / rel.lstrip("/")).resolve()
            if self.output_dir.resolve() not in target.parents:
                return PlainTextResponse("bad path", status_code=400)
            form = await request.form()
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                return PlainTextResponse("no file", status_code=400)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(await upload.read())
            self.uploads.append((rel, request.query_params.get("file_type", "")))
            return PlainTextResponse("ok")

        return Starlette(
            routes=[
                Route("/inputs/{name:path}", get_input, methods=["GET"]),
                Route("/files", post_file, methods=["POST"]),
            ]
        )

    async def start(self) -> None:
        import uvicorn

        config = uvicorn.Config(
            self._app(), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        server = uvicorn.Server(config)
        self._server = server
        self._task = asyncio.create_task(server.serve())
        while not server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True  # type: ignore[attr-defined]
        if self._task is not None:
            await self._task


class UpdateRecorder:
    """An ``on_update`` callback that keeps every update and lets a test wait for one."""

    def __init__(self) -> None:
        self.updates: list[object] = []
        self._changed = asyncio.Event()

    async def __call__(self, update: object) -> None:
        self.updates.append(update)
        self._changed.set()

    def statuses(self, job_id: str) -> list[str]:
        return [u.status for u in self.updates if u.job_id == job_id]  # type: ignore[attr-defined]

    async def wait_for(self, job_id: str, statuses: set[str], timeout: float = 60.0) -> object:
        """The first update of ``job_id`` whose status is in ``statuses`` (a guard timeout, not a check)."""

        async def _wait() -> object:
            while True:
                for update in self.updates:
                    if update.job_id == job_id and update.status in statuses:  # type: ignore[attr-defined]
                        return update
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(_wait(), timeout)


@contextlib.asynccontextmanager
async def running_pulsar_amqp(
    state_dir: Path, tag: str, *, exec_job_scripts: bool = False
) -> AsyncIterator[PulsarAmqp]:
    """A started AMQP Pulsar on its own queue prefix; stopped and its queues deleted afterwards."""
    server = PulsarAmqp(state_dir, key_prefix=rabbitmq.unique_prefix(tag), exec_job_scripts=exec_job_scripts)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        await server.delete_queues()
