"""GET /metrics: Prometheus text format (docs/metrics.md). Off with ``api.metrics = false``.

Protected like service-info: open unless ``auth.service_info_public`` is false, then it needs the
same credentials as the TES routes. The counters come from prometheus-client's registry
(tesp_api/metrics.py): this process's in one process, and with api.workers >= 1 the sum over every
process of the service (multiprocess mode: whichever API process is scraped gives the same answer).
``tesp_tasks{state}`` is read from the store at each scrape, once, by the process that answers:
it is never one of the summed per-process values, so it cannot be counted twice.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tesp_api.api.deps import Principal, service_info_principal
from tesp_api.metrics import multiprocess_registry
from tesp_api.tes.models import TesState

METRICS_URL = "/metrics"


class _Fixed(Collector):
    """Hands prometheus-client metric families computed beforehand (the store is async)."""

    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self._families = families

    def collect(self) -> Any:
        return iter(self._families)


async def task_state_gauge(store: Any) -> GaugeMetricFamily | None:
    count_by_state = getattr(store, "count_by_state", None)
    if count_by_state is None:
        return None
    counts: dict[TesState, int] = await count_by_state()
    gauge = GaugeMetricFamily("tesp_tasks", "Tasks in the store, by state", labels=["state"])
    for state in TesState:
        gauge.add_metric([state.value], float(counts.get(state, 0)))
    return gauge


def install_metrics(app: FastAPI, store: Any) -> None:
    async def metrics(principal: Annotated[Principal, Depends(service_info_principal)]) -> Response:
        # Multiprocess mode leaves out this process's process_*/python_* metrics: they would change
        # with the API process the kernel picked for the scrape.
        summed = multiprocess_registry()
        body = generate_latest(REGISTRY if summed is None else summed)
        gauge = await task_state_gauge(store)
        if gauge is not None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Fixed([gauge]))
            body += generate_latest(registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    app.add_api_route(METRICS_URL, metrics, methods=["GET"], include_in_schema=False)
