"""Checks a submitted task before it is stored, so that a task the service could never run is refused
at once with a 400 naming the offending field(s), instead of failing later as a SYSTEM_ERROR.

Pure domain code: it imports only pydantic and the TES models. Every rule about paths, images, env,
wildcards and volumes is the JobPlan's (tes/jobplan.py: the engine rebuilds the same plan from the
stored task); what depends on the deployment (size limits, supported backend_parameters keys, which
URLs are acceptable) is passed in by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from tesp_api.tes.jobplan import JobPlan, PlanError, Problem, build_plan
from tesp_api.tes.models import READ_ONLY_FIELDS, TesFileType, TesTask

# Fields the server sets; a client that sends them (e.g. resubmitting a fetched task) is not at fault.
# A URL checker gets the URL and the declared file type (FILE, DIRECTORY or None) and returns None
# when the URL is acceptable, otherwise a short reason fit for the client.
UrlCheck = Callable[[str, "TesFileType | None"], "str | None"]


class TaskValidationError(ValueError):
    """The task cannot be accepted; ``str(exc)`` names each field and its reason ("f: r; f: r").

    ``problems`` holds the (field path, reason) pairs; a message given as one string is one problem."""

    def __init__(self, problems: str | Sequence[Problem]) -> None:
        if isinstance(problems, str):
            self.problems: tuple[Problem, ...] = ()
            super().__init__(problems)
        else:
            self.problems = tuple(problems)
            super().__init__("; ".join(f"{where}: {reason}" for where, reason in self.problems))


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """A configured Pulsar server as admission sees it: its name and the largest task it takes."""

    name: str
    max_cpu_cores: int | None = None
    max_ram_gb: float | None = None


def server_fit_problem(server: ServerLimits, resources: Any) -> tuple[str, str] | None:
    """(field, limit) of the first resource of ``resources`` (a tesResources or None) that exceeds
    ``server``'s limit; None when the task fits."""
    if resources is None:
        return None
    cpu, ram = resources.cpu_cores, resources.ram_gb
    if server.max_cpu_cores is not None and cpu is not None and cpu > server.max_cpu_cores:
        return "resources.cpu_cores", f"max_cpu_cores {server.max_cpu_cores}"
    if server.max_ram_gb is not None and ram is not None and ram > server.max_ram_gb:
        return "resources.ram_gb", f"max_ram_gb {server.max_ram_gb:g}"
    return None


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    max_content_bytes: int = 1024 * 1024
    supported_backend_parameters: tuple[str, ...] = ()
    reject_unknown_fields: bool = True
    # The configured Pulsar servers (names, resource limits); empty: not checked (docs/quotas.md).
    servers: tuple[ServerLimits, ...] = ()


@dataclass(slots=True)
class ValidatedTask:
    task: TesTask
    plan: JobPlan  # what the engine will run (it rebuilds the same plan from the stored task)
    # system_logs lines to record at creation (e.g. dropped backend_parameters keys)
    warnings: list[str] = field(default_factory=list)


def field_path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(body)"


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = field_path(err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown field (not part of TES 1.1)"
    if err["type"] == "missing":
        return f"{where}: field required"
    return f"{where}: {err['msg']}"


def _strip_unknown(raw: dict[str, Any], exc: ValidationError) -> bool:
    """Remove the unknown fields ``exc`` reports from ``raw``; False when it reports other errors."""
    errors = exc.errors()
    if any(e["type"] != "extra_forbidden" for e in errors):
        return False
    for err in errors:
        node: Any = raw
        *parents, last = err["loc"]
        for part in parents:
            node = node[part]
        if isinstance(node, dict):
            node.pop(last, None)
    return True


def parse_task(raw: Any, limits: ValidationLimits) -> TesTask:
    """The request body as a TesTask, or TaskValidationError. Read-only fields are dropped."""
    if not isinstance(raw, dict):
        raise TaskValidationError("(body): a JSON object (tesTask) is required")
    raw = {k: v for k, v in raw.items() if k not in READ_ONLY_FIELDS}
    for _ in range(100):  # each round strips one batch of unknown fields when they are allowed
        try:
            return TesTask.model_validate(raw)
        except ValidationError as exc:
            if limits.reject_unknown_fields or not _strip_unknown(raw, exc):
                raise TaskValidationError(_describe(exc)) from None
    raise TaskValidationError("(body): too many unknown fields")


def parse_task_json(body: bytes) -> TesTask | None:
    """The JSON text ``body`` as a TesTask in one pass (pydantic's Rust JSON parser straight into the
    model, no ``json.loads`` and no dict in between: issue 15), or None when that pass does not
    give exactly what :func:`parse_task` of the ``json.loads`` value would: the text does not
    validate (bad JSON, a UTF-8 BOM, an unknown field that ``reject_unknown_fields = false`` would
    strip, a bad value) or it sets a read-only field (which parse_task drops before validating).
    The caller then takes the ``json.loads`` path, which reports the error as before."""
    try:
        task = TesTask.model_validate_json(body)
    except ValidationError:
        return None
    if any(getattr(task, name) is not None for name in READ_ONLY_FIELDS):
        return None
    return task


def _check_inputs(task: TesTask, limits: ValidationLimits, check_url: UrlCheck) -> list[Problem]:
    """What the plan does not decide: url/content rules, content size, and the deployment's URL checks."""
    problems: list[Problem] = []
    for i, inp in enumerate(task.inputs or []):
        where = f"inputs[{i}]"
        if inp.content is not None and inp.url is not None:
            problems.append((where, "give either url or content, not both"))
        elif inp.content is None and inp.url is None:
            problems.append((where, "url or content is required"))
        if inp.content is not None and inp.type == TesFileType.DIRECTORY:
            problems.append((where, "content makes a file; it cannot be a DIRECTORY input"))
        if inp.content is not None:
            size = len(inp.content.encode("utf-8", "surrogatepass"))
            if size > limits.max_content_bytes:
                too_big = (
                    f"{size} bytes is over this service's limit of {limits.max_content_bytes} bytes; "
                    "pass the file by url instead"
                )
                problems.append((f"{where}.content", too_big))
        if inp.url is not None:
            reason = check_url(inp.url, inp.type)
            if reason:
                problems.append((f"{where}.url", reason))
    return problems


def _check_outputs(task: TesTask, check_url: UrlCheck) -> list[Problem]:
    """The deployment's URL checks; paths, wildcards and path_prefix are the plan's (tes/jobplan.py)."""
    problems: list[Problem] = []
    for i, out in enumerate(task.outputs or []):
        reason = check_url(out.url, out.type)
        if reason:
            problems.append((f"outputs[{i}].url", reason))
    return problems


def _normalise_backend_parameters(task: TesTask, limits: ValidationLimits) -> list[str]:
    """Map keys to the supported spelling (keys are case-insensitive); drop or refuse the rest."""
    res = task.resources
    if res is None or not res.backend_parameters:
        return []
    supported = {k.lower(): k for k in limits.supported_backend_parameters}
    kept: dict[str, str] = {}
    unsupported: list[str] = []
    for key, value in res.backend_parameters.items():
        canonical = supported.get(key.lower())
        if canonical is None:
            unsupported.append(key)
        elif canonical in kept:
            raise TaskValidationError(
                f"resources.backend_parameters: key {key!r} given twice (keys ignore case)"
            )
        else:
            kept[canonical] = value
    if unsupported and res.backend_parameters_strict:
        raise TaskValidationError(
            f"resources.backend_parameters: unsupported keys {sorted(unsupported)} "
            f"(supported: {sorted(supported.values())}) and backend_parameters_strict is true"
        )
    res.backend_parameters = kept or None
    warnings = [f"warning: unsupported backend_parameters key ignored: {key}" for key in unsupported]
    server = next((str(v) for k, v in kept.items() if k.lower() == "pulsar_server"), None)
    names = [s.name for s in limits.servers]
    if server is not None and names and server not in names:
        if res.backend_parameters_strict:
            raise TaskValidationError(
                [
                    (
                        "resources.backend_parameters.pulsar_server",
                        (
                            f"no configured Pulsar server is named {server!r} (configured: {names}) "
                            "and backend_parameters_strict is true"
                        ),
                    )
                ]
            )
        warnings.append(
            f"warning: pulsar_server {server!r} is not a configured server; any server may run it"
        )
    return warnings


def _check_fits_a_server(task: TesTask, limits: ValidationLimits) -> list[Problem]:
    """A task no configured server can take (cpu_cores/ram_gb over every server's limit, or over
    its pinned server's) is refused now, naming the limit, instead of waiting in the queue for ever."""
    if not limits.servers or task.resources is None:
        return []
    params = task.resources.backend_parameters or {}
    pinned = next((str(v) for k, v in params.items() if k.lower() == "pulsar_server"), None)
    servers = [s for s in limits.servers if s.name == pinned] or list(limits.servers)
    problems = [(s, server_fit_problem(s, task.resources)) for s in servers]
    if any(p is None for _, p in problems):
        return []
    first = problems[0][1]
    assert first is not None
    where = first[0]
    named = ", ".join(f"{s.name}: {p[1]}" for s, p in problems if p is not None and p[0] == where)
    value = getattr(task.resources, where.split(".")[1])
    return [(where, f"{value:g} is more than any Pulsar server takes ({named})")]


def _check_resources(task: TesTask) -> list[Problem]:
    res = task.resources
    if res is None:
        return []
    return [
        (f"resources.{name}", "must not be negative")
        for name in ("cpu_cores", "ram_gb", "disk_gb")
        if (value := getattr(res, name)) is not None and value < 0
    ]


def validate_task(
    raw: Any,
    limits: ValidationLimits,
    *,
    check_input_url: UrlCheck,
    check_output_url: UrlCheck,
    check_callback_url: Callable[[str], str | None] | None = None,
) -> ValidatedTask:
    """Parse and check a submitted task (the JSON body of POST /tasks).

    Every problem is reported at once ("field: reason; field: reason"): the JobPlan's (paths, image,
    env, wildcards, volumes: tesp_api.tes.jobplan) and this module's (url/content, size limits, the
    deployment's URL checks, resources, backend_parameters)."""
    return check_task(
        parse_task(raw, limits),
        limits,
        check_input_url=check_input_url,
        check_output_url=check_output_url,
        check_callback_url=check_callback_url,
    )


def check_task(
    task: TesTask,
    limits: ValidationLimits,
    *,
    check_input_url: UrlCheck,
    check_output_url: UrlCheck,
    check_callback_url: Callable[[str], str | None] | None = None,
) -> ValidatedTask:
    """:func:`validate_task` of an already parsed task (:func:`parse_task` or
    :func:`parse_task_json`): every rule but the parsing."""
    problems: list[Problem] = []
    plan: JobPlan | None = None
    try:
        plan = build_plan(task)
    except PlanError as exc:
        problems += exc.problems
    problems += _check_inputs(task, limits, check_input_url)
    problems += _check_outputs(task, check_output_url)
    problems += _check_resources(task)
    if task.callback_url is not None and check_callback_url is not None:  # extension (docs/callbacks.md)
        reason = check_callback_url(task.callback_url)
        if reason:
            problems.append(("callback_url", reason))
    if problems:
        raise TaskValidationError(problems)
    warnings = _normalise_backend_parameters(task, limits)
    fit = _check_fits_a_server(task, limits)
    if fit:
        raise TaskValidationError(fit)
    assert plan is not None
    return ValidatedTask(task=task, plan=plan, warnings=warnings)
