"""TES 1.1 objects, exactly as ../spec/tes-1.1.openapi.yaml defines them.

One set of models serves requests, storage and responses. Responses are always serialised with
``exclude_none=True`` so that no field outside the spec (and no null the client did not send) ever
reaches a client: py-tes 1.1.4 fails on unknown fields. Unknown fields in a *request* are rejected
(``extra="forbid"``) instead of being silently dropped, a defect of the service we replace.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _TesModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_enum_values=False)


class TesState(StrEnum):
    UNKNOWN = "UNKNOWN"
    QUEUED = "QUEUED"
    INITIALIZING = "INITIALIZING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETE = "COMPLETE"
    EXECUTOR_ERROR = "EXECUTOR_ERROR"
    SYSTEM_ERROR = "SYSTEM_ERROR"
    CANCELED = "CANCELED"
    PREEMPTED = "PREEMPTED"
    CANCELING = "CANCELING"


class TesFileType(StrEnum):
    FILE = "FILE"
    DIRECTORY = "DIRECTORY"


class TesView(StrEnum):
    MINIMAL = "MINIMAL"
    BASIC = "BASIC"
    FULL = "FULL"


class TesInput(_TesModel):
    name: str | None = None
    description: str | None = None
    url: str | None = None
    path: str
    type: TesFileType | None = None
    content: str | None = None
    streamable: bool | None = None


class TesOutput(_TesModel):
    name: str | None = None
    description: str | None = None
    url: str
    path: str
    path_prefix: str | None = None
    type: TesFileType | None = None


class TesResources(_TesModel):
    cpu_cores: int | None = None
    preemptible: bool | None = None
    ram_gb: float | None = None
    disk_gb: float | None = None
    zones: list[str] | None = None
    backend_parameters: dict[str, str] | None = None
    backend_parameters_strict: bool | None = None


class TesExecutor(_TesModel):
    image: str
    command: list[str]
    workdir: str | None = None
    stdin: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    env: dict[str, str] | None = None
    ignore_error: bool | None = None


class TesExecutorLog(_TesModel):
    start_time: str | None = None
    end_time: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    exit_code: int


class TesOutputFileLog(_TesModel):
    url: str
    path: str
    size_bytes: str


class TesTaskLog(_TesModel):
    logs: list[TesExecutorLog] = Field(default_factory=list)
    metadata: dict[str, str] | None = None
    start_time: str | None = None
    end_time: str | None = None
    outputs: list[TesOutputFileLog] = Field(default_factory=list)
    system_logs: list[str] | None = None


# The tesTask fields the server sets (readOnly in the TES schema): dropped from a submitted task,
# taken from the record when a task is rendered.
READ_ONLY_FIELDS = frozenset({"id", "state", "logs", "creation_time"})


class TesTask(_TesModel):
    id: str | None = None
    state: TesState | None = None
    name: str | None = None
    description: str | None = None
    inputs: list[TesInput] | None = None
    outputs: list[TesOutput] | None = None
    resources: TesResources | None = None
    executors: list[TesExecutor]
    volumes: list[str] | None = None
    tags: dict[str, str] | None = None
    logs: list[TesTaskLog] | None = None
    creation_time: str | None = None
    # Extension (the TES proposal's name: task-execution-schemas issue #121 / PR #176): POSTed the
    # task's BASIC view, signed, on every state change (docs/callbacks.md).
    callback_url: str | None = Field(
        None, description="tesp-api extension (TES proposal): receives the BASIC view at every state change"
    )


class TesCreateTaskResponse(_TesModel):
    id: str


class TesListTasksResponse(_TesModel):
    tasks: list[dict[str, Any]]
    next_page_token: str | None = None


class TesServiceType(_TesModel):
    group: str
    artifact: str
    version: str


class TesServiceOrganization(_TesModel):
    name: str
    url: str


class TesServiceInfo(_TesModel):
    id: str
    name: str
    type: TesServiceType
    description: str | None = None
    organization: TesServiceOrganization
    contactUrl: str | None = None  # camelCase: the GA4GH service-info spelling
    documentationUrl: str | None = None
    createdAt: str | None = None
    updatedAt: str | None = None
    environment: str | None = None
    version: str
    storage: list[str] | None = None
    tesResources_backend_parameters: list[str] | None = None
