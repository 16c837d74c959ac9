"""The task engine: claims tasks with leases and runs them on Pulsar (see docs/engine.md)."""

from tesp_api.engine.engine import Engine, build_backends

__all__ = ["Engine", "build_backends"]
