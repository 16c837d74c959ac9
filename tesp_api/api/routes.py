"""The TES 1.1 endpoints. Mounted twice by the app (/ga4gh/tes/v1 and /v1) because clients disagree
on the base path; the handlers only translate HTTP to store calls and back."""

from __future__ import annotations

import inspect
import json
import logging
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import TypeAdapter, ValidationError
from starlette.routing import Route

from tesp_api.api.admin import queue_notes
from tesp_api.api.deps import ANONYMOUS_ADMIN, Principal, current_principal, service_info_principal
from tesp_api.api.errors import TesHttpError
from tesp_api.api.idempotency import HEADER as IDEMPOTENCY_HEADER
from tesp_api.api.idempotency import idempotency_of
from tesp_api.api.openapi import error_responses, ok_response
from tesp_api.api.pages import (
    PageResponse,
    page_read_budget,
    page_response,
    summary_page_response,
)
from tesp_api.api.service_info import build_legacy_service_info, build_service_info
from tesp_api.api.url_checks import address_problems, egress_policy, url_checkers
from tesp_api.config.settings import Settings
from tesp_api.store.port import (
    DuplicateTask,
    IdempotencyConflict,
    InvalidPageToken,
    ListQuery,
    LogPatch,
    TaskStore,
)
from tesp_api.tes import states
from tesp_api.tes.ids import is_safe_id, new_task_id
from tesp_api.tes.limits import TaskLimits, check_task_limits, check_text, checks_cannot_fail
from tesp_api.tes.models import TesState, TesView
from tesp_api.tes.servers import server_limits
from tesp_api.tes.validate import (
    TaskValidationError,
    ValidationLimits,
    check_task,
    parse_task,
    parse_task_json,
)
from tesp_api.tes.views import json_bytes, render_task, rfc3339
from tesp_api.transfer.callback_urls import CallbackUrls

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 2047
_JSON = "application/json"
_CANCEL_ATTEMPTS = 5
_VIEW_DOC = (
    "MINIMAL (default): id and state; BASIC: all but logs' stdout/stderr, input content, system_logs; FULL"
)

PrincipalDep = Annotated[Principal, Depends(current_principal)]
ServiceInfoPrincipalDep = Annotated[Principal, Depends(service_info_principal)]  # auth.service_info_public
# Any string is a possible id: an id we never issued is a 404, never a 400.
TaskIdPath = Annotated[str, Path(alias="id", description="task id")]


_INT = TypeAdapter(int)  # page_size of the plain GET /tasks, parsed as FastAPI parses it


def _parse_view(value: str | None) -> TesView:
    if value is None or value == "":
        return TesView.MINIMAL
    try:
        return TesView(value)
    except ValueError:
        raise TesHttpError(400, f"view: unknown view {value!r} (one of MINIMAL, BASIC, FULL)") from None


def _parse_state(value: str | None) -> TesState | None:
    if value is None or value == "":
        return None
    try:
        return TesState(value)
    except ValueError:
        raise TesHttpError(400, f"state: unknown task state {value!r}") from None


def _tag_pairs(keys: list[str] | None, values: list[str] | None) -> list[tuple[str, str | None]]:
    """tag_key[i] zipped with tag_value[i]; a missing or empty value matches any value."""
    keys = keys or []
    values = values or []
    if len(values) > len(keys):
        raise TesHttpError(400, "tag_value: more tag_value than tag_key parameters")
    pairs: list[tuple[str, str | None]] = []
    for i, key in enumerate(keys):
        if key == "":
            raise TesHttpError(400, f"tag_key[{i}]: must not be empty")
        value = values[i] if i < len(values) else None
        pairs.append((key, value or None))
    return pairs


def _is_json_content_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def _read_body(request: Request) -> bytes:
    """The request body of a JSON endpoint: 415 for another Content-Type, 400 when empty."""
    content_type = request.headers.get("content-type")
    if content_type is not None and not _is_json_content_type(content_type):
        raise TesHttpError(415, f"Content-Type must be application/json, got {content_type!r}")
    body = await request.body()
    if not body.strip():
        raise TesHttpError(400, "(body): a JSON tesTask is required")
    return body


def _decode_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4,300 digits
        raise TesHttpError(400, f"(body): invalid JSON: {exc}") from None
    except RecursionError:
        raise TesHttpError(400, "(body): JSON nested too deeply") from None


async def _request_principal(request: Request) -> Principal:
    """current_principal without FastAPI's dependency machinery (the plain routes): nothing to do
    with auth off; an app's dependency_overrides of current_principal (tests) are honoured."""
    override = request.app.dependency_overrides.get(current_principal)
    if override is not None:
        result = override()
        return await result if inspect.isawaitable(result) else result  # type: ignore[no-any-return]
    if request.app.state.authenticator is None:
        return ANONYMOUS_ADMIN
    return await current_principal(request)


def _id_response(task_id: str) -> Response:
    """``{"id": ...}`` encoded once. An id we issued (is_safe_id: letters, digits, ``._-``) needs no
    JSON escaping; anything else (a record some other writer stored) goes through json.dumps."""
    if is_safe_id(task_id):
        return Response(b'{"id":"' + task_id.encode("ascii") + b'"}', media_type=_JSON)
    return Response(json.dumps({"id": task_id}).encode(), media_type=_JSON)


def task_limits_of(settings: Settings) -> TaskLimits:
    """The per-task limits of ``api.max_*`` (docs/api.md, "Limits")."""
    api = settings.api
    return TaskLimits(**{name: getattr(api, name) for name in TaskLimits.__dataclass_fields__})


class TaskEndpoints:
    """The handlers, bound to one store, engine and settings (no module-level state)."""

    def __init__(self, settings: Settings, store: TaskStore, engine: Any | None) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.limits = ValidationLimits(
            max_content_bytes=settings.api.max_content_bytes,
            supported_backend_parameters=tuple(settings.engine.backend_parameters),
            reject_unknown_fields=settings.api.reject_unknown_fields,
            servers=server_limits(settings.pulsar.effective_servers()),
        )
        self.task_limits = task_limits_of(settings)
        self.egress = egress_policy(settings)
        self.callback_urls = CallbackUrls(settings)
        self.check_input_url, self.check_output_url = url_checkers(settings, self.egress)
        self.service_info = build_service_info(settings)

    async def create_task(self, request: Request) -> Response:
        """POST /tasks. The hot path (issue 15): no FastAPI dependency (the principal is asked for
        directly, nothing at all with auth off), the answer encoded once by hand (a uuid needs no
        JSON escaping) and returned as a Response, so FastAPI never re-encodes it."""
        principal = await _request_principal(request)
        body = await _read_body(request)
        header = request.headers.get(IDEMPOTENCY_HEADER)
        idempotency = None
        # One pass from the bytes to the model when the bytes prove the text and limit checks
        # cannot fail (checks_cannot_fail) and the model is what the json.loads path would build
        # (parse_task_json); anything else takes that path, with its checks and messages.
        fast = header is None and checks_cannot_fail(body, self.task_limits)
        task = parse_task_json(body) if fast else None
        try:
            if task is None:
                raw = _decode_json(body)
                idempotency = idempotency_of(header, raw, self.settings.api.idempotency_ttl_seconds)
                check_text(raw)  # NUL and lone surrogates: 400 naming the field, before anything stores them
                check_task_limits(raw, self.task_limits)
                task = parse_task(raw, self.limits)
            validated = check_task(
                task,
                self.limits,
                check_input_url=self.check_input_url,
                check_output_url=self.check_output_url,
                check_callback_url=self.callback_urls.problem,
            )
        except TaskValidationError as exc:
            raise TesHttpError(400, str(exc)) from None
        task = validated.task
        refused = await address_problems(task, self.egress)  # the SSRF guard's DNS lookups
        if not refused and task.callback_url:  # the same guard for the callback (docs/callbacks.md)
            reason = await self.callback_urls.address_problem(task.callback_url)
            refused = f"callback_url: refused: {reason}" if reason else None
        if refused:
            raise TesHttpError(400, refused)
        for _ in range(3):  # a uuid4 clash is next to impossible; retry rather than fail if it happens
            task.id = new_task_id()
            try:
                record = await self.store.create(task, principal.owner, idempotency=idempotency)
                break
            except DuplicateTask:
                continue
            except IdempotencyConflict:
                raise TesHttpError(
                    409, f"{IDEMPOTENCY_HEADER}: already used for a different request body; use a new key"
                ) from None
        else:
            raise TesHttpError(503, "could not allocate a task id, try again")
        if record.id != task.id:  # a retry of a create this key made before: its task, nothing new
            log.info("task %s returned again for its %s", record.id, IDEMPOTENCY_HEADER)
            return _id_response(record.id)
        if validated.warnings:
            await self.store.update(record.id, log=LogPatch(system_logs=validated.warnings))
        # DEBUG, not INFO: the access log already has a line per request (issue 15: two lines per
        # create cost ~10 % of its CPU); the engine's first line about the task names it.
        log.debug("task %s created", record.id)
        await self._tell_engine("notify_created", record.id)
        return _id_response(record.id)

    async def list_tasks(
        self,
        principal: PrincipalDep,
        name_prefix: Annotated[
            str | None, Query(description="only tasks whose name starts with this")
        ] = None,
        state: Annotated[str | None, Query(description="only tasks in this tesState")] = None,
        tag_key: Annotated[list[str] | None, Query(description="tag keys, zipped with tag_value")] = None,
        tag_value: Annotated[list[str] | None, Query(description="tag values; empty = any value")] = None,
        page_size: Annotated[int | None, Query(description="1..2047, default 256")] = None,
        page_token: Annotated[str | None, Query(description="next_page_token of the previous page")] = None,
        view: Annotated[str | None, Query(description=_VIEW_DOC)] = None,
    ) -> PageResponse:
        chosen_view = _parse_view(view)
        size = self.settings.api.default_page_size if page_size is None else page_size
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise TesHttpError(400, f"page_size: must be between 1 and {MAX_PAGE_SIZE}, got {size}")
        query = ListQuery(
            page_size=size,
            page_token=page_token or None,
            name_prefix=name_prefix or None,
            state=_parse_state(state),
            tags=_tag_pairs(tag_key, tag_value),
            owner=principal.read_scope,
            max_bytes=page_read_budget(self.settings.api.max_page_bytes, size),
        )
        minimal = chosen_view == TesView.MINIMAL
        list_json = getattr(self.store, "list_summaries_json", None) if minimal else None
        if chosen_view == TesView.BASIC:  # built from the light texts only (store/lean.py, issue 15)
            list_json = getattr(self.store, "list_basic_json", None)
        list_summaries = getattr(self.store, "list_summaries", None) if minimal else None
        try:
            if list_json is not None:  # MINIMAL (SQLite) or BASIC answer as JSON from the store (issue 15)
                return PageResponse(await list_json(query))
            if list_summaries is not None:  # MINIMAL from columns/projection, no task JSON (LeanReads)
                return summary_page_response(await list_summaries(query))
            page = await self.store.list(query)
        except InvalidPageToken:
            raise TesHttpError(400, "page_token: not a page token issued by this service") from None
        return page_response(page, chosen_view)  # at most api.max_page_bytes (tesp_api/api/pages.py)

    async def list_tasks_plain(self, request: Request) -> PageResponse:
        """GET /tasks as a plain Starlette route (see build_router): the same handler, its query
        parameters read as FastAPI reads them (the last of a repeated one; tag_key/tag_value all)
        without its parameter machinery: ~0.13 ms of a 0.59 ms MINIMAL page (issue 15)."""
        params = request.query_params
        page_size = params.get("page_size")
        size: int | None = None
        if page_size is not None:
            try:
                size = _INT.validate_python(page_size)
            except ValidationError as exc:  # the message FastAPI's validation error gives (api/errors.py)
                raise TesHttpError(400, f"page_size: {exc.errors()[0]['msg']}") from None
        return await self.list_tasks(
            await _request_principal(request),
            name_prefix=params.get("name_prefix"),
            state=params.get("state"),
            tag_key=params.getlist("tag_key") or None,
            tag_value=params.getlist("tag_value") or None,
            page_size=size,
            page_token=params.get("page_token"),
            view=params.get("view"),
        )

    async def get_task_plain(self, request: Request) -> Response:
        """GET /tasks/{id} as a plain Starlette route (see build_router): the same handler, its
        arguments read from the request instead of through FastAPI's parameter machinery."""
        principal = await _request_principal(request)
        return await self.get_task(request.path_params["id"], principal, request.query_params.get("view"))

    async def get_task(
        self,
        task_id: TaskIdPath,
        principal: PrincipalDep,
        view: Annotated[str | None, Query(description=_VIEW_DOC)] = None,
    ) -> Response:
        """GET /tasks/{id}: MINIMAL from the store's summary (no task JSON decoded) when it has one;
        the answer encoded once and returned as a Response (FastAPI does not encode it again)."""
        chosen_view = _parse_view(view)
        get_summary = getattr(self.store, "get_summary", None) if chosen_view == TesView.MINIMAL else None
        if get_summary is not None:
            summary = await get_summary(task_id, principal.read_scope) if is_safe_id(task_id) else None
            if summary is None:
                raise TesHttpError(404, f"task not found: {task_id}")
            return Response(json_bytes({"id": summary.id, "state": summary.state.value}), media_type=_JSON)
        get_basic = getattr(self.store, "get_basic_json", None) if chosen_view == TesView.BASIC else None
        if get_basic is not None:  # from the light texts only (store/lean.py, issue 15)
            basic = await get_basic(task_id, principal.read_scope) if is_safe_id(task_id) else None
            if basic is None:
                raise TesHttpError(404, f"task not found: {task_id}")
            return Response(basic, media_type=_JSON)
        record = await self.store.get(task_id, principal.read_scope) if is_safe_id(task_id) else None
        if record is None:
            raise TesHttpError(404, f"task not found: {task_id}")
        body = render_task(record, chosen_view)
        if chosen_view == TesView.FULL and record.state == TesState.QUEUED:
            notes = await queue_notes(self.settings, self.store, record)  # docs/quotas.md
            if notes:
                logs = body.setdefault("logs", [{}])
                logs[-1]["system_logs"] = [*logs[-1].get("system_logs", []), *notes]
        return Response(json_bytes(body), media_type=_JSON)

    async def cancel_task(self, task_id: TaskIdPath, principal: PrincipalDep) -> dict[str, Any]:
        """QUEUED/INITIALIZING/RUNNING -> CANCELED at once; a task in a final state: no-op."""
        for _ in range(_CANCEL_ATTEMPTS):
            record = await self.store.get(task_id, principal.read_scope) if is_safe_id(task_id) else None
            if record is None:
                raise TesHttpError(404, f"task not found: {task_id}")
            if states.is_final(record.state):
                return {}
            updated = await self.store.update(
                task_id,
                expected=states.CANCELABLE_STATES,
                state=TesState.CANCELED,
                log=LogPatch(end_time=rfc3339(datetime.now(UTC)), system_logs=["canceled by user"]),
            )
            if updated is not None:
                log.info("task %s canceled", task_id)
                await self._tell_engine("notify_cancel", task_id)
                return {}
            # the state moved under us (e.g. QUEUED -> INITIALIZING): look again
        raise TesHttpError(409, f"task {task_id} is changing state, cancel again")

    async def _tell_engine(self, hook: str, task_id: str) -> None:
        """Wake an in-process engine at once (``notify_cancel``, and ``notify_created`` if it has
        one). The store is already right, so a failure here only delays the engine until it next
        looks at the store."""
        method = getattr(self.engine, hook, None) if self.engine is not None else None
        if method is None:
            return
        try:
            result = method(task_id)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("engine %s(%s) failed", hook, task_id)

    async def get_service_info(self, principal: ServiceInfoPrincipalDep) -> dict[str, Any]:
        return self.service_info


# The error statuses each operation really answers (ErrorResponse); 401 is added by
# tesp_api.api.openapi when authentication is on. tests/api/test_openapi*.py and schemathesis hold
# the server to these.
_ERRORS: dict[str, tuple[int, ...]] = {
    "GetServiceInfo": (),
    "ListTasks": (400, 503),
    "CreateTask": (400, 409, 413, 415, 503),
    "GetTask": (400, 404, 503),
    "CancelTask": (404, 409, 413, 503),
}


def _responses(operation_id: str, schema: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI answer documentation: 200 with the TES schema, then the operation's errors."""
    return {**ok_response(schema), **error_responses(*_ERRORS.get(operation_id, ()))}


def build_router(
    endpoints: TaskEndpoints,
    *,
    include_in_schema: bool = True,
    prefix: str = "",
    router: APIRouter | None = None,
) -> APIRouter:
    """The TES routes under ``prefix``, added to ``router`` (a new APIRouter when None).

    The app passes its own router: FastAPI >= 0.16x matches an included router's routes twice per
    request (``matches``, then again in ``handle``), ~8 % of a create's CPU (issue 15)."""
    router = APIRouter() if router is None else router
    legacy_service_info = build_legacy_service_info(endpoints.settings)

    async def get_legacy_service_info(principal: ServiceInfoPrincipalDep) -> dict[str, Any]:
        """py-tes 0.4.2 (Snakemake's TES plugin, Toil 5) asks GET /v1/tasks/service-info and parses
        exactly name, doc, storage. Added before /tasks/{id}, which would answer 404."""
        return legacy_service_info

    router.add_api_route(
        prefix + "/tasks/service-info",
        get_legacy_service_info,
        methods=["GET"],
        include_in_schema=False,
        response_model=None,
        response_class=JSONResponse,
    )
    # GET /tasks/{id}, the clients' polling path, as a plain route too (after /tasks/service-info,
    # which it would shadow); the APIRoute below documents it.
    router.routes.append(
        Route(prefix + "/tasks/{id}", endpoints.get_task_plain, methods=["GET"], include_in_schema=False)
    )
    create_body = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/tesTask"}}},
        },
        "parameters": [
            {
                "name": IDEMPOTENCY_HEADER,
                "in": "header",
                "required": False,
                "description": "a retry with the same key and body returns the first task's id (docs/api.md); "
                "another body with the same key: 409",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            }
        ],
    }
    # (path, method, handler, operation id = summary, answer schema, extra OpenAPI)
    routes: list[tuple[str, str, Any, str, str, dict[str, Any] | None]] = [
        ("/service-info", "GET", endpoints.get_service_info, "GetServiceInfo", "tesServiceInfo", None),
        ("/tasks", "GET", endpoints.list_tasks, "ListTasks", "tesListTasksResponse", None),
        ("/tasks", "POST", endpoints.create_task, "CreateTask", "tesCreateTaskResponse", create_body),
        ("/tasks/{id}", "GET", endpoints.get_task, "GetTask", "tesTaskView", None),
        ("/tasks/{id}:cancel", "POST", endpoints.cancel_task, "CancelTask", "tesCancelTaskResponse", None),
    ]
    # POST /tasks is served by a plain Starlette route placed first: the handler takes only the
    # request and answers a Response, so FastAPI's request handler (an empty dependency walk, its
    # wrappers) is pure overhead on the hottest path (~4 % of a create, issue 15). The APIRoute
    # below still documents it in the OpenAPI document; errors go through the same app handlers.
    router.routes.insert(
        0, Route(prefix + "/tasks", endpoints.create_task, methods=["POST"], include_in_schema=False)
    )
    # GET /tasks likewise (list_tasks_plain): FastAPI's solving of its eight query parameters was a
    # fifth of a MINIMAL page once SQLite built the page (issue 15).
    router.routes.insert(
        0, Route(prefix + "/tasks", endpoints.list_tasks_plain, methods=["GET"], include_in_schema=False)
    )
    for path, method, handler, operation_id, schema, extra in routes:
        router.add_api_route(
            prefix + path,
            handler,
            tags=["TaskService"],
            include_in_schema=include_in_schema,
            methods=[method],
            operation_id=operation_id,
            summary=operation_id,
            response_model=None,
            responses=_responses(operation_id, schema),
            response_class=JSONResponse,
            openapi_extra=extra,
        )
    return router
