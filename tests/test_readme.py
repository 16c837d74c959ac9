"""The README's newcomer path works as written: its shell blocks are taken from README.md itself and run,
so the README cannot drift from the code.

"Quick start" runs in the background in this checkout, as a newcomer's first terminal would hold it;
then "Use it" runs as pasted into a second terminal, against that same server. Two parametrisations,
both from outside the blocks' text where possible: the API port comes from ``TESP_API_API__PORT`` (a
free one, so a service on 8080 is not disturbed) and is substituted for ``127.0.0.1:8080`` in "Use it";
``CONTAINER_TYPE=bwrap`` because no image registry is reachable here (podman or docker would try to
pull ``alpine``). The Quick start server is stopped by its PID (SIGTERM: `tesp-api local` stops its
Pulsar), its process group killed after a timeout.

The commands' options are checked against the README's Commands section in both directions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tesp_api.local import free_port
from tests.services.die_with_parent import die_with_parent

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
SHIPPED_PORT = "127.0.0.1:8080"


def section(title: str) -> str:
    """The text of the README's ``## <title>...`` section, up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(title)}.*?$(.*?)(?=^## |\Z)", README, re.MULTILINE | re.DOTALL)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def shell_blocks(title: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", section(title), re.MULTILINE | re.DOTALL)


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TESP_API_") and k not in ("FASTAPI_PROFILE", "CONTAINER_TYPE", "VIRTUAL_ENV")
    }
    env.update(extra)
    return env


def test_quick_start_and_use_it_are_one_shell_block_each() -> None:
    assert len(shell_blocks("Quick start")) == 1
    assert len(shell_blocks("Use it")) == 1
    assert SHIPPED_PORT in shell_blocks("Use it")[0]  # what the port substitution below replaces


@dataclass
class QuickStart:
    port: int
    process: subprocess.Popen[bytes]
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def quick_start() -> Iterator[QuickStart]:
    """The Quick start block running in the background (the newcomer's first terminal)."""
    port = free_port()
    log_file = REPO / ".tesp-api" / "readme-test.log"
    log_file.parent.mkdir(exist_ok=True)
    with log_file.open("wb") as log:
        proc = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", shell_blocks("Quick start")[0]],
            cwd=REPO,
            env=clean_env(TESP_API_API__PORT=str(port), CONTAINER_TYPE="bwrap"),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )  # noqa: PLW1509 - one C call, see die_with_parent.py
    try:
        yield QuickStart(port, proc, log_file)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.mark.pulsar
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_use_it_runs_as_pasted_against_the_quick_start_server(quick_start: QuickStart) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl, which the README's Use it block calls, is not installed")
    script = shell_blocks("Use it")[0].replace(SHIPPED_PORT, f"127.0.0.1:{quick_start.port}")
    # Started at once: the block's own loop waits for the server. Bounded, and stopped by PID if the
    # server dies (the block would wait for ever) or the README is broken.
    use_it = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=REPO,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )  # noqa: PLW1509 - one C call, see die_with_parent.py
    deadline = time.monotonic() + 420  # generous: a loaded 2-core machine starts Python slowly
    try:
        while use_it.poll() is None:
            assert quick_start.process.poll() is None, "Quick start's server exited:\n" + quick_start.log()
            assert time.monotonic() < deadline, "Use it did not finish:\n" + quick_start.log()
            time.sleep(0.2)
    finally:
        if use_it.poll() is None:
            os.killpg(use_it.pid, signal.SIGKILL)
            use_it.wait(timeout=10)
    output = use_it.stdout.read() if use_it.stdout else ""
    assert use_it.returncode == 0, output + quick_start.log()
    lines = output.splitlines()
    task_id = next(line.split()[1] for line in lines if line.startswith("task "))
    answers = [json.loads(line) for line in lines if line.startswith("{")]
    full = next(a for a in answers if a.get("id") == task_id and "logs" in a)
    assert full["state"] == "COMPLETE", full
    assert full["logs"][0]["logs"][0]["stdout"] == "hello\nfrom TES\n"
    assert any(task_id in {t["id"] for t in a.get("tasks", [])} for a in answers)  # the list call
    assert any(a.get("type", {}).get("artifact") == "tes" for a in answers)  # service-info
    assert answers[-1] == {}  # the cancel
    api = f"http://127.0.0.1:{quick_start.port}/ga4gh/tes/v1"
    newest = httpx.get(f"{api}/tasks", params={"view": "FULL", "page_size": 1}, timeout=10).json()["tasks"][0]
    assert newest["executors"][0]["command"] == ["sleep", "600"]
    assert newest["state"] == "CANCELED"


# ---- the Commands section and the real options ------------------------------------------------------


def command_options() -> dict[str, set[str]]:
    """Each command's long options, from the parsers themselves."""
    from tesp_api.cli import build_parser
    from tesp_api.local import build_parser as local_parser

    def longs(parser: argparse.ArgumentParser) -> set[str]:
        return {
            o
            for action in parser._actions
            for o in action.option_strings
            if o.startswith("--") and o != "--help"
        }

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    options = {name: longs(parser) for name, parser in sub.choices.items() if name in ("serve", "worker")}
    options["local"] = longs(local_parser())
    return options


def test_every_option_of_every_command_is_in_the_readme() -> None:
    text = section("Commands")
    for command, options in command_options().items():
        assert f"`{command}`" in text or f"`tesp-api {command}`" in text
        for option in options:
            assert f"`{option}" in text, f"README's Commands section does not mention {command} {option}"


def test_the_readme_names_only_options_the_commands_have() -> None:
    text = section("Commands")
    claims = re.search(r"`serve`, `worker` and `local` take (.*?);", text, re.DOTALL)
    assert claims, "the sentence saying which options every command takes"
    shared = set(re.findall(r"`(--[a-z-]+)", claims.group(1)))
    assert shared == {"--settings", "--profile"}
    for command, options in command_options().items():
        assert shared <= options, command
    mentioned = set(re.findall(r"`(--[a-z-]+)", text))
    assert mentioned <= set().union(*command_options().values()), mentioned


def test_the_readme_says_where_the_command_lives() -> None:
    assert ".venv/bin/tesp-api" in section("Quick start")
    assert (REPO / "scripts" / "run.sh").read_text().count('exec "$VENV/bin/tesp-api" local') == 1


def test_every_command_answers_help() -> None:
    for command in ("serve", "worker", "local", "hash-password"):
        done = subprocess.run(
            [sys.executable, "-m", "tesp_api", command, "--help"],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            env=clean_env(),
        )
        assert done.returncode == 0 and "usage" in done.stdout, (command, done.stderr)


def test_use_it_waits_for_the_server_before_its_first_request() -> None:
    block = shell_blocks("Use it")[0]
    first_request = block.index("curl -s -X POST")
    assert "until curl" in block[:first_request]
    assert "scripts/run.sh" not in block and "tesp-api local" not in block  # no second server
