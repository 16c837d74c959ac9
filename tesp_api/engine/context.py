"""What a task driver is given: its collaborators, explicitly (docs/architecture.md, "Engine").

The driver (driver.py) drives one task; the engine (engine.py) claims tasks and owns the shared
things. The driver never sees the Engine: it gets this small, typed context, so the two modules do
not import each other (the engine imports the driver, nothing imports back), and a test can drive a
task with exactly the collaborators it chooses.

Staging and the runtime are built lazily by the engine (the runtime's auto-detection runs
``docker info`` & co.; staging opens HTTP clients), so they are passed as zero-argument callables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tesp_api.config.settings import EngineSettings, PulsarSettings, RuntimeSettings
    from tesp_api.engine.runtimes import Runtime
    from tesp_api.engine.staging import Staging
    from tesp_api.pulsar.port import PulsarBackend
    from tesp_api.store.port import TaskRecord, TaskStore


class Counters(Protocol):
    """The engine's statistics (benchmarks, /metrics): one call per Pulsar status poll and submit."""

    def count_poll(self) -> None: ...

    def count_submit(self) -> None: ...


class StatsCounters:
    """Counters kept in a plain dict (the engine's ``stats``, shown by ``Engine.snapshot``)."""

    __slots__ = ("stats",)

    def __init__(self, stats: dict[str, int]) -> None:
        self.stats = stats

    def count_poll(self) -> None:
        self.stats["polls"] = self.stats.get("polls", 0) + 1

    def count_submit(self) -> None:
        self.stats["submits"] = self.stats.get("submits", 0) + 1


@dataclass(frozen=True, slots=True)
class DriverContext:
    """Everything a TaskDriver uses, and nothing more.

    ``backend_for`` resolves the record's Pulsar server (``backend.server``) to its backend, and
    ``choose_server`` picks one for a task leaving QUEUED (both the engine's routing). ``worker_id``
    is the lease owner every store write is conditioned on."""

    engine: EngineSettings
    pulsar: PulsarSettings
    runtime_settings: RuntimeSettings
    store: TaskStore
    worker_id: str
    backend_for: Callable[[TaskRecord], PulsarBackend]
    choose_server: Callable[[TaskRecord], str]
    staging: Callable[[], Staging]
    runtime: Callable[[], Runtime]
    counters: Counters
