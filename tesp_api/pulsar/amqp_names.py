"""Exchange and queue names Pulsar uses on the broker, computed exactly as Pulsar's own client does
(pulsar/client/amqp_exchange.py): one direct, durable exchange ``pulsar``; queues ``{prefix}_{name}``
where the prefix is ``amqp_key_prefix`` when set, ``pulsar_`` for the manager ``_default_`` and
``pulsar_{manager}_`` otherwise. Getting one character wrong here means messages silently go nowhere,
so the rule lives in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

EXCHANGE = "pulsar"
DEFAULT_MANAGER = "_default_"


def key_prefix(manager: str = DEFAULT_MANAGER, amqp_key_prefix: str | None = None) -> str:
    if amqp_key_prefix is not None:
        return amqp_key_prefix
    if manager == DEFAULT_MANAGER:
        return "pulsar_"
    return f"pulsar_{manager}_"


@dataclass(frozen=True)
class PulsarQueues:
    """The queue (= routing key) names of one Pulsar manager."""

    prefix: str

    @classmethod
    def for_manager(cls, manager: str = DEFAULT_MANAGER, amqp_key_prefix: str | None = None) -> PulsarQueues:
        return cls(key_prefix(manager, amqp_key_prefix))

    def name(self, suffix: str) -> str:
        return f"{self.prefix}_{suffix}"

    @property
    def setup(self) -> str:
        return self.name("setup")

    @property
    def kill(self) -> str:
        return self.name("kill")

    @property
    def status(self) -> str:
        return self.name("status")

    @property
    def status_update(self) -> str:
        return self.name("status_update")

    @property
    def consumed_by_pulsar(self) -> tuple[str, str, str]:
        return (self.setup, self.kill, self.status)
