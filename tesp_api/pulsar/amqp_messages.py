"""Message bodies Pulsar accepts over AMQP, and the ``remote_staging`` description it needs there.

Over AMQP nothing can be uploaded to Pulsar, so everything a job needs travels in its setup message:
small files (the job script, TES ``content`` inputs) as ``message`` actions, larger inputs as URLs that
Pulsar GETs (``remote_transfer``), and outputs as POSTs Pulsar makes to our ``files_endpoint``. The
shapes below follow Pulsar 0.16's server code (manager_endpoint_util.submit_job, managers/staging,
client/staging/down.ResultsCollector); the comments say which quirk each field works around.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

# Pulsar replaces this token in command_line with the absolute job directory (setup messages only).
JOB_DIRECTORY_TOKEN = "__PULSAR_JOB_DIRECTORY__"  # noqa: S105 - a placeholder, not a secret
# The client-side working directory we describe to Pulsar. It never exists anywhere: Pulsar only uses it
# to compute each output's name relative to its own working directory.
CLIENT_WORKING_DIRECTORY = "/tesp-client/working"
# A pattern that matches nothing: without it Pulsar would also upload every working-directory file that
# matches Galaxy's default "dynamic output" patterns (primary_*, galaxy.json, tool_stdout, ...).
_MATCH_NOTHING = ["(?!)"]

StagingType = Literal["input", "config", "tool", "workdir", "unstructured"]


@dataclass(frozen=True)
class StagedFile:
    """One file Pulsar writes into the job directory before the command starts.

    ``name`` is relative to the directory of ``type`` (``input`` -> inputs/, ``config`` -> configs/,
    ``workdir`` -> working/...). Exactly one of ``url`` (Pulsar GETs it), ``contents`` (sent inline;
    text only, Pulsar writes it in text mode) and ``copy_from`` is given. ``copy_from``: an absolute
    path on the Pulsar host that Pulsar copies itself (``remote_copy``); used only for a job's own
    results, at the paths Pulsar's status listed, when a finished job Pulsar lost track of is set
    up once more (amqp.py, ``_finished_unreported``).
    """

    name: str
    url: str | None = None
    contents: str | None = None
    type: StagingType = "input"
    copy_from: str | None = None

    def __post_init__(self) -> None:
        if sum(v is not None for v in (self.url, self.contents, self.copy_from)) != 1:
            raise ValueError("StagedFile needs exactly one of url, contents and copy_from")
        parts = self.name.split("/")
        if not self.name or self.name.startswith("/") or ".." in parts or "" in parts:
            raise ValueError(f"staged file name must be a plain relative path: {self.name!r}")
        if self.copy_from is not None and (
            not self.copy_from.startswith("/") or ".." in self.copy_from.split("/")
        ):
            raise ValueError(f"copy_from must be an absolute path without '..': {self.copy_from!r}")

    def to_setup_action(self) -> dict[str, Any]:
        if self.copy_from is not None:
            # "path" too, as for remote_transfer: Pulsar's from_dict pops it (KeyError without).
            action: dict[str, Any] = {
                "action_type": "remote_copy",
                "path": self.copy_from,
                "source": {"path": self.copy_from},
            }
        elif self.url is not None:
            # "path" and "source" are both required: without "path" Pulsar fails with KeyError.
            action = {
                "action_type": "remote_transfer",
                "path": self.name,
                "source": {"path": self.name},
                "url": self.url,
            }
        else:
            action = {"action_type": "message", "contents": self.contents}
        return {"name": self.name, "type": self.type, "action": action}


@dataclass(frozen=True)
class CollectedOutput:
    """One file or directory Pulsar uploads after the command ends.

    ``workdir_path`` is where the command leaves it, relative to Pulsar's working directory. Pulsar POSTs
    it to ``files_endpoint?path=<client_path>&file_type=output_workdir`` (a directory: one POST per file,
    path ``<client_path>/<relative path>``). A missing output is only a warning for Pulsar (the job
    still completes), so the receiver checks what arrived.
    """

    client_path: str
    workdir_path: str

    def __post_init__(self) -> None:
        parts = self.workdir_path.split("/")
        if not self.workdir_path or self.workdir_path.startswith("/") or ".." in parts:
            raise ValueError(f"output path must be relative to the working directory: {self.workdir_path!r}")


@dataclass(frozen=True)
class RemoteStaging:
    files: Sequence[StagedFile] = ()
    outputs: Sequence[CollectedOutput] = ()
    files_endpoint: str | None = None  # may carry a query string (e.g. a token); Pulsar appends &path=...

    def to_dict(self) -> dict[str, Any]:
        if self.outputs and not self.files_endpoint:
            raise ValueError("outputs need a files_endpoint for Pulsar to POST them to")
        work_dir_outputs = [
            [f"{CLIENT_WORKING_DIRECTORY}/{o.workdir_path}", o.client_path] for o in self.outputs
        ]
        return {
            "setup": [f.to_setup_action() for f in self.files],
            "action_mapper": {
                "default_action": "remote_transfer",
                "files_endpoint": self.files_endpoint,
                "paths": [],
            },
            "client_outputs": {
                "working_directory": CLIENT_WORKING_DIRECTORY,
                "metadata_directory": None,  # None: Pulsar uploads no metadata files
                "job_directory": None,
                "work_dir_outputs": work_dir_outputs,
                # Pulsar removes each work_dir_output from this list and fails if it is not there.
                "output_files": [o.client_path for o in self.outputs],
                "version_file": None,
                "dynamic_outputs": _MATCH_NOTHING,
            },
        }


@dataclass(frozen=True)
class SetupMessage:
    """Creates the job directory, stages in, runs ``command_line``, stages out: all from one message."""

    job_id: str
    command_line: str
    remote_staging: RemoteStaging = field(default_factory=RemoteStaging)
    env: Sequence[Mapping[str, str]] = ()  # [{"name": ..., "value": ...}]
    tool_id: str = "tesp-api"
    tool_version: str = "1.0"

    def to_body(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "setup": True,  # let Pulsar create the job directory (there is no separate setup call)
            "setup_params": {
                "job_id": self.job_id,
                "tool_id": self.tool_id,
                "tool_version": self.tool_version,
            },
            "command_line": self.command_line,
            "remote_staging": self.remote_staging.to_dict(),
            "env": [dict(e) for e in self.env],
        }


def kill_body(job_id: str) -> dict[str, Any]:
    return {"job_id": job_id}


def status_request_body(job_id: str) -> dict[str, Any]:
    return {"job_id": job_id}
