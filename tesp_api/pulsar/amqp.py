"""The Pulsar backend over AMQP: the engine's port (pulsar/port.py) on top of the message client.

How the port's calls map onto Pulsar's message protocol:

* ``prepare``: nothing is sent (Pulsar has no "setup" without a submit over AMQP). The job's files are
  put in the staging directory (shared by the replicas, amqp_staging.py) and the setup is recorded in
  the task's store record (``backend["amqp_setup"]``), so that any replica can still send it: small
  files (the job script, TES ``content``) go inline in the setup message, local files are served to
  Pulsar by the staging server of whichever replica Pulsar reaches, under a signed URL; URLs pass as is.
* ``submit``: ONE persistent setup message: create the job directory, fetch the inputs, run
  ``bash <job dir>/tool_files/<script>``, then POST the outputs (``JobSpec.outputs_for_remote_staging``)
  to the staging server. Once the broker confirmed it, the record is marked sent.
* ``status``: answered from the last status Pulsar pushed (no broker traffic while updates flow). A job
  this process knows nothing about (e.g. taken over after a restart) is asked about once with a status
  message, and the call waits for the answer. If Pulsar does not know the job (a ``lost`` of a job it
  has not launched, said twice, or no answer) and its setup was recorded here but never confirmed sent (a crash between the store's
  "submitting" and the publish), the answer is ``preprocessing``: the same thing REST Pulsar says of a job
  set up but not submitted, so the driver submits it (once) from the record.
* ``cancel``: a kill message; the client then asks for the status soon and repeatedly, since Pulsar
  publishes nothing after a kill.
* ``fetch``: the file Pulsar POSTed (it uploads before it publishes the final status) to any replica's
  staging server, from the shared staging directory.
* ``clean``: forgets the job here and deletes the received files. Pulsar's message protocol has no
  "clean": its job directory stays on the Pulsar side (docs/amqp.md).

``wait_for_change`` lets a driver sleep until Pulsar pushes something new for a job, instead of polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import shutil
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
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
from tesp_api.pulsar.amqp_staging import (
    StagingPathError,
    StagingServer,
    StagingTokens,
    check_job_id,
    safe_relative_path,
)
from tesp_api.pulsar.liveness import META_NAME
from tesp_api.pulsar.port import (
    LOST_REASON_KEY,
    RESUBMIT_KEY,
    BackendError,
    BackendUnavailable,
    JobSpec,
    JobStatus,
    task_id_of,
)
from tesp_api.store.port import StoreError

if TYPE_CHECKING:
    from tesp_api.config.settings import PulsarServer, Settings
    from tesp_api.store.port import TaskStore

log = logging.getLogger(__name__)

# Where Pulsar puts a staged file of each kind, relative to the job directory.
_KIND_TO_TYPE = {"tool": "tool", "input": "input", "config": "config"}
_KIND_TO_DIR = {"tool": "tool_files", "input": "inputs", "config": "configs"}
# Reported for a job submitted by this process that Pulsar has not reported on yet.
_SUBMITTED = "queued"
# A job Pulsar answers "preprocessing" for this long with no other update: set up once more, then lost.
SETUP_STALLED_REASON = "Pulsar stopped while setting the job up; never started"
# What Pulsar's stateful manager writes in the job directory once it launched the job (JOB_FILE_PREPROCESSED).
PULSAR_LAUNCHED_FILE = "preprocessed"
# Said (system_logs) when a job Pulsar lost track of had finished: its setup is sent once more.
FINISHED_RESENT_REASON = (
    "Pulsar lost track of the job after it had finished (Pulsar was restarted; its job directory holds "
    "the exit code and the runner's results): its setup is sent once more, so that Pulsar sends the "
    "results back (the runner does not run again)"
)
# Reported (lost) when Pulsar sent nothing back within setup_lost_after of that re-send.
FINISHED_NOT_RETURNED_REASON = (
    "Pulsar lost track of the job after it had finished (Pulsar was restarted) and did not send its "
    "results back after its setup was sent once more"
)
_FINISHED_UNREPORTED = "tesp_finished_unreported"  # JobStatus.raw mark of such a job (internal)
# Where the re-setup has Pulsar copy the first run's results (inputs/, which Pulsar's job script does
# not reset), and the runner's results in the working directory (engine/runner/tes_runner.py layout).
RESTORE_DIR = "tes-restore"
_RESULT_DIR = "tes-out/"
# Keys of the task's store record (TaskRecord.backend) this backend owns.
SETUP_KEY = "amqp_setup"  # + "-r<n>" for a re-run's job (port.rerun_job_id): one record, one key per job
RECEIVED_KEY = "amqp_received_by:"  # + replica: when that replica first took in an upload of the job
STAGING_SECRET = "amqp-staging"  # noqa: S105 - the secret's name, not a secret; the staging servers' signing key (store.get_or_create_secret)


@dataclass
class _PreparedFile:
    """One file of a prepared job. ``inline``: small text sent inside the setup message (kept until
    then in the staging directory, not in the store); ``staged``: a file in the staging directory,
    served to Pulsar under a URL signed at submit time; ``url``: one Pulsar fetches itself.
    ``contents`` / ``source`` are what records of earlier versions hold (text / a local path)."""

    name: str
    type: str
    contents: str | None = None
    source: str | None = None
    url: str | None = None
    inline: bool = False
    staged: bool = False


@dataclass
class _Prepared:
    files: list[_PreparedFile]
    outputs: list[str]
    sent: bool = False  # the broker confirmed the setup message

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> _Prepared:
        return cls(
            files=[_PreparedFile(**f) for f in data["files"]],
            outputs=[str(o) for o in data["outputs"]],
            sent=bool(data.get("sent")),
        )

    def to_dict(self) -> dict[str, Any]:
        files = [{k: v for k, v in asdict(f).items() if v not in (None, False)} for f in self.files]
        return {"files": files, "outputs": self.outputs, "sent": self.sent}

    @classmethod
    def from_json(cls, text: str) -> _Prepared:
        return cls.from_dict(json.loads(text))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


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
        unheard_lost_grace: float = 600.0,
        setup_stall_deadline: float = 120.0,
        setup_lost_after: float | None = None,
        store: TaskStore | None = None,
        legacy_key_file: Path | None = None,
    ) -> None:
        """With ``store``, everything another replica needs to take a job over is in the store (the
        setup record, the staging key, who received uploads) or in the staging directory; without
        one (tests, embedding), setup records are JSON files under the staging directory and the key
        is the one ``staging`` was given. ``unheard_lost_grace``: how long after Pulsar's first "lost"
        of a job it has not launched that "lost" still means "Pulsar has not taken the setup in
        yet" (it waits in Pulsar's setup queue, e.g. a backlog after a broker restart) rather than
        a lost job (see ``_doubted_lost``). ``setup_stall_deadline`` (``pulsar.lost_job_deadline``): how
        long Pulsar may answer ``preprocessing`` with no other update before the job counts as stalled
        in its setup (see ``_stalled_setup``); ``setup_lost_after`` (default: 10 x that, at least 30
        minutes): how long after the setup was sent once more a job still ``preprocessing`` is lost. Long,
        because a setup that is merely slow (large inputs Pulsar fetches) looks the same and must not be
        cut off."""
        self.name = name
        self.store = store
        self._legacy_key_file = legacy_key_file
        self.queues = queues
        self.staging = staging
        self.status_timeout = status_timeout
        self.lost_recheck = lost_recheck
        self.unheard_lost_grace = unheard_lost_grace
        self.setup_stall_deadline = setup_stall_deadline
        self.setup_lost_after = (
            setup_lost_after if setup_lost_after is not None else max(10 * setup_stall_deadline, 1800.0)
        )
        # Job ids never start with ".", so this cannot collide with a job's received directory.
        self._setups_dir = staging.received_root / ".setups"
        self.client = AmqpPulsarClient(amqp_url, queues, self._on_update, options)
        self._started = False
        self._start_lock = asyncio.Lock()
        self._serving = False  # the staging server runs (start_serving)
        self._staging_lock = asyncio.Lock()
        self._statuses: dict[str, JobStatus] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._submitted_unheard: set[str] = set()  # submitted here, nothing heard from Pulsar yet
        self._lost_since: dict[str, float] = {}  # loop time of the first doubted "lost" (_doubted_lost)
        self._awaiting: set[str] = set()  # status requested by status(), answer not yet in
        self._preprocessing_since: dict[str, float] = {}  # loop time Pulsar first said "preprocessing"
        self._setup_resent: set[str] = set()  # stalled in Pulsar's setup: its setup was sent once more
        # Finished, then lost by a Pulsar restart: loop time its setup was handed for a re-send (None:
        # not yet). Kept across that re-send (submit), cleared by clean.
        self._finished_resent: dict[str, float | None] = {}
        self._restore: dict[str, list[StagedFile]] = {}  # ... and its results, for that re-setup
        self._prepared: dict[str, _Prepared] = {}
        self._warned_unshared: set[str] = set()
        if store is not None:
            staging.on_received = self._record_received

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start_serving(self) -> None:
        """Start the staging server alone (no broker needed), with the store's key. The engine calls
        this when it starts (Engine.start): behind one ``staging_url`` for all replicas, a restarted
        replica must take in Pulsar's uploads and serve inputs at once, not only once its own engine
        first drives an AMQP task (tasks of a killed replica ended SYSTEM_ERROR meanwhile). Idempotent."""
        async with self._staging_lock:
            if self._serving:
                return
            if self.store is not None:
                await self._load_shared_key()
            try:
                with log_context.cleared():  # may be started lazily inside a task's driver
                    await self.staging.start()
            except OSError as exc:
                raise BackendUnavailable(
                    f"Pulsar {self.name}: the staging server cannot listen: {exc}"
                ) from None
            self._serving = True

    async def start(self) -> None:
        """Start the staging server (if not yet) and connect, declaring the queues before any submit.
        Idempotent."""
        async with self._start_lock:
            if self._started:
                return
            await self.start_serving()
            try:
                with log_context.cleared():  # started lazily inside the first task's driver
                    await self.client.start()
            except PulsarAmqpUnavailable as exc:
                raise BackendUnavailable(f"Pulsar {self.name}: {exc}") from None
            self._started = True

    async def _load_shared_key(self) -> None:
        """Sign with the store's key, so any replica verifies what another signed; a key file of an
        earlier version is still accepted (URLs given to Pulsar before an upgrade stay valid)."""
        assert self.store is not None
        try:
            key = await self.store.get_or_create_secret(STAGING_SECRET)
        except StoreError as exc:
            raise BackendUnavailable(f"Pulsar {self.name}: the task store: {exc}") from None
        legacy = None
        if self._legacy_key_file is not None:
            legacy = await asyncio.to_thread(StagingTokens.read_key_file, self._legacy_key_file)
        ttl = self.staging.tokens.ttl
        self.staging.tokens = StagingTokens(key, ttl, also_accepted=[legacy] if legacy else [])

    async def aclose(self) -> None:
        if self._started:
            await self.client.stop()
            self._started = False
        if self._serving:
            await self.staging.stop()
            self._serving = False

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
        if self._doubted_lost(update):
            return
        if self._finished_unreported(update):
            return
        previous = self._statuses.get(job_id)
        if previous is not None and previous.is_final and not update.is_final:
            return  # a late non-final update never moves a job out of its final state
        self._statuses[job_id] = JobStatus.from_pulsar(job_id, dict(update.body))
        if update.status == "preprocessing":  # repeated identical answers do not reset the clock
            self._preprocessing_since.setdefault(job_id, asyncio.get_running_loop().time())
        else:
            self._preprocessing_since.pop(job_id, None)
        if update.status != "lost":  # Pulsar has the job: a later bare "lost" is doubted afresh
            self._lost_since.pop(job_id, None)
        self._submitted_unheard.discard(job_id)
        self._event(job_id).set()

    def _finished_unreported(self, update: PulsarStatusUpdate) -> bool:
        """A "lost" of a launched job that had finished (kill -9 of Pulsar while it ran; the job's
        process group lived on and ended while Pulsar was down, or before Pulsar saw it end): the
        restarted Pulsar cannot re-attach (``recover_active_jobs``: its ``command_line`` is gone),
        publishes "lost" and takes the job off its active list, and would never upload its outputs.
        Its message shows the job finished: a ``returncode`` (Pulsar's job script writes
        ``return_code`` when the command exits) and the runner's ``tes-meta.tar`` in the working
        directory (written last). Such a job is kept as ``running`` (True: handled) and the driver
        is asked, once, to send its setup again (``_review``): a job neither final nor active is
        not a duplicate to Pulsar (``_is_duplicate_setup``), so Pulsar sets it up and launches it
        again. Pulsar's job script resets ``working/`` from ``working.orig`` before a second run, so
        that setup (``submit``) has Pulsar copy the first run's results aside first
        (``_results_to_restore``) and its command line puts them back; the runner's ``tes-started``
        guard exits 75 at once and Pulsar's postprocessing uploads them (the driver accepts 75 and
        reads ``tes-meta.tar``): the task ends with its real result instead of PREEMPTED. REST gets
        the same from the runner's heartbeat (pulsar/liveness.py)."""
        body = update.body
        if update.status != "lost" or not _launched(body):
            return False
        if update.job_id in self._finished_resent:
            # The same "lost" again (through the other update queue, or answering a request) before
            # the re-send: already handled. After the re-send a "lost" is believed.
            if self._finished_resent[update.job_id] is not None:
                return False
            self.client.ask_again_later(update.job_id)
            return True
        contents = body.get("working_directory_contents")
        if update.returncode is None or not isinstance(contents, list) or META_NAME not in contents:
            return False
        job_id = update.job_id
        restore = _results_to_restore(job_id, body.get("working_directory"), contents)
        if restore is None:
            return False
        self._restore[job_id] = restore
        log.warning(
            "Pulsar %s: job %s reported lost, but it had finished (returncode %s, %s written): its "
            "setup is sent once more for its results",
            self.name,
            job_id,
            update.returncode,
            META_NAME,
        )
        self._finished_resent[job_id] = None
        self._statuses[job_id] = JobStatus.from_pulsar(
            job_id, {**body, "status": "running", _FINISHED_UNREPORTED: True}
        )
        self._preprocessing_since.pop(job_id, None)
        self._submitted_unheard.discard(job_id)
        self.client.ask_again_later(job_id)  # a final update: keep the job watched
        self._event(job_id).set()
        return True

    def _review(self, known: JobStatus) -> JobStatus:
        """What ``status`` answers for a status Pulsar gave: a stalled setup or a finished job
        Pulsar lost track of handed for a re-send, or lost when that did not help."""
        known = self._stalled_setup(known)
        job_id = known.job_id
        if job_id not in self._finished_resent or known.is_final:
            return known
        now = asyncio.get_running_loop().time()
        resent = self._finished_resent[job_id]
        if resent is None:
            if not known.raw.get(_FINISHED_UNREPORTED):
                return known
            self._finished_resent[job_id] = now
            return dataclasses.replace(known, raw={**known.raw, RESUBMIT_KEY: FINISHED_RESENT_REASON})
        if job_id in self._restore and known.raw.get(_FINISHED_UNREPORTED):
            # Handed for the re-send, not sent yet (a refused publish is retried): not "running",
            # or the retrying submit would take it for a job an earlier attempt started.
            known = dataclasses.replace(known, status="preprocessing")
        if now - resent < self.setup_lost_after:
            return known
        log.warning("Pulsar %s: job %s: %s", self.name, job_id, FINISHED_NOT_RETURNED_REASON)
        return JobStatus(
            job_id=job_id,
            status="lost",
            raw={"status": "lost", LOST_REASON_KEY: FINISHED_NOT_RETURNED_REASON},
        )

    def _doubted_lost(self, update: PulsarStatusUpdate) -> bool:
        """Whether this update is a "lost" not to be believed (yet): the update is then dropped, the
        job asked about again later (the client's reconcile), its last status kept.

        Pulsar 0.16 says "lost" in two cases only (pulsar/managers/stateful.py). (1) Its recovery
        after a restart cannot re-attach to a job it had launched: the job directory then holds
        ``preprocessed`` (written before the job enters the launched index), which the message lists
        in ``job_directory_contents``; Pulsar answers later requests with a stale "running", so this
        "lost" is believed at once. (2) ``get_status`` finds no job directory. Pulsar answers status
        requests and takes setups in from separate queues, each with a consumer thread of its own,
        so for a job whose setup the broker confirmed this "lost" mostly means "not taken in yet":
        a status request handled before the setup (both queued while Pulsar or the broker was
        down, a backlog of setups after a broker restart, or the two consumers starting together
        when Pulsar starts), or an answer computed before the setup and delivered after the job's
        own updates (Pulsar's threads, the two update queues). Its listing proves nothing: the
        setup thread may create the directory while the status thread builds its answer (it checks
        ``exists()`` first and lists the directory after), so a "lost" listing a directory without
        ``preprocessed`` (inputs, ``launch_config``) is of this kind too (a fresh-clone CI run
        ended a task PREEMPTED so). Such a "lost" is believed only once a first one is older than
        ``unheard_lost_grace`` (the setup never reached Pulsar: its queue purged; the job
        directory removed): counted from the first "lost" rather than from the submit, so a
        Pulsar that was down longer than the grace still gets the grace to work through its
        backlog once it answers. Any other update (Pulsar has the job) ends the doubt. A job this
        process only asked about (taken over, nothing known) is not judged here: ``status``
        decides from its setup record."""
        job_id = update.job_id
        if update.status != "lost" or _launched(update.body):
            return False
        previous = self._statuses.get(job_id)
        if job_id not in self._submitted_unheard and (previous is None or previous.is_final):
            return False
        now = asyncio.get_running_loop().time()
        since = self._lost_since.get(job_id)
        if since is not None and now - since >= self.unheard_lost_grace:
            log.warning(
                "Pulsar %s: job %s still reported lost %.0f s after the first such answer: believed",
                self.name,
                job_id,
                now - since,
            )
            return False
        self._lost_since.setdefault(job_id, now)
        self.client.ask_again_later(job_id)
        log.log(
            logging.INFO if since is None else logging.DEBUG,
            "Pulsar %s: job %s reported lost (%s) although Pulsar has not launched it: most likely its "
            "setup is not taken in yet; asking again later",
            self.name,
            job_id,
            "before any other update" if previous is None else f"after {previous.status!r}",
        )
        return True

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
        """Stage the job's files in the (shared) staging directory and record the setup in the store:
        from then on any replica can send it (``submit``) and serve its inputs."""
        await self.start()
        files: list[_PreparedFile] = []
        try:
            for f in spec.files:
                kind = _KIND_TO_TYPE.get(f.kind)
                if kind is None:
                    raise BackendError(f"{f.name}: file kind {f.kind!r} cannot be staged over AMQP")
                if f.data is not None:
                    try:
                        f.data.decode("utf-8")
                    except UnicodeDecodeError:
                        raise BackendError(f"{f.name}: inline files must be UTF-8 text over AMQP") from None
                    await asyncio.to_thread(_write_private, self._inline_path(spec.job_id, f.name), f.data)
                    files.append(_PreparedFile(f.name, kind, inline=True))
                elif f.source is not None:
                    await asyncio.to_thread(self.staging.stage_input, spec.job_id, f.name, f.source)
                    files.append(_PreparedFile(f.name, kind, staged=True))
                elif f.url is not None:
                    files.append(_PreparedFile(f.name, kind, url=f.url))
                else:
                    raise BackendError(f"{f.name}: neither data, source nor url")
        except (ValueError, StagingPathError) as exc:
            raise BackendError(f"job {spec.job_id}: {exc}") from None
        except OSError as exc:
            raise BackendError(f"job {spec.job_id}: cannot stage its files: {exc}") from None
        prepared = _Prepared(files, list(spec.outputs_for_remote_staging))
        await self._save_setup(spec.job_id, prepared)
        self._prepared[spec.job_id] = prepared

    def _inline_path(self, job_id: str, name: str) -> Path:
        """Inline files wait here for the submit (never served: no token is ever made for them)."""
        return self._setups_dir / check_job_id(job_id) / safe_relative_path(name)

    def _staged(self, job_id: str, f: _PreparedFile) -> StagedFile:
        """The setup message's entry for one file (blocking: reads inline files, checks staged ones)."""
        kind: Any = f.type
        if f.contents is not None:
            return StagedFile(f.name, contents=f.contents, type=kind)
        if f.inline or f.staged:
            path = self._inline_path(job_id, f.name) if f.inline else self.staging.input_path(job_id, f.name)
            if not path.is_file():
                raise BackendError(
                    f"job {job_id}: {f.name} is not in the staging directory {self.staging.received_root} "
                    "of this replica: replicas on several hosts must share pulsar.staging_dir"
                )
            if f.inline:
                return StagedFile(f.name, contents=path.read_text(encoding="utf-8"), type=kind)
            return StagedFile(f.name, url=self.staging.input_url(job_id, f.name), type=kind)
        if f.source is not None:  # a record of an earlier version: stage the local file now
            self.staging.stage_input(job_id, f.name, Path(f.source))
            return StagedFile(f.name, url=self.staging.input_url(job_id, f.name), type=kind)
        return StagedFile(f.name, url=f.url, type=kind)

    # ---- the prepared setup, in the store (or on disk without one) ------------------------------

    async def _save_setup(self, job_id: str, prepared: _Prepared) -> None:
        if self.store is None:
            await asyncio.to_thread(self._save_prepared, job_id, prepared)
            return
        try:
            saved = await self.store.update(
                task_id_of(job_id), backend={_setup_key(job_id): prepared.to_dict()}
            )
        except StoreError as exc:
            raise BackendUnavailable(f"Pulsar {self.name}: the task store: {exc}") from None
        if saved is None:
            raise BackendError(f"job {job_id}: no such task in the store")

    async def _load_setup(self, job_id: str) -> _Prepared | None:
        if self.store is None:
            return await asyncio.to_thread(self._load_prepared, job_id)
        prepared = self._prepared.get(job_id)
        if prepared is not None:
            return prepared
        try:
            record = await self.store.get(task_id_of(job_id))
        except StoreError as exc:
            raise BackendUnavailable(f"Pulsar {self.name}: the task store: {exc}") from None
        data = record.backend.get(_setup_key(job_id)) if record is not None else None
        if not isinstance(data, dict):
            return None
        try:
            prepared = _Prepared.from_dict(data)
        except (ValueError, KeyError, TypeError):
            return None
        self._prepared[job_id] = prepared
        return prepared

    async def _record_received(self, job_id: str, path: str) -> None:
        """The staging server took in an upload of the job: say so in the store (once per replica)."""
        assert self.store is not None
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        await self.store.update(task_id_of(job_id), backend={RECEIVED_KEY + self.staging.replica: stamp})

    # ---- the prepared setup, on disk ---------------------------------------------------------------

    def _setup_file(self, job_id: str) -> Path:
        """The setup record without a store (the inline files of the job are in the directory of
        the same name)."""
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
        prepared = await self._load_setup(spec.job_id)
        if prepared is None:
            raise BackendError(f"job {spec.job_id} was never prepared (AMQP keeps no job before submit)")
        command_line = spec.command_line(f"{JOB_DIRECTORY_TOKEN}/{_KIND_TO_DIR['tool']}")
        resent = self._finished_resent.get(spec.job_id) is not None
        restore = self._restore.get(spec.job_id) if resent else None
        # The re-setup of a finished job Pulsar lost track of: no inputs (the runner will not run
        # again), the first run's results copied aside and put back before the runner's guard exits.
        wanted = [f for f in prepared.files if restore is None or f.type != "input"]
        try:
            outputs = [CollectedOutput(client_path=o, workdir_path=o) for o in prepared.outputs]
            files = await asyncio.to_thread(lambda: [self._staged(spec.job_id, f) for f in wanted])
        except (ValueError, StagingPathError, OSError) as exc:
            raise BackendError(f"job {spec.job_id}: {exc}") from None
        if restore is not None:
            files += restore
            restored = f"{JOB_DIRECTORY_TOKEN}/{_KIND_TO_DIR['input']}/{RESTORE_DIR}/."
            command_line = f"cp -R {restored} {JOB_DIRECTORY_TOKEN}/working/ && {command_line}"
        setup = SetupMessage(
            job_id=spec.job_id,
            command_line=command_line,
            remote_staging=RemoteStaging(
                files=files,
                outputs=outputs,
                files_endpoint=self.staging.files_endpoint(spec.job_id) if outputs else None,
            ),
        )
        previous = self._statuses.pop(spec.job_id, None)
        self._submitted_unheard.add(spec.job_id)
        self._lost_since.pop(spec.job_id, None)
        try:
            await self.client.submit(setup)
        except PulsarAmqpUnavailable as exc:
            self._submitted_unheard.discard(spec.job_id)
            if previous is not None:  # a re-send not sent: what was known still stands (_review)
                self._statuses.setdefault(spec.job_id, previous)
            raise BackendUnavailable(f"Pulsar {self.name}: {exc}") from None
        prepared.sent = True
        if restore is not None:
            self._restore.pop(spec.job_id, None)  # the re-setup is out: from now on Pulsar's word
        await self._save_setup(spec.job_id, prepared)

    async def status(self, job_id: str) -> JobStatus:
        await self.start()
        known = self._statuses.get(job_id)
        if known is not None:
            return self._review(known)
        if job_id in self._submitted_unheard:
            return JobStatus(job_id=job_id, status=_SUBMITTED, raw={"status": _SUBMITTED, "pushed": False})
        # Nothing known here (a job taken over from another worker or after a restart): ask Pulsar.
        known = await self._ask(job_id)
        if known is None or (known.status == "lost" and not _launched(known.raw)):
            prepared = await self._load_setup(job_id)
            if prepared is not None and known is not None:
                # A job prepared here (maybe by this service before a restart): Pulsar may answer
                # before it handled the setup still waiting in its queue (both sent while it was
                # down), or while it creates the job directory (see _doubted_lost). Asked again.
                # Updates Pulsar pushes meanwhile (it took the setup in and ran the job) are kept:
                # asked again, it would answer what it pushed, which the client deduplicates.
                self._awaiting.add(job_id)
                try:
                    await asyncio.sleep(self.lost_recheck)
                finally:
                    self._awaiting.discard(job_id)
                pushed = self._statuses.get(job_id)
                if pushed is not None and pushed.status != "lost":
                    known = pushed
                else:
                    # An answer identical to the first is deduplicated by the client (no answer):
                    # the first "lost" stands.
                    known = await self._ask(job_id) or known
            unknown = known is None or (known.status == "lost" and not _launched(known.raw))
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
            if prepared is not None and prepared.sent and known is not None and unknown:
                # The broker confirmed the setup, but Pulsar has not taken it in yet (it answers
                # status requests and setups from separate queues, and was down or is slow): not
                # lost. Watched from now on as if submitted by this process: its pushed updates are
                # taken, a "lost" of a job Pulsar has not launched is doubted for unheard_lost_grace
                # from this first one (_doubted_lost), silence is asked about after
                # amqp_reconcile_after.
                self._statuses.pop(job_id, None)
                self._submitted_unheard.add(job_id)
                self._lost_since.setdefault(job_id, asyncio.get_running_loop().time())
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
        return self._review(known)

    def _stalled_setup(self, known: JobStatus) -> JobStatus:
        """Pulsar 0.16 killed while setting a job up (after ``launch_config``, and maybe ``submitted``,
        were written, before ``preprocessed`` and its active-jobs entry) answers ``preprocessing`` for
        ever after its restart: its recovery resumes only jobs in its preprocessing index (issue 12).
        Such a job is also not a duplicate to Pulsar (``_is_duplicate_setup``: neither final nor
        active), so a second setup makes Pulsar prepare and launch it again; the runner's tes-started
        guard stops a second run of a runner that did start. So, after ``setup_stall_deadline`` of
        ``preprocessing`` with no other update: the driver is asked to send the setup once more
        (``RESUBMIT_KEY``); after ``setup_lost_after`` with still no move the job is lost (PREEMPTED).
        A setup slower than the deadline (large inputs) is sent once more harmlessly (Pulsar skips a
        setup of a job in its preprocessing index); only one slower than ``setup_lost_after`` too ends
        PREEMPTED: docs/amqp.md, Known limits."""
        job_id = known.job_id
        if known.status != "preprocessing" or known.raw.get("setup_unsent"):
            return known
        now = asyncio.get_running_loop().time()
        since = self._preprocessing_since.setdefault(job_id, now)
        resent = job_id in self._setup_resent
        if now - since < (self.setup_lost_after if resent else self.setup_stall_deadline):
            return known
        if not resent:
            self._setup_resent.add(job_id)
            self._preprocessing_since[job_id] = now  # the next deadline counts from the re-send
            reason = (
                f"Pulsar has answered 'preprocessing' for {now - since:.0f} s with no other update "
                "(most likely it stopped while setting the job up): its setup is sent once more"
            )
            log.warning("Pulsar %s: job %s: %s", self.name, job_id, reason)
            return dataclasses.replace(known, raw={**known.raw, RESUBMIT_KEY: reason})
        log.warning(
            "Pulsar %s: job %s still 'preprocessing' %.0f s after its setup was sent once more: lost",
            self.name,
            job_id,
            now - since,
        )
        return JobStatus(
            job_id=job_id,
            status="lost",
            raw={"status": "lost", "stalled_in_setup": True, LOST_REASON_KEY: SETUP_STALLED_REASON},
        )

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
        """Copy the file Pulsar POSTed (to whichever replica) from the shared staging directory."""
        try:
            received = await asyncio.to_thread(self.staging.received_file, job_id, name)
        except StagingPathError:
            return False
        if received is None:
            await self._warn_if_unshared(job_id, name)
            return False

        def copy() -> None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(received, dest)

        await asyncio.to_thread(copy)
        return True

    async def _warn_if_unshared(self, job_id: str, name: str) -> None:
        """A missing output may just not have been made (the manifest decides); but if other replicas
        took in uploads of this job, the staging directory is probably not shared: say so once."""
        if self.store is None or job_id in self._warned_unshared:
            return
        try:
            record = await self.store.get(task_id_of(job_id))
        except StoreError:
            return
        others = sorted(
            k[len(RECEIVED_KEY) :]
            for k in (record.backend if record is not None else {})
            if k.startswith(RECEIVED_KEY) and k[len(RECEIVED_KEY) :] != self.staging.replica
        )
        if others:
            self._warned_unshared.add(job_id)
            log.warning(
                "job %s: %s is not in the staging directory here (%s), but replica(s) %s took in uploads "
                "of this job: is pulsar.staging_dir shared by all replicas?",
                job_id,
                name,
                self.staging.replica,
                ", ".join(others),
            )

    async def clean(self, job_id: str) -> None:
        self.client.forget(job_id)
        self._statuses.pop(job_id, None)
        self._changed.pop(job_id, None)
        self._submitted_unheard.discard(job_id)
        self._lost_since.pop(job_id, None)
        self._preprocessing_since.pop(job_id, None)
        self._setup_resent.discard(job_id)
        self._finished_resent.pop(job_id, None)
        self._restore.pop(job_id, None)
        self._prepared.pop(job_id, None)
        self._warned_unshared.discard(job_id)
        with contextlib.suppress(StagingPathError):
            await self.staging.forget(job_id)
            inline_dir, record = self._setups_dir / check_job_id(job_id), self._setup_file(job_id)

            def remove() -> None:
                shutil.rmtree(inline_dir, ignore_errors=True)
                record.unlink(missing_ok=True)

            await asyncio.to_thread(remove)


def _setup_key(job_id: str) -> str:
    """Where the task's record keeps this job's setup: ``SETUP_KEY`` for the task's own job,
    ``SETUP_KEY-r<n>`` for a re-run's (the record is the task's, found by ``task_id_of``)."""
    return SETUP_KEY + job_id[len(task_id_of(job_id)) :]


def _launched(body: Any) -> bool:
    """Whether Pulsar's status lists ``preprocessed`` in the job directory: Pulsar had set the job up
    and launched it (it writes that file after ``launch``, before the job enters its launched
    index). A listing without it is a job still being set up (see ``_doubted_lost``)."""
    contents = body.get("job_directory_contents") if isinstance(body, dict) else None
    return isinstance(contents, list) and PULSAR_LAUNCHED_FILE in contents


def _results_to_restore(job_id: str, working_directory: Any, contents: list[Any]) -> list[StagedFile] | None:
    """The setup actions that have Pulsar copy a finished job's results (the runner's ``tes-meta.tar``
    and ``tes-out/``, which only the runner writes: regular files, never an executor's links) from
    its working directory, as Pulsar's own status listed them, into ``inputs/tes-restore/``: Pulsar's
    job script resets the working directory before a second run. Only from ``<...>/<job id>/working``
    and only names without ``..``: nothing but the job's own results is ever copied. None if the
    listing is unusable."""
    if (
        not isinstance(working_directory, str)
        or not working_directory.startswith("/")
        or not working_directory.rstrip("/").endswith(f"/{job_id}/working")
        or ".." in working_directory.split("/")
    ):
        return None
    names = [c for c in contents if isinstance(c, str) and (c == META_NAME or c.startswith(_RESULT_DIR))]
    try:
        return [
            StagedFile(f"{RESTORE_DIR}/{name}", copy_from=f"{working_directory.rstrip('/')}/{name}")
            for name in names
        ]
    except ValueError:  # a name with "..", an empty component: not what the runner writes
        return None


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` (mode 0600: a job spec may carry the task's environment) through a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    partial.replace(path)


def staging_root(settings: Settings) -> Path:
    """``pulsar.staging_dir``, by default ``<engine.work_dir>/pulsar-received``."""
    configured = settings.pulsar.staging_dir
    return Path(configured) if configured else Path(settings.engine.work_dir) / "pulsar-received"


def build_amqp_backend(
    settings: Settings, server: PulsarServer, store: TaskStore | None = None
) -> AmqpBackend:
    """The engine's factory (engine.build_backends): one backend, with its own staging server, per
    AMQP Pulsar server. Nothing connects here; the first call does. With the engine's ``store`` the
    backend keeps its shared state there (the staging key is read from it when the backend starts);
    without one, the key is a file in the work directory."""
    assert server.amqp_url is not None
    pulsar = settings.pulsar
    work_dir = Path(settings.engine.work_dir)
    key_file = work_dir / "pulsar-staging.key"
    ttl = settings.transfer.signed_url_ttl
    if store is None:
        tokens = StagingTokens.from_key_file(key_file, ttl)
    else:  # replaced by the store's key in start(), before anything is signed
        tokens = StagingTokens(secrets.token_bytes(32), ttl)
    staging = StagingServer(
        staging_root(settings) / server.name,
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
        # Several reconciles' worth, and at least 10 minutes: a backlog of setups after a broker
        # restart takes Pulsar a while to work through.
        unheard_lost_grace=max(600.0, 10 * pulsar.amqp_reconcile_after),
        setup_stall_deadline=pulsar.lost_job_deadline,
        store=store,
        legacy_key_file=key_file if store is not None else None,
    )
