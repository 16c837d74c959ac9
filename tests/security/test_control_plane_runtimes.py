"""The control-plane attack of test_control_plane.py on every runtime that runs here: bwrap, docker
(a private dockerd) and podman (a private store), each with the real ``local/busybox:1`` image
(tests/runtimes/conftest.py builds the runtimes; bwrap runs the host's busybox).

The attacker is busybox's wget: ``POST /jobs?job_id=<victim>``, then ``POST /jobs/<victim>/submit``
with ``command_line=id > <marker>``; it also looks for Pulsar's Unix socket and app.yml (the token).
Each test asserts what the attacker saw and that Pulsar ran nothing.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tesp_api.config.settings import Settings
from tesp_api.engine import Engine
from tesp_api.local import LocalPulsar
from tesp_api.store.sqlite import SqliteTaskStore
from tesp_api.tes.models import TesState
from tests.engine.conftest import submit, wait_for
from tests.runtimes.conftest import RealRuntime, real_runtime  # noqa: F401 - the parametrized fixture
from tests.security.test_control_plane import (  # noqa: F401 - fixtures
    assert_nothing_ran,
    socket_pulsar,
    tcp_open_pulsar,
    tcp_token_pulsar,
)

pytestmark = [pytest.mark.pulsar]

ATTACK = r"""
target=$1 victim=$2 marker=$3 sock=$4 app_yml=$5
busybox wget -q -O /dev/null --post-data= "http://$target/jobs?job_id=$victim" 2>&1; echo "setup rc=$?"
busybox wget -q -O /dev/null --post-data= \
  "http://$target/jobs/$victim/submit?command_line=id%20%3E%20$marker" 2>&1; echo "submit rc=$?"
test -e "$sock"; echo "socket rc=$?"
cat "$app_yml" >/dev/null 2>&1; echo "app_yml rc=$?"
"""


def settings_for(pulsar: LocalPulsar, runtime: RealRuntime, tmp: Path, network: str | None) -> Settings:
    chosen: dict[str, Any] = dict(runtime.settings)
    if network is not None:
        chosen["network"] = network
    return Settings.model_validate(
        {
            "pulsar": {
                "url": pulsar.url,
                "uds": pulsar.uds,
                "private_token": pulsar.private_token,
                "status": {"poll_interval": 0.2},
                "retries": 1,
                "unreachable_deadline": 5,
            },
            "engine": {"work_dir": str(tmp / "work"), "claim_interval": 0.1, "lease_seconds": 10},
            "runtime": chosen,
            "db": {"sqlite_path": str(tmp / "tasks.sqlite3")},
        }
    )


async def attack(
    pulsar: LocalPulsar, runtime: RealRuntime, store: SqliteTaskStore, tmp: Path, network: str | None
) -> tuple[str, str, Path]:
    victim, marker = f"victim-{uuid.uuid4().hex}", tmp / "ESCAPED"
    target = "127.0.0.1:1" if pulsar.uds else f"{pulsar.host}:{pulsar.port}"  # a socket Pulsar has no port
    engine = Engine(settings_for(pulsar, runtime, tmp, network), store)
    await engine.start()
    try:
        task_id = await submit(
            store,
            {
                "executors": [
                    {
                        "image": runtime.image,
                        "command": [
                            "sh",
                            "-c",
                            ATTACK,
                            "attack",
                            target,
                            victim,
                            str(marker),
                            str(pulsar.state_dir / "pulsar.sock"),
                            str(pulsar.state_dir / "app.yml"),
                        ],
                    }
                ]
            },
        )
        record = await wait_for(store, task_id, timeout=240)
    finally:
        await engine.stop()
    assert record.state == TesState.COMPLETE, (record.log.system_logs, record.log.logs)
    seen = record.log.logs[0].stdout or ""
    print(f"{runtime.kind} attacker saw:", seen)
    return seen, victim, marker


async def test_by_default_no_runtime_lets_an_executor_reach_pulsar(
    tcp_open_pulsar: LocalPulsar,
    real_runtime: RealRuntime,
    store: SqliteTaskStore,
    tmp_path: Path,
) -> None:
    seen, victim, marker = await attack(tcp_open_pulsar, real_runtime, store, tmp_path, None)
    assert "setup rc=0" not in seen and "submit rc=0" not in seen, seen
    assert seen.count("can't connect to remote host") == 2, seen  # no answer at all: no connection
    assert "app_yml rc=0" not in seen, seen
    assert_nothing_ran(tcp_open_pulsar, victim, marker)


async def test_with_the_host_network_every_runtime_meets_the_token(
    tcp_token_pulsar: LocalPulsar,
    real_runtime: RealRuntime,
    store: SqliteTaskStore,
    tmp_path: Path,
) -> None:
    seen, victim, marker = await attack(tcp_token_pulsar, real_runtime, store, tmp_path, "host")
    assert seen.count("401 Unauthorized") == 2, seen  # it connected, and was refused twice
    assert "app_yml rc=0" not in seen, seen
    assert_nothing_ran(tcp_token_pulsar, victim, marker)


async def test_with_the_host_network_no_runtime_shows_an_executor_pulsars_socket(
    socket_pulsar: LocalPulsar,
    real_runtime: RealRuntime,
    store: SqliteTaskStore,
    tmp_path: Path,
) -> None:
    seen, victim, marker = await attack(socket_pulsar, real_runtime, store, tmp_path, "host")
    assert "socket rc=1" in seen and "app_yml rc=1" in seen, seen  # busybox ran: "No such file"
    assert_nothing_ran(socket_pulsar, victim, marker)
