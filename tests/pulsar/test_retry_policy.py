"""The one retry policy at the backend boundary (tesp_api/pulsar/retrying.py), on virtual time.

The backends here are fakes that fail on cue (a fake only where nothing real can do it: a Pulsar that
is down for exactly ten minutes, or hangs for a client_timeout on each attempt). The event loop runs
on virtual time: when nothing is ready, the clock jumps to the next timer instead of sleeping, so a
600 s deadline is checked to the millisecond in no time, and no assertion depends on the machine's
speed. What a real Pulsar behind a faulty proxy does is in test_faulty_pulsar.py.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tesp_api.config.settings import Settings
from tesp_api.pulsar.factory import build_backends
from tesp_api.pulsar.port import BackendError, BackendUnavailable, JobSpec, JobStatus
from tesp_api.pulsar.rest import RestBackend
from tesp_api.pulsar.retrying import RetryingBackend, RetryPolicy, retry_listener, unwrap

T = TypeVar("T")
DEADLINE = 600.0
CLIENT_TIMEOUT = 30.0


class _VirtualSelector(selectors.DefaultSelector):
    """select() that, with nothing ready, lets the virtual clock jump by its timeout."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout is None or timeout <= 0:
            return ready if ready or timeout is not None else super().select(None)
        self.offset += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return super().time() + self._virtual.offset


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(coro_fn())


class FakeBackend:
    """Answers ``status`` by the script: an exception is raised, a float hangs that long (then
    raises BackendUnavailable, as a client timeout does), a string is the status answered."""

    name = "fake"

    def __init__(self, script: list[object], *, then: object = "running") -> None:
        self.script = list(script)
        self.then = then
        self.calls: list[float] = []  # virtual time of each attempt
        self.submits = 0
        self.job_status = "preprocessing"

    async def _next(self) -> str:
        self.calls.append(asyncio.get_running_loop().time())
        step = self.script.pop(0) if self.script else self.then
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, float):
            await asyncio.sleep(step)
            raise BackendUnavailable("ReadTimeout")
        return str(step)

    async def status(self, job_id: str) -> JobStatus:
        if self.submits:  # asked before a retried submit
            return JobStatus(job_id, self.job_status)
        return JobStatus(job_id, await self._next())

    async def submit(self, spec: JobSpec) -> None:
        self.submits += 1
        self.job_status = "queued"  # Pulsar got it ...
        await self._next()  # ... but its answer may be lost

    async def prepare(self, spec: JobSpec) -> None: ...
    async def cancel(self, job_id: str) -> None: ...
    async def fetch(self, job_id: str, name: str, dest: Path) -> bool:
        return False

    async def clean(self, job_id: str) -> None: ...
    async def aclose(self) -> None: ...

    def wait_for_change(self) -> str:
        return "the adapter's own"


def down() -> BackendUnavailable:
    return BackendUnavailable("ConnectError: connection refused")


async def timed(call: Callable[[], Awaitable[T]]) -> tuple[T | BaseException, float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        result: T | BaseException = await call()
    except Exception as exc:  # noqa: BLE001 - the test looks at it
        result = exc
    return result, loop.time() - started


def test_an_unreachable_pulsar_is_retried_until_the_deadline_then_the_call_raises() -> None:
    fake = FakeBackend([], then=down())
    backend = RetryingBackend(fake, RetryPolicy(DEADLINE))
    result, took = run(lambda: timed(lambda: backend.status("t")))
    assert isinstance(result, BackendUnavailable)
    assert "unreachable for" in str(result) and "deadline 600s" in str(result)
    assert 0.95 * DEADLINE <= took <= 1.1 * DEADLINE
    assert len(fake.calls) > 10  # backed off, not a busy loop: ~0.5, 1, 2, ... 30 s apart


def test_a_hanging_pulsar_does_not_carry_the_call_past_the_deadline() -> None:
    """Each attempt waits client_timeout; the last one is cut to the time left (the old nested
    loops overshot by about (retries + 1) x client_timeout)."""
    fake = FakeBackend([down()], then=CLIENT_TIMEOUT * 7)  # 210 s per attempt
    backend = RetryingBackend(fake, RetryPolicy(DEADLINE))
    result, took = run(lambda: timed(lambda: backend.status("t")))
    assert isinstance(result, BackendUnavailable)
    assert 0.95 * DEADLINE <= took <= 1.1 * DEADLINE
    assert "cut at the deadline" in str(result)


def test_the_deadline_counts_from_the_first_failure_not_from_the_first_attempt() -> None:
    fake = FakeBackend([CLIENT_TIMEOUT], then=down())  # the first attempt takes 30 s to fail
    backend = RetryingBackend(fake, RetryPolicy(DEADLINE))
    result, took = run(lambda: timed(lambda: backend.status("t")))
    assert isinstance(result, BackendUnavailable)
    assert 0.95 * DEADLINE <= took - CLIENT_TIMEOUT <= 1.1 * DEADLINE


def test_a_refusal_is_never_retried() -> None:
    fake = FakeBackend([BackendError("HTTP 401: Pulsar refused the private token")])
    backend = RetryingBackend(fake, RetryPolicy(DEADLINE))
    result, took = run(lambda: timed(lambda: backend.status("t")))
    assert isinstance(result, BackendError)
    assert len(fake.calls) == 1 and took == pytest.approx(0, abs=0.5)


def test_other_exceptions_pass_through_unretried() -> None:
    fake = FakeBackend([ValueError("a bug")])
    backend = RetryingBackend(fake, RetryPolicy(DEADLINE))
    result, _ = run(lambda: timed(lambda: backend.status("t")))
    assert isinstance(result, ValueError) and len(fake.calls) == 1


def test_a_call_that_recovers_answers_and_each_retry_is_reported_with_the_time_waited() -> None:
    heard: list[tuple[str, float]] = []
    fake = FakeBackend([down(), down(), down()], then="running")
    backend = RetryingBackend(
        fake, RetryPolicy(DEADLINE), on_retry=lambda exc, waited: heard.append((str(exc), waited))
    )
    result, _ = run(lambda: timed(lambda: backend.status("t")))
    assert isinstance(result, JobStatus) and result.status == "running"
    assert len(fake.calls) == 4 and len(heard) == 3
    assert [w for _, w in heard] == sorted(w for _, w in heard)
    assert all("connection refused" in text for text, _ in heard)


def test_waits_grow_exponentially_with_jitter_up_to_the_cap() -> None:
    fake = FakeBackend([down()] * 12, then="running")
    policy = RetryPolicy(DEADLINE, initial_wait=0.5, max_wait=30.0, jitter=0.5)
    run(lambda: RetryingBackend(fake, policy).status("t"))
    gaps = [b - a for a, b in zip(fake.calls, fake.calls[1:], strict=False)]
    assert gaps[0] >= 0.5 and gaps[1] >= 1.0 and gaps[2] >= 2.0
    assert all(g <= policy.max_wait + 0.01 for g in gaps)
    assert gaps[-1] >= 0.9 * policy.max_wait


def test_each_task_hears_only_the_retries_of_its_own_calls() -> None:
    heard: dict[str, list[float]] = {"a": [], "b": []}
    flaky = RetryingBackend(FakeBackend([down(), down()]), RetryPolicy(DEADLINE))
    fine = RetryingBackend(FakeBackend([]), RetryPolicy(DEADLINE))

    async def task(name: str, backend: RetryingBackend) -> None:
        with retry_listener(lambda exc, waited: heard[name].append(waited)):
            await backend.status(name)

    async def both() -> None:
        await asyncio.gather(task("a", flaky), task("b", fine))

    run(both)
    assert len(heard["a"]) == 2 and heard["b"] == []


def test_an_async_listener_is_awaited() -> None:
    heard: list[float] = []

    async def listener(exc: BackendUnavailable, waited: float) -> None:
        await asyncio.sleep(0)
        heard.append(waited)

    async def call() -> None:
        with retry_listener(listener):
            await RetryingBackend(FakeBackend([down()]), RetryPolicy(DEADLINE)).status("t")

    run(call)
    assert len(heard) == 1


def test_a_submit_whose_answer_was_lost_is_not_sent_again() -> None:
    """Pulsar got the first submit (status: queued) but the answer never came back: the retry
    asks for the status and does not start the job a second time."""
    fake = FakeBackend([down()], then="ok")
    backend = RetryingBackend(fake, RetryPolicy(DEADLINE))
    run(lambda: backend.submit(JobSpec("t", "s.sh", [])))
    assert fake.submits == 1


def test_a_submit_that_never_reached_pulsar_is_sent_again() -> None:
    fake = FakeBackend([down()], then="ok")
    backend = RetryingBackend(fake, RetryPolicy(DEADLINE))

    async def submit_lost_before_pulsar() -> None:
        original = fake.submit

        async def submit(spec: JobSpec) -> None:
            try:
                await original(spec)
            finally:
                if fake.submits == 1:
                    fake.job_status = "preprocessing"  # this one never got there

        fake.submit = submit  # type: ignore[method-assign]
        await backend.submit(JobSpec("t", "s.sh", []))

    run(submit_lost_before_pulsar)
    assert fake.submits == 2


def test_the_wrapper_keeps_the_adapters_own_attributes() -> None:
    fake = FakeBackend([])
    backend = RetryingBackend(fake, RetryPolicy(DEADLINE))
    assert backend.name == "fake"
    assert backend.wait_for_change() == "the adapter's own"
    assert unwrap(backend) is fake


def test_the_factory_puts_every_backend_behind_the_policy_with_the_configured_deadline() -> None:
    settings = Settings.model_validate({"pulsar": {"url": "http://127.0.0.1:9", "unreachable_deadline": 42}})
    (backend,) = build_backends(settings).values()
    assert isinstance(backend, RetryingBackend)
    assert backend.policy.deadline == 42
    assert isinstance(unwrap(backend), RestBackend)
    asyncio.run(backend.aclose())


def test_engine_build_backends_is_the_factorys() -> None:
    from tesp_api.engine import engine

    assert engine.build_backends is build_backends


class SteppedBackend(FakeBackend):
    """An adapter whose prepare is three requests (REST: setup, then uploads)."""

    def __init__(self, failures: dict[int, int]) -> None:
        super().__init__([])
        self.failures = failures
        self.runs = [0, 0, 0]

    def prepare_steps(self, spec: JobSpec) -> list[Callable[[], Awaitable[None]]]:
        def step(i: int) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                self.runs[i] += 1
                if self.failures.get(i, 0) >= self.runs[i]:
                    raise down()

            return run

        return [step(0), step(1), step(2)]


def test_prepare_repeats_the_request_that_failed_not_the_whole_job() -> None:
    """With a share of requests failing, repeating every upload of a job after each failure
    rarely gets through (seen: a task SYSTEM_ERROR behind the 30 % faulty proxy)."""
    fake = SteppedBackend({1: 2})
    run(lambda: RetryingBackend(fake, RetryPolicy(DEADLINE)).prepare(JobSpec("t", "s.sh", [])))
    assert fake.runs == [1, 3, 1]


class ProgressingBackend(FakeBackend):
    """Honours time_left (like REST: its client timeout is cut to it) and is slow but alive."""

    honours_time_left = True

    def __init__(self) -> None:
        super().__init__([down()])
        self.told: list[float | None] = []

    async def status(self, job_id: str) -> JobStatus:
        from tesp_api.pulsar.retrying import time_left

        self.told.append(time_left())
        if len(self.told) == 1:
            raise down()
        await asyncio.sleep(3 * 60.0)  # a big answer streaming in, past the deadline
        return JobStatus(job_id, "running")


def test_an_adapter_that_cuts_its_own_timeouts_is_told_the_time_left_and_not_cut_off() -> None:
    fake = ProgressingBackend()
    result, took = run(lambda: timed(lambda: RetryingBackend(fake, RetryPolicy(60.0)).status("t")))
    assert isinstance(result, JobStatus) and result.status == "running"
    assert fake.told[0] is None  # the first attempt: no deadline yet
    assert fake.told[1] is not None and 55.0 <= fake.told[1] <= 60.0
    assert took > 60.0
