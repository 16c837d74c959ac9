"""Talk to one Pulsar manager over AMQP (aio-pika): publish setup/kill/status messages, receive pushed
status updates.

Why it is built this way:

* **Updates are pushed, not polled.** Pulsar publishes a job's full status on every state change to
  ``{prefix}_status_update``. Pulsar never declares that queue, so we declare and bind it (durable) in
  :meth:`AmqpPulsarClient.start`, before anything is submitted; otherwise the broker drops the updates.
  We also declare Pulsar's own queues (same arguments as kombu uses), so a setup message published while
  Pulsar is down waits in its queue instead of being dropped as unroutable.
* **At-least-once, acknowledged after the work is done.** The ``on_update`` callback (which writes the
  store) runs first; only when it returns is the message acked. If it raises, the message is requeued
  after a short delay; if the process dies, the broker redelivers it to the next consumer. Receivers
  must therefore tolerate duplicates (the store's compare-and-set does).
* **Silence is checked, cheaply.** Pulsar publishes nothing after a kill and nothing while a job runs,
  and a message can be lost if Pulsar dies at the wrong moment. A slow sweep sends a ``status`` request
  for jobs not heard of for ``reconcile_after`` seconds (soon and repeatedly after a kill), capped at
  ``reconcile_max_per_minute`` requests so the steady-state cost does not grow with the number of jobs.
* **Several workers, one Pulsar.** Besides the shared durable queue, each client consumes a queue of its
  own (exclusive, bound to the same routing key), so every process sees every update of its jobs.
* **Broker restarts are survived.** ``connect_robust`` reconnects and re-declares the exchange, queues,
  bindings and the consumer; publishing retries with backoff until ``publish_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from tesp_api.metrics import AMQP_MESSAGES
from tesp_api.pulsar.amqp_messages import SetupMessage, kill_body, status_request_body
from tesp_api.pulsar.amqp_names import EXCHANGE, PulsarQueues

log = logging.getLogger(__name__)

PULSAR_FINAL_STATES = frozenset({"complete", "cancelled", "failed", "lost"})

# Everything that means "the broker connection is not usable right now; try again later".
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    aio_pika.exceptions.AMQPConnectionError,
    aio_pika.exceptions.ChannelInvalidStateError,
    aio_pika.exceptions.ChannelClosed,
    aiormq.exceptions.AMQPError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    RuntimeError,  # aio-pika raises RuntimeError("... closed") on a channel being restored
)


class PulsarAmqpUnavailable(Exception):
    """The broker could not be reached (or would not take a message) within the allowed time."""


@dataclass(frozen=True)
class PulsarStatusUpdate:
    """One status message from Pulsar: the same dict its REST ``/jobs/{id}/status`` answers."""

    job_id: str
    status: str
    body: Mapping[str, Any]

    @property
    def is_final(self) -> bool:
        return self.status in PULSAR_FINAL_STATES

    @property
    def returncode(self) -> int | None:
        value = self.body.get("returncode")
        return value if isinstance(value, int) else None

    @classmethod
    def from_body(cls, body: object) -> PulsarStatusUpdate:
        if not isinstance(body, dict):
            raise TypeError("status update is not a JSON object")
        job_id, status = body.get("job_id"), body.get("status")
        if not isinstance(job_id, str) or not job_id or not isinstance(status, str):
            raise ValueError("status update without job_id/status")
        return cls(job_id=job_id, status=status, body=body)


StatusCallback = Callable[[PulsarStatusUpdate], Awaitable[None]]


@dataclass
class _Tracked:
    next_ask: float
    kill_pending: bool = False
    backoff: float = 0.5


@dataclass(frozen=True)
class AmqpClientOptions:
    reconcile_after: float = 60.0  # seconds of silence before a status request
    reconcile_max_per_minute: int = 300  # status requests the sweep may send per minute (all jobs)
    sweep_interval: float = 1.0
    kill_first_check: float = 0.5  # first status request after a kill; doubles up to reconcile_after
    prefetch: int = 32
    publish_timeout: float = 60.0  # keep retrying a publish this long while the broker is away
    connect_timeout: float = 60.0  # first connection at start()
    reconnect_interval: float = 2.0
    redelivery_delay: float = 1.0  # wait before requeueing an update whose callback raised
    connection_name: str = "tesp-api"
    dedupe_window: float = 10.0  # an identical update within this many seconds is not processed again
    own_update_queue: bool = True  # also consume every update through a per-process queue (multi-worker)


@dataclass
class AmqpClientStats:
    """Counters for the benchmark and for logs; cheap to keep."""

    published: Counter[str] = field(default_factory=Counter)
    received: int = 0
    callback_errors: int = 0
    rejected: int = 0
    duplicates: int = 0


class AmqpPulsarClient:
    def __init__(
        self,
        url: str,
        queues: PulsarQueues,
        on_update: StatusCallback,
        options: AmqpClientOptions | None = None,
    ) -> None:
        self._url = url
        self.queues = queues
        self._on_update = on_update
        self.options = options or AmqpClientOptions()
        self.stats = AmqpClientStats()
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._tracked: dict[str, _Tracked] = {}
        self._ask_again: set[str] = set()  # final update not believed yet: keep asking
        self._job_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._reconcile_tokens = 0.0
        self._recent: dict[tuple[str, bytes], float] = {}  # update fingerprints -> when processed
        # Jobs whose status was requested and not answered yet: their next update is delivered even if
        # identical to a recent one (Pulsar answers a repeated request with the same bytes).
        self._answer_wanted: set[str] = set()
        self._last_sweep: float | None = None

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, declare everything, start consuming updates and the reconcile sweep."""
        self._connection = await self._connect_with_backoff()
        channel = await self._connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=self.options.prefetch)
        self._channel = channel
        # Same declaration as Pulsar's kombu code: direct, durable; a mismatch would close the channel.
        self._exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
        shared: AbstractQueue | None = None
        for name in (*self.queues.consumed_by_pulsar, self.queues.status_update):
            queue = await channel.declare_queue(name, durable=True)
            await queue.bind(self._exchange, routing_key=name)
            if name == self.queues.status_update:
                shared = queue
        assert shared is not None
        update_queues: list[AbstractQueue] = [shared]
        if self.options.own_update_queue:
            # Several processes (tesp-api workers) may drive jobs of one Pulsar: on the shared queue they
            # would compete and a job's update could reach another worker. A queue of our own, bound to the
            # same routing key, receives every update while we are connected; the shared durable queue
            # keeps what is published while nobody is (whoever gets it; owners also reconcile).
            own = await channel.declare_queue(
                f"{self.queues.status_update}.{uuid.uuid4().hex[:12]}", exclusive=True, auto_delete=True
            )
            await own.bind(self._exchange, routing_key=self.queues.status_update)
            update_queues.append(own)
        for update_queue in update_queues:
            tag = await update_queue.consume(self._handle_message, no_ack=False)
            self._consumers.append((update_queue, tag))
        self._sweeper = asyncio.create_task(self._sweep_forever(), name=f"amqp-sweep-{self.queues.prefix}")
        log.info("AMQP client consuming %s", self.queues.status_update)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for queue, tag in self._consumers:
            with contextlib.suppress(*_TRANSIENT_ERRORS):
                await queue.cancel(tag)
        self._consumers = []
        if self._connection is not None:
            with contextlib.suppress(*_TRANSIENT_ERRORS):
                await self._connection.close()
        self._connection = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _connect_with_backoff(self) -> AbstractRobustConnection:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.connect_timeout
        delay = 0.25
        while True:
            try:
                return await aio_pika.connect_robust(
                    self._url,
                    reconnect_interval=self.options.reconnect_interval,
                    client_properties={"connection_name": self.options.connection_name},
                )
            except _TRANSIENT_ERRORS as exc:
                if loop.time() + delay > deadline:
                    raise PulsarAmqpUnavailable(f"cannot connect to the AMQP broker: {exc!r}") from exc
                log.warning("AMQP broker not reachable (%s); retrying in %.1fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    @property
    def is_connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed

    # ---- commands --------------------------------------------------------------------------------

    async def submit(self, setup: SetupMessage) -> None:
        """Publish the setup message (persistent, confirmed) and start watching the job."""
        self.track(setup.job_id)
        await self._publish(self.queues.setup, setup.to_body(), kind="setup")

    async def kill(self, job_id: str) -> None:
        """Ask Pulsar to kill the job. Pulsar publishes no update for a kill, so we ask soon after."""
        await self._publish(self.queues.kill, kill_body(job_id), kind="kill")
        loop = asyncio.get_running_loop()
        tracked = self._tracked.setdefault(job_id, _Tracked(next_ask=0.0))
        tracked.kill_pending = True
        tracked.backoff = self.options.kill_first_check
        tracked.next_ask = loop.time() + self.options.kill_first_check

    async def request_status(self, job_id: str) -> None:
        """Ask Pulsar to publish the job's current full status (it arrives through ``on_update``, also
        when its bytes are those of an update processed a moment ago)."""
        self._answer_wanted.add(job_id)
        await self._publish(self.queues.status, status_request_body(job_id), kind="status")

    def track(self, job_id: str) -> None:
        """Watch a job for silence (e.g. jobs taken over after a restart of this service)."""
        if job_id not in self._tracked:
            now = asyncio.get_running_loop().time()
            self._tracked[job_id] = _Tracked(next_ask=now + self.options.reconcile_after)

    def forget(self, job_id: str) -> None:
        self._tracked.pop(job_id, None)
        self._answer_wanted.discard(job_id)
        self._ask_again.discard(job_id)

    def ask_again_later(self, job_id: str) -> None:
        """Keep watching a job although the update being handled is final (the receiver did not believe
        it, e.g. a first "lost"): without this the job would never be asked about again."""
        self._ask_again.add(job_id)

    @property
    def tracked_jobs(self) -> frozenset[str]:
        return frozenset(self._tracked)

    async def _publish(self, routing_key: str, body: Mapping[str, Any], kind: str) -> None:
        message = aio_pika.Message(
            json.dumps(body).encode(),
            content_type="application/json",  # kombu (Pulsar) only accepts json
            content_encoding="utf-8",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.publish_timeout
        delay = 0.2
        while True:
            try:
                if self._exchange is None:
                    raise PulsarAmqpUnavailable("AMQP client not started")
                await self._exchange.publish(message, routing_key=routing_key, mandatory=True, timeout=30)
                self.stats.published[kind] += 1
                AMQP_MESSAGES.labels("out", kind).inc()
                return
            except aio_pika.exceptions.DeliveryError as exc:  # unroutable or nacked: not transient
                raise PulsarAmqpUnavailable(f"broker refused the {kind} message: {exc!r}") from exc
            except _TRANSIENT_ERRORS as exc:
                if loop.time() + delay > deadline:
                    raise PulsarAmqpUnavailable(f"could not publish {kind} message: {exc!r}") from exc
                log.warning("publishing %s failed (%s); retrying in %.1fs", kind, type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # ---- receiving -------------------------------------------------------------------------------

    async def _handle_message(self, message: AbstractIncomingMessage) -> None:
        self.stats.received += 1
        AMQP_MESSAGES.labels("in", "status_update").inc()
        try:
            update = PulsarStatusUpdate.from_body(json.loads(message.body))
        except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
            self.stats.rejected += 1
            log.warning("dropping malformed status update on %s: %s", self.queues.status_update, exc)
            await self._settle(message.reject(requeue=False))
            return
        fingerprint = (update.job_id, hashlib.sha1(message.body, usedforsecurity=False).digest())
        async with self._job_lock(update.job_id):
            if fingerprint in self._recent and update.job_id not in self._answer_wanted:
                # The same update through the other queue (shared + own), or a repeated identical
                # update nobody asked for: the receiver has it already.
                self.stats.duplicates += 1
                await self._settle(message.ack())
                return
            try:
                await self._on_update(update)
            except Exception:
                self.stats.callback_errors += 1
                log.exception("status update for job %s not processed; it will be redelivered", update.job_id)
                await asyncio.sleep(self.options.redelivery_delay)
                await self._settle(message.nack(requeue=True))
                return
            self._recent[fingerprint] = asyncio.get_running_loop().time()
            self._answer_wanted.discard(update.job_id)
            self._heard(update)
            await self._settle(message.ack())

    @staticmethod
    async def _settle(awaitable: Awaitable[Any]) -> None:
        """Ack/nack; if the channel died meanwhile the broker redelivers the message, which is fine."""
        try:
            await awaitable
        except _TRANSIENT_ERRORS as exc:
            log.info("could not settle a status message (%s); it will be redelivered", type(exc).__name__)

    @contextlib.asynccontextmanager
    async def _job_lock(self, job_id: str) -> Any:
        """Updates of one job are processed in arrival order; different jobs concurrently."""
        lock, users = self._job_locks.get(job_id, (asyncio.Lock(), 0))
        self._job_locks[job_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._job_locks[job_id]
            if users <= 1:
                del self._job_locks[job_id]
            else:
                self._job_locks[job_id] = (lock, users - 1)

    def _heard(self, update: PulsarStatusUpdate) -> None:
        now = asyncio.get_running_loop().time()
        if update.job_id in self._ask_again:
            self._ask_again.discard(update.job_id)
            again = self._tracked.setdefault(update.job_id, _Tracked(next_ask=now))
            again.next_ask = now + self.options.reconcile_after
            return
        tracked = self._tracked.get(update.job_id)
        if tracked is None:
            return
        if update.is_final:
            del self._tracked[update.job_id]
            return
        if tracked.kill_pending:
            tracked.next_ask = now + tracked.backoff
        else:
            tracked.next_ask = now + self.options.reconcile_after

    # ---- reconcile sweep -------------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.options.sweep_interval)
            try:
                await self.sweep_once()
            except PulsarAmqpUnavailable as exc:
                log.warning("reconcile sweep could not publish: %s", exc)
            except Exception:
                log.exception("reconcile sweep failed")

    async def sweep_once(self) -> int:
        """Send status requests for due jobs, oldest first: killed jobs always, silent jobs within the
        per-minute budget (token bucket)."""
        opts = self.options
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._recent = {k: t for k, t in self._recent.items() if now - t < opts.dedupe_window}
        rate = opts.reconcile_max_per_minute / 60.0
        burst = max(rate * min(opts.sweep_interval, 1.0), 1.0)  # never more than ~1 s worth at once
        elapsed = now - self._last_sweep if self._last_sweep is not None else opts.sweep_interval
        self._last_sweep = now
        self._reconcile_tokens = min(self._reconcile_tokens + elapsed * rate, burst)
        if not self._tracked:
            return 0
        due = sorted((t.next_ask, job_id) for job_id, t in self._tracked.items() if t.next_ask <= now)
        # Jobs just killed are asked regardless of the budget: their number is bounded by user actions,
        # and a cancel should end promptly. The silent-job checks share the budget.
        killed = [job_id for _, job_id in due if self._tracked[job_id].kill_pending]
        silent = [job_id for _, job_id in due if not self._tracked[job_id].kill_pending]
        chosen = killed + silent[: max(int(self._reconcile_tokens), 0)]
        sent = 0
        for job_id in chosen:
            tracked = self._tracked.get(job_id)
            if tracked is None:
                continue
            if tracked.kill_pending:
                tracked.next_ask = now + tracked.backoff
                tracked.backoff = min(tracked.backoff * 2, opts.reconcile_after)
            else:
                tracked.next_ask = now + opts.reconcile_after
                self._reconcile_tokens -= 1
            await self.request_status(job_id)
            sent += 1
        return sent
