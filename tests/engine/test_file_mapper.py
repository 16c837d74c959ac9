"""TES container paths -> mount roots under the job directory (the rules are the JobPlan's: tests/tes)."""

from __future__ import annotations

import pytest

from tesp_api.engine.file_mapper import FileMapper, PathError, host_rel, wildcard_base
from tesp_api.tes.models import TesTask


def task(**kw: object) -> TesTask:
    return TesTask.model_validate({"executors": [{"image": "i", "command": ["true"]}], **kw})


def roots(t: TesTask, map_workdirs: bool = True) -> list[str]:
    return [r.container for r in FileMapper(t, map_workdirs=map_workdirs).roots]


def test_a_file_is_mounted_through_its_directory() -> None:
    t = task(
        inputs=[{"path": "/data/in/a.txt", "content": "x"}], outputs=[{"path": "/data/out.txt", "url": "u"}]
    )
    assert roots(t) == ["/data"]


def test_nested_roots_collapse_into_the_outermost() -> None:
    t = task(volumes=["/vol/a", "/vol"], outputs=[{"path": "/vol/a/b", "url": "u", "type": "DIRECTORY"}])
    assert roots(t) == ["/vol"]


def test_sibling_names_sharing_a_prefix_stay_apart() -> None:
    t = task(volumes=["/data", "/data-2"])
    assert roots(t) == ["/data", "/data-2"]


def test_a_file_in_a_system_directory_is_mounted_alone() -> None:
    t = task(inputs=[{"path": "/etc/app.conf", "content": "x"}, {"path": "/in.txt", "content": "y"}])
    mapper = FileMapper(t, map_workdirs=True)
    assert [(r.container, r.is_file) for r in mapper.roots] == [("/etc/app.conf", True), ("/in.txt", True)]


def test_workdir_is_mapped_only_when_the_runtime_needs_it() -> None:
    t = TesTask.model_validate({"executors": [{"image": "i", "command": ["true"], "workdir": "/w"}]})
    assert roots(t, map_workdirs=True) == ["/w"]
    assert roots(t, map_workdirs=False) == []


@pytest.mark.parametrize("workdir", ["/", "/usr", "/etc"])
def test_a_workdir_that_is_slash_or_a_system_directory_is_never_mapped(workdir: str) -> None:
    """Pulsar's TES client (Galaxy) sends workdir "/": a chdir, never a mount, never an error."""
    t = TesTask.model_validate({"executors": [{"image": "i", "command": ["pwd"], "workdir": workdir}]})
    assert roots(t, map_workdirs=True) == []


def test_the_mapper_exposes_the_plan_it_maps() -> None:
    t = task(volumes=["/v"])
    assert FileMapper(t, map_workdirs=False).plan.volumes == ("/v",)


def test_std_streams_are_mapped() -> None:
    t = TesTask.model_validate(
        {
            "executors": [
                {"image": "i", "command": ["cat"], "stdin": "/in/x", "stdout": "/out/o", "stderr": "/out/e"}
            ]
        }
    )
    assert roots(t) == ["/in", "/out"]


def test_wildcard_output_mounts_its_fixed_base() -> None:
    t = task(outputs=[{"path": "/data/out/*/x.bam", "url": "u"}])
    assert wildcard_base("/data/out/*/x.bam") == "/data/out"
    assert roots(t) == ["/data/out"]


@pytest.mark.parametrize(
    "path",
    ["relative/x", "/data/../etc/passwd", "/a:b", "/a,b", "/x\ny", "/"],
)
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(PathError):
        FileMapper(task(volumes=[path]), map_workdirs=True)


def test_a_system_directory_itself_cannot_be_a_volume() -> None:
    with pytest.raises(PathError, match="system directory"):
        FileMapper(task(volumes=["/usr"]), map_workdirs=True)


def test_host_paths_live_under_fs() -> None:
    assert host_rel("/data/x") == "fs/data/x"
