"""The task engine: claims tasks with leases and runs them on Pulsar (see docs/engine.md)."""

from tesp_api.engine.engine import Engine
from tesp_api.pulsar.factory import build_backends

__all__ = ["Engine", "build_backends"]
