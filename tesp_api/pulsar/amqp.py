"""The Pulsar backend over AMQP: the engine's port (pulsar/port.py) on top of the message client.

How the port's calls map onto Pulsar's message protocol:

* ``prepare``: nothing is sent (Pulsar has no "setup" without a submit over AMQP). The job's files are
  recorded, on disk (``received/.setups/{job}.json``) so that a restarted service can still send the
  setup: small ones (the job script, TES ``content``) go inline in the setup message, local files
  are served to Pulsar by the staging server (amqp_staging.py) under a signed URL, URLs pass as is.
* ``submit``: ONE persistent setup message: create the job directory, fetch the inputs, run
  ``bash <job dir>/tool_files/<script>``, then POST the outputs (``JobSpec.outputs_for_remote_staging``)
  to the staging server. Once the broker confirmed it, the record is marked sent.
* ``status``: answered from the last status Pulsar pushed (no broker traffic while updates flow). A job
  this process knows nothing about (e.g. taken over after a restart) is asked about once with a status
  message, and the call waits for the answer. If Pulsar does not know the job (``lost``, said twice,
  or no answer) and its setup was recorded here but never confirmed sent (a crash between the store's
  RUNNING and the publish), the answer is ``preprocessing``: the same thing REST Pulsar says of a job
  set up but not submitted, so the driver submits it (once) from the record.
* ``cancel``: a kill message; the client then asks for the status soon and repeatedly, since Pulsar
  publishes nothing after a kill.
* ``fetch``: the file Pulsar POSTed (it uploads before it publishes the final status).
* ``clean``: forgets the job here and deletes the received files. Pulsar's message protocol has no
  "clean": its job directory stays on the Pulsar side (docs/amqp.md).

``wait_for_change`` lets a driver sleep until Pulsar pushes something new for a job, instead of polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tesp_api import log_context
from tesp_api.pulsar.amqp_client import (
    AmqpClientOptions,
    AmqpPulsarClient,
    PulsarAmqpUnavailable,
    PulsarStatusUpdate,
)
from tesp_api.pulsar.amqp_messages import (
    JOB_DIRECTORY_TOKEN,
    CollectedOutput,
    RemoteStaging,
    SetupMessage,
    StagedFile,
)
from tesp_api.pulsar.amqp_names import PulsarQueues
from tesp_api.pulsar.amqp_staging import StagingPathError, StagingServer, StagingTokens, check_job_id
from tesp_api.pulsar.port import BackendError, BackendUnavailable, JobSpec, JobStatus

if TYPE_CHECKING:
    from tesp_api.config.settings import PulsarServer, Settings

log = logging.getLogger(__name__)

# Where Pulsar puts a staged file of each kind, relative to the job directory.
_KIND_TO_TYPE = {"tool": "tool", "input": "input", "config": "config"}
_KIND_TO_DIR = {"tool": "tool_files", "input": "inputs", "config": "configs"}
# Reported for a job submitted by this process that Pulsar has not reported on yet.
_SUBMITTED = "queued"


@dataclass
class _PreparedFile:
    """One file of a prepared job: inline ``contents``, a local ``source`` (served by the staging
    server; its URL is signed at submit time) or a ``url`` Pulsar fetches itself."""

    name: str
    type: str
    contents: str | None = None
    source: str | None = None
    url: str | None = None


@dataclass
class _Prepared:
    files: list[_PreparedFile]
    outputs: list[str]
    sent: bool = False  # the broker confirmed the setup message

    @classmethod
    def from_json(cls, text: str) -> _Prepared:
        data = json.loads(text)
        return cls(
            files=[_PreparedFile(**f) for f in data["files"]],
            outputs=[str(o) for o in data["outputs"]],
            sent=bool(data.get("sent")),
        )

    def to_json(self) -> str:
        return json.dumps(
            {"files": [asdict(f) for f in self.files], "outputs": self.outputs, "sent": self.sent}
        )


class AmqpBackend:
    def __init__(
        self,
        name: str,
        amqp_url: str,
        queues: PulsarQueues,
        staging: StagingServer,
        *,
        options: AmqpClientOptions | None = None,
        status_timeout: float = 30.0,
        lost_recheck: float = 2.0,
    ) -> None:
        self.name = name
        self.queues = queues
        self.staging = staging
        self.status_timeout = status_timeout
        self.lost_recheck = lost_recheck
        # Job ids never start with ".", so this cannot collide with a job's received directory.
        self._setups_dir = staging.received_root / ".setups"
        self.client = AmqpPulsarClient(amqp_url, queues, self._on_update, options)
        self._started = False
        self._start_lock = asyncio.Lock()
        self._statuses: dict[str, JobStatus] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._submitted_unheard: set[str] = set()  # submitted here, nothing heard from Pulsar yet
        self._lost_once: set[str] = set()
        self._awaiting: set[str] = set()  # status requested by status(), answer not yet in
        self._prepared: dict[str, _Prepared] = {}

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and declare the queues (before any submit), start the staging server. Idempotent."""
        async with self._start_lock:
            if self._started:
                return
            try:
                with log_context.cleared():  # started lazily inside the first task's driver
                    await self.staging.start()
                    await self.client.start()
            except PulsarAmqpUnavailable as exc:
                await self.staging.stop()
                raise BackendUnavailable(f"Pulsar {self.name}: {exc}") from None
            self._started = True

    async def aclose(self) -> None:
        if self._started:
            await self.client.stop()
            await self.staging.stop()
            self._started = False

    # ---- updates pushed by Pulsar ----------------------------------------------------------------

    def _concerns(self, job_id: str) -> bool:
        """Updates of jobs this process neither drives nor asked about are another worker's business."""
        return (
            job_id in self._statuses
            or job_id in self._submitted_unheard
            or job_id in self._awaiting
            or job_id in self.client.tracked_jobs
        )

    async def _on_update(self, update: PulsarStatusUpdate) -> None:
        job_id = update.job_id
        if not self._concerns(job_id):
            return
        if (
            update.status == "lost"
            and job_id in self._submitted_unheard
            and job_id not in self._lost_once
            and not _had_job_directory(update.body)
        ):
            # Pulsar may handle a status request before the setup message waiting in another queue
            # (e.g. both queued while it was down): then it has no job directory yet. Believe such a
            # "lost" only when it is said twice. A "lost" for a job Pulsar had set up (it failed to
            # re-attach to it after a restart) is believed at once: Pulsar answers later status
            # requests for it with a stale "running" and never publishes a final state.
            self._lost_once.add(job_id)
            self.client.ask_again_later(job_id)
            log.info(
                "Pulsar %s: job %s reported lost before any other update; asking again later",
                self.name,
                job_id,
            )
            return
        previous = self._statuses.get(job_id)
        if previous is not None and previous.is_final and not update.is_final:
            return  # a late non-final update never moves a job out of its final state
        self._statuses[job_id] = JobStatus.from_pulsar(job_id, dict(update.body))
        self._submitted_unheard.discard(job_id)
        self._event(job_id).set()

    def _event(self, job_id: str) -> asyncio.Event:
        event = self._changed.get(job_id)
        if event is None:
            event = self._changed[job_id] = asyncio.Event()
        return event

    async def wait_for_change(self, job_id: str, timeout: float) -> bool:
        """Sleep until Pulsar pushes a new status for the job (True) or ``timeout`` passes (False)."""
        event = self._event(job_id)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        event.clear()
        return True

    # ---- the port --------------------------------------------------------------------------------

    async def prepare(self, spec: JobSpec) -> None:
        await self.start()
        files: list[_PreparedFile] = []
        try:
            for f in spec.files:
                kind = _KIND_TO_TYPE.get(f.kind)
                if kind is None:
                    raise BackendError(f"{f.name}: file kind {f.kind!r} cannot be staged over AMQP")
                if f.data is not None:
                    try:
                        text = f.data.decode("utf-8")
                    except UnicodeDecodeError:
                        raise BackendError(f"{f.name}: inline files must be UTF-8 text over AMQP") from None
                    files.append(_PreparedFile(f.name, kind, contents=text))
                elif f.source is not None:
                    files.append(_PreparedFile(f.name, kind, source=str(f.source)))
                elif f.url is not None:
                    files.append(_PreparedFile(f.name, kind, url=f.url))
                else:
                    raise BackendError(f"{f.name}: neither data, source nor url")
                self._staged(spec.job_id, files[-1])  # fails now, not at submit, on a bad name
        except (ValueError, StagingPathError) as exc:
            raise BackendError(f"job {spec.job_id}: {exc}") from None
        prepared = _Prepared(files, list(spec.outputs_for_remote_staging))
        await asyncio.to_thread(self._save_prepared, spec.job_id, prepared)
        self._prepared[spec.job_id] = prepared

    def _staged(self, job_id: str, f: _PreparedFile) -> StagedFile:
        kind: Any = f.type
        if f.contents is not None:
            return StagedFile(f.name, contents=f.contents, type=kind)
        if f.source is not None:
            url = self.staging.register_input(job_id, f.name, Path(f.source))  # a freshly signed URL
            return StagedFile(f.name, url=url, type=kind)
        return StagedFile(f.name, url=f.url, type=kind)

    # ---- the prepared setup, on disk ---------------------------------------------------------------

    def _setup_file(self, job_id: str) -> Path:
        return self._setups_dir / f"{check_job_id(job_id)}.json"

    def _save_prepared(self, job_id: str, prepared: _Prepared) -> None:
        """Through a temporary file and a rename: a crash leaves the old record or the new one."""
        target = self._setup_file(job_id)
        self._setups_dir.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        partial.write_text(prepared.to_json())
        partial.replace(target)

    def _load_prepared(self, job_id: str) -> _Prepared | None:
        prepared = self._prepared.get(job_id)
        if prepared is not None:
            return prepared
        try:
            prepared = _Prepared.from_json(self._setup_file(job_id).read_text())
        except (OSError, ValueError, KeyError, TypeError, StagingPathError):
            return None
        self._prepared[job_id] = prepared
        return prepared

    async def submit(self, spec: JobSpec) -> None:
        await self.start()
        prepared = await asyncio.to_thread(self._load_prepared, spec.job_id)
        if prepared is None:
            raise BackendError(f"job {spec.job_id} was never prepared (AMQP keeps no job before submit)")
        try:
            outputs = [CollectedOutput(client_path=o, workdir_path=o) for o in prepared.outputs]
            files = [self._staged(spec.job_id, f) for f in prepared.files]
        except (ValueError, StagingPathError) as exc:
            raise BackendError(str(exc)) from None
        setup = SetupMessage(
            job_id=spec.job_id,
            command_line=spec.command_line(f"{JOB_DIRECTORY_TOKEN}/{_KIND_TO_DIR['tool']}"),
            remote_staging=RemoteStaging(
                files=files,
                outputs=outputs,
                files_endpoint=self.staging.files_endpoint(spec.job_id) if outputs else None,
            ),
        )
        self._statuses.pop(spec.job_id, None)
        self._submitted_unheard.add(spec.job_id)
        self._lost_once.discard(spec.job_id)
        try:
            await self.client.submit(setup)
        except PulsarAmqpUnavailable as exc:
            self._submitted_unheard.discard(spec.job_id)
            raise BackendUnavailable(f"Pulsar {self.name}: {exc}") from None
        prepared.sent = True
        await asyncio.to_thread(self._save_prepared, spec.job_id, prepared)

    async def status(self, job_id: str) -> JobStatus:
        await self.start()
        known = self._statuses.get(job_id)
        if known is not None:
            return known
        if job_id in self._submitted_unheard:
            return JobStatus(job_id=job_id, status=_SUBMITTED, raw={"status": _SUBMITTED, "pushed": False})
        # Nothing known here (a job taken over from another worker or after a restart): ask Pulsar.
        known = await self._ask(job_id)
        if known is None or (known.status == "lost" and not _had_job_directory(known.raw)):
            prepared = await asyncio.to_thread(self._load_prepared, job_id)
            if prepared is not None and known is not None:
                # A job prepared here (maybe by this service before a restart): Pulsar may answer
                # before it handled the setup still waiting in its queue (both sent while it was
                # down). Only a "lost" said twice means the setup never arrived.
                await asyncio.sleep(self.lost_recheck)
                # An answer identical to the first is deduplicated by the client (no answer): the
                # first "lost" stands.
                known = await self._ask(job_id) or known
            unknown = known is None or known.status == "lost"
            if prepared is not None and not prepared.sent and unknown:
                self._statuses.pop(job_id, None)
                log.warning(
                    "Pulsar %s does not know job %s and its setup was never confirmed sent "
                    "(a restart before the publish): reporting it set up, not submitted",
                    self.name,
                    job_id,
                )
                return JobStatus(
                    job_id=job_id,
                    status="preprocessing",
                    raw={"status": "preprocessing", "setup_unsent": True},
                )
            if prepared is not None and prepared.sent and known is not None and known.status == "lost":
                # The broker confirmed the setup, but Pulsar has not taken it in yet (it answers
                # status requests and setups from separate queues, and was down or is slow): not
                # lost. Watched from now on as if submitted by this process: its pushed updates are
                # taken, a first bare "lost" is asked about again, silence is asked about after
                # amqp_reconcile_after.
                self._statuses.pop(job_id, None)
                self._lost_once.discard(job_id)
                self._submitted_unheard.add(job_id)
                self.client.track(job_id)
                log.info(
                    "Pulsar %s does not know job %s yet, but its setup was confirmed sent: "
                    "waiting for Pulsar to take it in",
                    self.name,
                    job_id,
                )
                return JobStatus(
                    job_id=job_id, status=_SUBMITTED, raw={"status": _SUBMITTED, "pushed": False}
                )
        if known is None:
            raise BackendUnavailable(f"Pulsar {self.name}: no status answer for job {job_id}")
        if not known.is_final:
            self.client.track(job_id)  # a job taken over: watch it for silence from now on
        return known

    async def _ask(self, job_id: str) -> JobStatus | None:
        """One status request; Pulsar's answer, or None when none came within ``status_timeout``."""
        self._statuses.pop(job_id, None)
        event = self._event(job_id)
        event.clear()
        self._awaiting.add(job_id)
        try:
            await self.client.request_status(job_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), self.status_timeout)
        except PulsarAmqpUnavailable as exc:
            raise BackendUnavailable(f"Pulsar {self.name}: {exc}") from None
        finally:
            self._awaiting.discard(job_id)
        return self._statuses.get(job_id)

    async def cancel(self, job_id: str) -> None:
        await self.start()
        try:
            await self.client.kill(job_id)
        except PulsarAmqpUnavailable as exc:
            raise BackendUnavailable(f"Pulsar {self.name}: {exc}") from None

    async def fetch(self, job_id: str, name: str, dest: Path) -> bool:
        try:
            received = self.staging.received_file(job_id, name)
        except StagingPathError:
            return False
        if received is None:
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(shutil.copyfile, received, dest)
        return True

    async def clean(self, job_id: str) -> None:
        self.client.forget(job_id)
        self._statuses.pop(job_id, None)
        self._changed.pop(job_id, None)
        self._submitted_unheard.discard(job_id)
        self._lost_once.discard(job_id)
        self._prepared.pop(job_id, None)
        with contextlib.suppress(StagingPathError):
            self.staging.forget(job_id)
            with contextlib.suppress(FileNotFoundError):
                self._setup_file(job_id).unlink()


def _had_job_directory(body: Any) -> bool:
    """Whether Pulsar's status says the job directory existed (so Pulsar had taken the setup in)."""
    return bool(isinstance(body, dict) and body.get("job_directory_contents"))


def build_amqp_backend(settings: Settings, server: PulsarServer) -> AmqpBackend:
    """The engine's factory (engine.build_backends): one backend, with its own staging server, per
    AMQP Pulsar server. Nothing connects here; the first call does."""
    assert server.amqp_url is not None
    pulsar = settings.pulsar
    work_dir = Path(settings.engine.work_dir)
    tokens = StagingTokens.from_key_file(work_dir / "pulsar-staging.key", settings.transfer.signed_url_ttl)
    staging = StagingServer(
        work_dir / "pulsar-received" / server.name,
        tokens,
        listen=server.staging_listen or "127.0.0.1:0",
        public_url=server.staging_url,
    )
    options = AmqpClientOptions(
        reconcile_after=pulsar.amqp_reconcile_after,
        reconcile_max_per_minute=pulsar.amqp_reconcile_max_per_minute,
        publish_timeout=pulsar.client_timeout,
        connect_timeout=pulsar.client_timeout,
        connection_name=f"tesp-api:{server.name}",
    )
    return AmqpBackend(
        server.name,
        server.amqp_url.get_secret_value(),
        PulsarQueues.for_manager(server.manager, server.amqp_key_prefix),
        staging,
        options=options,
        status_timeout=pulsar.client_timeout,
    )
