"""The runtime CLI's proxy settings never reach an executor (real podman).

``runtime.env`` is the environment of the runtime CLI inside the Pulsar job (DOCKER_HOST,
CONTAINERS_CONF, ... and an operator's HTTP(S)_PROXY for pulls, possibly with credentials in it).
podman copies the proxy variables of its own environment into every container unless told
``--http-proxy=false``: a task could read the operator's proxy URL, and every request an executor makes
would go through that proxy (Galaxy's stage-in executor did: tests/e2e/test_pulsar_tes_client.py).
The argv comes from tesp-api's own podman builder and runs with the private test store.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tesp_api.config.settings import RuntimeSettings
from tesp_api.engine.runtimes import build_runtime
from tesp_api.engine.runtimes.base import ExecutorRun
from tests.services.images import BUSYBOX_IMAGE
from tests.services.podman import PodmanStore

SECRET_PROXY = "http://operator:pr0xy-s3cret@127.0.0.1:9"
PROXY_ENV = {name: SECRET_PROXY for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}


def podman_argv(store: PodmanStore, name: str) -> list[str]:
    settings = RuntimeSettings.model_validate(
        {"type": "podman", "podman_bin": store.binary, "pull_policy": "never"}
    )
    runtime = build_runtime(settings)
    argv = runtime.command(ExecutorRun(name=name, image=BUSYBOX_IMAGE, command=["env"]))
    assert all(isinstance(word, str) for word in argv)  # no mounts, no task env: plain words only
    return [str(word) for word in argv]


def run_with_proxy_env(store: PodmanStore, argv: list[str]) -> str:
    env = {**os.environ, **store.env, **PROXY_ENV}  # as runtime.env would set it for the CLI
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_podman_executors_do_not_inherit_the_runtime_clis_proxy(podman_store: PodmanStore) -> None:
    output = run_with_proxy_env(podman_store, podman_argv(podman_store, "tes-proxy-check-0"))
    assert "pr0xy-s3cret" not in output
    assert "PATH=" in output  # the executor did run and print its environment


def test_without_the_flag_podman_would_hand_the_proxy_to_the_executor(podman_store: PodmanStore) -> None:
    """The control: the attack is real, the flag is what stops it."""
    argv = [w for w in podman_argv(podman_store, "tes-proxy-check-1") if w != "--http-proxy=false"]
    output = run_with_proxy_env(podman_store, argv)
    if "pr0xy-s3cret" not in output:
        pytest.skip("this podman does not copy proxy variables into containers: nothing to defend")
    assert f"HTTP_PROXY={SECRET_PROXY}" in output
