"""Delivers the callback outbox: signed POSTs of a task's BASIC view to its ``callback_url``.

The store writes an event in the same transaction as every state change of a task that has a
callback_url (store/port.py ``CallbackEvent``), so nothing is lost across a crash or kill -9. This
loop, run by every process that runs the engine (``tesp-api serve`` with the engine on, ``tesp-api
worker``), claims due events under a lease (any replica may deliver, never two at once), POSTs
each one and then removes it (2xx) or schedules its next attempt (anything else), and drops an
event after ``callbacks.max_attempts`` (logged, counted). Only the oldest event of a task can be
claimed, so a receiver sees a task's states in order. Delivery is at least once: a deliverer that
dies after the POST and before the removal leaves the event to be sent again when its lease
expires, with the same ``webhook-id``. A failure never touches the task.

Signing (Standard Webhooks): ``webhook-id`` (the event's id, the same on every retry),
``webhook-timestamp`` (seconds, of this attempt) and ``webhook-signature: v1,<base64 of
HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>``, with the ``standardwebhooks`` package (stdlib
only; the key is the base64 part of ``callbacks.secret``, checked strictly by the settings).

Backoff: the schedule is kept in the store (``next_attempt``), not in a sleeping coroutine, so it
survives restarts and any replica may make the next attempt: exponential from
``callbacks.backoff_initial`` (doubling, at most ``backoff_max``) with jitter, computed by the
project's retry library (tenacity's ``wait_exponential_jitter``) from the attempt count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from standardwebhooks import Webhook

import tesp_api
from tesp_api import metrics
from tesp_api.config.settings import Settings
from tesp_api.store.port import CallbackEvent, StoreError, TaskStore
from tesp_api.transfer.callback_urls import CallbackUrls
from tesp_api.transfer.egress import EgressDenied
from tesp_api.transfer.redact import redact_url

log = logging.getLogger(__name__)

USER_AGENT = f"tesp-api/{tesp_api.__version__} (callbacks)"


def backoff_seconds(attempts: int, initial: float, maximum: float) -> float:
    """Seconds before attempt ``attempts + 1``: initial * 2**(attempts - 1) plus up to ``initial``
    of jitter (replicas retrying one dead receiver spread out), at most ``maximum``."""
    try:
        from tenacity import RetryCallState, wait_exponential_jitter
    except ImportError:  # pragma: no cover - tenacity is a dependency; the same formula without it
        return min(maximum, initial * 2.0 ** max(attempts - 1, 0) + random.uniform(0, initial))  # noqa: S311 - jitter
    wait = wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial)
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(attempts, 1)
    return float(wait(state))


def sign(secret: str, event_id: str, body: str, moment: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (``moment`` is its timestamp)."""
    signature = Webhook(secret).sign(event_id, moment, body)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signature,
    }


class CallbackDelivery:
    """The outbox delivery loop of one process (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        store: TaskStore,
        *,
        worker_id: str | None = None,
        urls: CallbackUrls | None = None,
    ) -> None:
        conf = settings.callbacks
        self.conf = conf
        self.store = store
        self.worker_id = worker_id or f"{socket.gethostname()}:{id(self):x}:callbacks"
        self.urls = urls or CallbackUrls(settings)
        self._secret = conf.secret.get_secret_value() if conf.secret is not None else ""
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return bool(self._secret)

    async def start(self) -> None:
        if not self.enabled or self._task is not None:
            return
        self._stopping.clear()
        self._task = asyncio.create_task(self._loop(), name="callback-delivery")
        log.info("callback delivery started (worker %s)", self.worker_id)

    async def stop(self) -> None:
        task, self._task = self._task, None
        self._stopping.set()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.urls.aclose()

    def wake(self) -> None:
        """Look at the outbox now (a state change in this process just wrote an event)."""
        self._wake.set()

    async def _loop(self) -> None:
        """Keep up to ``callbacks.concurrency`` deliveries in flight: a slot that frees is filled
        at once from the due events, so one slow receiver (up to ``callbacks.timeout``) holds
        one slot, never the others' callbacks."""
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping.is_set():
                free = self.conf.concurrency - len(in_flight)
                claimed = 0
                # Refill when half the slots are free (or all): one claim (a write) for several
                # events, not one per finished delivery.
                if free > 0 and (not in_flight or free >= max(1, self.conf.concurrency // 2)):
                    try:
                        now = datetime.now(UTC)
                        events = await self.store.claim_callbacks(
                            self.worker_id, now, now + timedelta(seconds=self.conf.lease_seconds), free
                        )
                    except StoreError as exc:
                        log.warning("callback delivery: the store failed: %s", exc)
                        events = []
                    except Exception:  # the loop must live on; a failure never affects tasks
                        log.exception("callback delivery: unexpected error")
                        events = []
                    for event in events:
                        delivery = asyncio.create_task(self._deliver_safely(event))
                        in_flight.add(delivery)
                        delivery.add_done_callback(in_flight.discard)
                    claimed = len(events)
                if in_flight and (free < max(1, self.conf.concurrency // 2) or claimed > 0):
                    # Full, or some went out: go on when one ends (its task's next event may be due).
                    await asyncio.wait(
                        set(in_flight), timeout=self.conf.poll_interval, return_when=asyncio.FIRST_COMPLETED
                    )
                    continue
                self._wake.clear()
                waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._wake.wait())} | in_flight
                await asyncio.wait(
                    waiters, timeout=self.conf.poll_interval, return_when=asyncio.FIRST_COMPLETED
                )
                for waiter in waiters - in_flight:
                    waiter.cancel()
        finally:
            for delivery in list(in_flight):  # their leases expire; the events are sent again
                delivery.cancel()
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)

    async def _deliver_safely(self, event: CallbackEvent) -> None:
        try:
            await self._deliver(event)
        except StoreError as exc:  # the lease expires and the event is sent again
            log.warning("callback %s of task %s: the store failed: %s", event.id, event.task_id, exc)
        except Exception:  # a failure never affects the task, nor the loop
            log.exception("callback %s of task %s: unexpected error", event.id, event.task_id)

    async def run_once(self) -> int:
        """Claim the due events (at most ``callbacks.concurrency``) and deliver them all; how many
        (one batch, for tests and tools; the loop keeps its slots full instead)."""
        now = datetime.now(UTC)
        events = await self.store.claim_callbacks(
            self.worker_id, now, now + timedelta(seconds=self.conf.lease_seconds), self.conf.concurrency
        )
        if events:
            await asyncio.gather(*(self._deliver(event) for event in events))
        return len(events)

    async def _deliver(self, event: CallbackEvent) -> None:
        shown = redact_url(event.url)
        permanent = self.urls.problem(event.url)  # settings may have changed since the create
        error = f"callback_url no longer allowed: {permanent}" if permanent else await self._post(event)
        attempts = event.attempts + 1
        if error is None:
            metrics.CALLBACK_ATTEMPTS.labels("ok").inc()
            await self.store.finish_callback(self.worker_id, event)
            log.info(
                "callback %s of task %s (%s) delivered to %s", event.id, event.task_id, event.state, shown
            )
            return
        metrics.CALLBACK_ATTEMPTS.labels("failed").inc()
        if permanent or attempts >= self.conf.max_attempts:
            metrics.CALLBACKS_DROPPED.inc()
            await self.store.finish_callback(self.worker_id, event)
            log.warning(
                "callback %s of task %s (%s) to %s dropped after %d attempt(s): %s",
                event.id,
                event.task_id,
                event.state,
                shown,
                attempts,
                error,
            )
            return
        delay = backoff_seconds(attempts, self.conf.backoff_initial, self.conf.backoff_max)
        await self.store.retry_callback(
            self.worker_id, event, datetime.now(UTC) + timedelta(seconds=delay), error
        )
        log.info(
            "callback %s of task %s (%s) to %s failed (attempt %d of %d): %s; next in %.1fs",
            event.id,
            event.task_id,
            event.state,
            shown,
            attempts,
            self.conf.max_attempts,
            error,
            delay,
        )

    async def _post(self, event: CallbackEvent) -> str | None:
        """One signed POST; None on a 2xx answer, else why it failed (no secret, no URL secrets)."""
        body = event.payload
        headers: dict[str, Any] = {
            **sign(self._secret, event.id, body, datetime.now(UTC)),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }
        try:
            response = await self.urls.client_for(event.url).post(
                event.url, content=body.encode("utf-8"), headers=headers
            )
        except EgressDenied as exc:
            return f"refused by the SSRF guard: {exc.reason}"
        except httpx.TimeoutException:
            return "timed out"
        except httpx.TransportError as exc:
            cause: BaseException | None = exc
            while cause is not None:
                if isinstance(cause, EgressDenied):
                    return f"refused by the SSRF guard: {cause.reason}"
                cause = cause.__cause__ or cause.__context__
            return f"connection problem ({type(exc).__name__})"
        await response.aclose()
        if 200 <= response.status_code < 300:
            return None
        if 300 <= response.status_code < 400:
            return f"HTTP {response.status_code} (redirects are never followed)"
        return f"HTTP {response.status_code}"
