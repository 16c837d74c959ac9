"""prometheus-client multiprocess mode as ``tesp-api serve`` with api.workers >= 1 uses it
(tesp_api/metrics.py, docs/metrics.md), with real forked processes. Each case runs in a fresh
interpreter: switching the value class would change this test process's metrics for every other test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

# In the child interpreter: the parent's part of tesp_api/workers.py (directory, fork, reap,
# process_ended), a forked child that counts, and two scrapes: before and after the child is marked dead.
SCRIPT = """
import json, multiprocessing, sys
from prometheus_client import generate_latest
from tesp_api import metrics

metrics.use_multiprocess_dir(sys.argv[1])

def child() -> None:
    metrics.process_started("api")
    metrics.TASKS_CREATED.inc(3)
    metrics.PULSAR_REQUESTS.labels("default", "ok").inc()

process = multiprocessing.get_context("fork").Process(target=child)
process.start()
process.join()
scrape = lambda: generate_latest(metrics.multiprocess_registry()).decode()
before = scrape()
metrics.process_ended(process.pid)
print(json.dumps({"before": before, "after": scrape()}))
"""


def scrapes(directory: Path) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(directory)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return {
        when: {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        for when, text in json.loads(out).items()
    }


def test_an_exited_child_leaves_the_live_process_gauge_once_marked_dead(tmp_path: Path) -> None:
    seen = scrapes(tmp_path)
    assert seen["before"][("tesp_serve_processes", (("role", "api"),))] == 1
    assert ("tesp_serve_processes", (("role", "api"),)) not in seen["after"]


def test_an_exited_childs_counters_stay_in_the_sums(tmp_path: Path) -> None:
    after = scrapes(tmp_path)["after"]
    assert after[("tesp_tasks_created_total", ())] == 3
    assert after[("tesp_pulsar_requests_total", (("outcome", "ok"), ("server", "default")))] == 1
