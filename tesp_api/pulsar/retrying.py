"""ONE retry policy for every Pulsar call, at the backend boundary (docs/engine.md, "Retries").

``RetryingBackend`` wraps any ``PulsarBackend`` (REST or AMQP; the factory wraps each one it
builds). The adapters make single attempts and say what a failure means: ``BackendUnavailable``
(connection error, timeout, 5xx: may go away by itself) or ``BackendError`` (4xx, an answer that
will not change). Only the first is retried here, with exponential backoff and jitter, until
``pulsar.unreachable_deadline`` seconds after the first failure of that call; then the last
``BackendUnavailable`` is raised, naming how long Pulsar was unreachable. The engine turns that into
the task's SYSTEM_ERROR. ``BackendError`` and every other exception pass through at once.

Why the deadline holds (within a few per cent, never over): the wait before an attempt is cut so
that the attempt still has time, and every attempt after the first is cut to the time left, so a
hanging Pulsar (a request that waits for ``client_timeout`` per read) cannot carry the call past
the deadline. An adapter that says ``honours_time_left`` (REST) cuts its client timeout (per read,
write, connect) to ``time_left()``: a hanging request ends at the deadline, while a big download
that makes progress is not cut off. Other adapters' attempts run under ``asyncio.timeout(time
left)``. The first attempt is not cut: the deadline counts from the first failure.

Why tenacity: it is the library the Python ecosystem uses for this (stamina itself is built on
it), and it lets the policy be written as three small functions of the call's own state (stop at
the deadline counted from the first failure, a wait cut to the time left, a callback before each
sleep), where stamina's timeout counts from the first attempt and its hooks are process-global.

``on_retry(exc, waited)`` (given to the wrapper, or bound for one task with ``retry_listener``)
is called before each wait: the driver uses it to say in the task's system_logs that Pulsar is
unreachable and until when it is retried.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from tesp_api.pulsar.port import BackendUnavailable, JobSpec, JobStatus, PulsarBackend

if TYPE_CHECKING:
    from tesp_api.config.settings import PulsarSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

# Called before each wait with the failure and the seconds since the call first failed; may be async.
# What Pulsar reports for a job it was given (submitted): "preprocessing" is before, "lost" unknown.
SUBMITTED_STATUSES = frozenset({"queued", "running", "postprocessing", "complete", "cancelled", "failed"})

OnRetry = Callable[[BackendUnavailable, float], object]

_listener: ContextVar[OnRetry | None] = ContextVar("tesp_pulsar_retry_listener", default=None)
# When the running retried attempt must end (event loop time): the deadline of its call.
_attempt_ends: ContextVar[float | None] = ContextVar("tesp_pulsar_attempt_ends", default=None)


def time_left() -> float | None:
    """Seconds the running attempt may still take (None: not a retry, no limit from the policy).
    Adapters with ``honours_time_left = True`` cut their client timeout to it."""
    ends = _attempt_ends.get()
    if ends is None:
        return None
    return max(0.001, ends - asyncio.get_running_loop().time())


@contextmanager
def retry_listener(callback: OnRetry | None) -> Iterator[None]:
    """Calls ``callback`` for the retries of the Pulsar calls made in this context (one task's
    driver: asyncio tasks copy the context, so each driver hears only its own calls)."""
    token = _listener.set(callback)
    try:
        yield
    finally:
        _listener.reset(token)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``deadline``: seconds after a call's first failure until it gives up. Waits grow from
    ``initial_wait`` by 2x per attempt up to ``max_wait``, plus up to ``jitter`` seconds at random
    (so that many tasks waiting for the same Pulsar do not all knock at once)."""

    deadline: float
    initial_wait: float = 0.5
    max_wait: float = 30.0
    jitter: float = 0.5

    @classmethod
    def from_settings(cls, pulsar: PulsarSettings) -> RetryPolicy:
        return cls(deadline=pulsar.unreachable_deadline)

    @property
    def min_attempt(self) -> float:
        """The least time an attempt is given: no attempt is started with less left (5 % of the
        deadline, at most a second), so the call ends between 0.95 and 1.0 x the deadline."""
        return min(1.0, 0.05 * self.deadline)


class _Call:
    """The state of one retried call: when it first failed, on the event loop's clock (the clock
    ``asyncio.timeout`` and ``asyncio.sleep`` use)."""

    __slots__ = ("first_failure", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.first_failure: float | None = None

    def waited(self) -> float:
        return 0.0 if self.first_failure is None else self.loop.time() - self.first_failure

    def left(self, deadline: float) -> float:
        return deadline - self.waited()


class RetryingBackend:
    """A ``PulsarBackend`` whose calls are retried by ``policy``; anything else (``name``,
    ``wait_for_change``, ``healthz``, ...) is the wrapped backend's own (``__getattr__``)."""

    def __init__(self, inner: PulsarBackend, policy: RetryPolicy, *, on_retry: OnRetry | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.policy = policy
        self._on_retry = on_retry
        self._wait = wait_exponential_jitter(
            multiplier=policy.initial_wait, max=policy.max_wait, jitter=policy.jitter
        )

    def __getattr__(self, attr: str) -> Any:
        # Only called for attributes the wrapper lacks: the adapter's extras (AMQP's
        # wait_for_change, REST's healthz, an optional liveness probe) stay reachable.
        return getattr(self.inner, attr)

    def __repr__(self) -> str:
        return f"RetryingBackend({self.inner!r}, deadline={self.policy.deadline}s)"

    # ---- the policy ----------------------------------------------------------------------------
    async def call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """``await fn()`` under the policy; ``what`` names the call in logs and the final error."""
        call = _Call(asyncio.get_running_loop())
        policy = self.policy

        def stop(_: RetryCallState) -> bool:
            return call.left(policy.deadline) <= policy.min_attempt

        def wait(state: RetryCallState) -> float:
            return max(0.0, min(self._wait(state), call.left(policy.deadline) - policy.min_attempt))

        async def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            assert isinstance(exc, BackendUnavailable)
            waited = call.waited()
            log.warning(
                "Pulsar %s: %s failed (%s); attempt %d, unreachable for %.1fs, retrying in %.1fs "
                "(until %.0fs after the first failure)",
                self.name,
                what,
                exc,
                state.attempt_number,
                waited,
                state.upcoming_sleep,
                policy.deadline,
            )
            for callback in (self._on_retry, _listener.get()):
                if callback is not None:
                    result = callback(exc, waited)
                    if inspect.isawaitable(result):
                        await result

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(BackendUnavailable),
            stop=stop,
            wait=wait,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(call, fn)
        except BackendUnavailable as exc:
            raise BackendUnavailable(
                f"Pulsar {self.name} unreachable for {call.waited():.1f}s "
                f"(deadline {policy.deadline:g}s, {what}): {exc}"
            ) from exc
        raise AssertionError("tenacity ended without an outcome")  # pragma: no cover

    async def _attempt(self, call: _Call, fn: Callable[[], Awaitable[T]]) -> T:
        if call.first_failure is None:  # the first attempt: the deadline has not started
            try:
                return await fn()
            except BackendUnavailable:
                call.first_failure = call.loop.time()
                raise
        left = call.left(self.policy.deadline)
        if getattr(self.inner, "honours_time_left", False):
            # The adapter cuts its own client timeout to time_left(): a request that hangs ends
            # at the deadline, one that makes progress (a big download) is not cut off.
            token = _attempt_ends.set(call.loop.time() + left)
            try:
                return await fn()
            finally:
                _attempt_ends.reset(token)
        timeout = asyncio.timeout(left)
        try:
            async with timeout:
                return await fn()
        except TimeoutError:
            if not timeout.expired():
                raise
            raise BackendUnavailable(f"attempt cut at the deadline after {left:.1f}s") from None

    # ---- PulsarBackend -------------------------------------------------------------------------
    async def prepare(self, spec: JobSpec) -> None:
        """An adapter that can say what ``prepare`` is made of (``prepare_steps``: REST's setup and
        uploads) has each step retried on its own (its own deadline: a step that got through ended
        that outage); otherwise ``prepare`` is retried whole."""
        steps: Callable[[JobSpec], list[Callable[[], Awaitable[None]]]] | None = getattr(
            self.inner, "prepare_steps", None
        )
        if steps is None:
            await self.call("prepare", lambda: self.inner.prepare(spec))
            return
        for i, step in enumerate(steps(spec)):
            await self.call(f"prepare (step {i + 1})", step)

    async def submit(self, spec: JobSpec) -> None:
        """A submit is not idempotent (Pulsar would start the job again), and a failed attempt may
        have reached Pulsar (its answer lost on the way back): before each retry, Pulsar is asked
        whether the job has started, and a started job is not submitted again."""
        retried = False

        async def once() -> None:
            nonlocal retried
            if retried and (await self.inner.status(spec.job_id)).status in SUBMITTED_STATUSES:
                log.info("Pulsar %s: job %s started by an earlier submit attempt", self.name, spec.job_id)
                return
            retried = True
            await self.inner.submit(spec)

        await self.call("submit", once)

    async def status(self, job_id: str) -> JobStatus:
        return await self.call("status", lambda: self.inner.status(job_id))

    async def cancel(self, job_id: str) -> None:
        await self.call("cancel", lambda: self.inner.cancel(job_id))

    async def fetch(self, job_id: str, name: str, dest: Path) -> bool:
        return await self.call(f"fetch {name}", lambda: self.inner.fetch(job_id, name, dest))

    async def clean(self, job_id: str) -> None:
        await self.call("clean", lambda: self.inner.clean(job_id))

    async def aclose(self) -> None:
        await self.inner.aclose()


def unwrap(backend: PulsarBackend) -> PulsarBackend:
    """The adapter under any retrying wrapper (for code and tests that need its own type)."""
    while isinstance(backend, RetryingBackend):
        backend = backend.inner
    return backend
