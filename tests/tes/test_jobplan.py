"""The JobPlan: what a task's paths, image, env, wildcards and volumes may be, and what the job gets from them."""

from __future__ import annotations

from typing import Any

import pytest

from tesp_api.tes.jobplan import (
    JobPlan,
    MountRoot,
    OutputKind,
    PlanError,
    build_plan,
    effective_prefix,
    has_wildcard,
    image_problem,
    implicit_prefix,
    matches,
    normalise,
    path_problem,
    wildcard_base,
)
from tesp_api.tes.models import TesFileType, TesOutput, TesTask

EXECUTOR: dict[str, Any] = {"image": "alpine", "command": ["true"]}


def task(**fields: Any) -> TesTask:
    return TesTask.model_validate({"executors": [EXECUTOR], **fields})


def executor(**fields: Any) -> TesTask:
    return task(executors=[{**EXECUTOR, **fields}])


def plan(t: TesTask) -> JobPlan:
    return build_plan(t)


def problems(t: TesTask) -> list[tuple[str, str]]:
    with pytest.raises(PlanError) as info:
        build_plan(t)
    return list(info.value.problems)


def fields(t: TesTask) -> list[str]:
    return [where for where, _ in problems(t)]


def roots(t: TesTask, with_workdirs: bool = True) -> list[tuple[str, bool]]:
    return [(r.container, r.is_file) for r in build_plan(t).roots(with_workdirs=with_workdirs)]


# --- image references ----------------------------------------------------------------------------

GOOD_IMAGES = [
    "alpine",
    "alpine:3.19",
    "library/alpine",
    "local/busybox:1",
    "docker.io/library/alpine:latest",
    "quay.io/biocontainers/samtools:1.17--h00cdaf9_0",
    "localhost:5000/my-image",
    "registry.example.org:443/a/b/c:tag",
    "127.0.0.1:5000/x",
    "[::1]:5000/x:1",
    "my_image__x",
    "a-b--c",
    "ubuntu@sha256:" + "a" * 64,
    "ubuntu:22.04@sha256:" + "0123456789abcdef" * 4,
    "Registry.Example/x",  # upper case is allowed in the registry host, never in the path
    "docker://alpine:3",
    "docker-daemon://local/busybox:1",
    "oras://ghcr.io/org/image:1",
    "library://sylabsed/examples/lolcow:latest",
    "library://alpine",
    "shub://vsoch/hello-world",
    "/cvmfs/singularity.galaxyproject.org/s/a/samtools:1.9--h10a08f8_12.sif".replace(":", "_"),
    "/images/tool.simg",
]

BAD_IMAGES = [
    "",
    " ",
    "--privileged",
    "-v",
    "-",
    "Alpine",
    "alpine:",
    "alpine:-x",
    "alpine tag",
    " alpine",
    "alpine\n",
    "alpine\x00",
    "alpine@sha256:abc",
    "alpine@sha256",
    "a" * 256,
    "/",
    "a//b",
    "a/",
    "_alpine",
    "alpine.",
    "registry:port/x",
    "docker://--privileged",
    "docker://",
    "library://-x",
    "shub://a b",
    "/images/tool.tar",
    "/images/../etc/tool.sif",
    "/images/a:b.sif",
    "http://example.org/image",
    "alpine:" + "t" * 129,
]


@pytest.mark.parametrize("image", GOOD_IMAGES)
def test_valid_image_references_are_accepted(image: str) -> None:
    assert image_problem(image) is None


@pytest.mark.parametrize("image", BAD_IMAGES)
def test_invalid_image_references_are_refused(image: str) -> None:
    assert image_problem(image) is not None


def test_an_option_like_image_is_refused_naming_the_field() -> None:
    where, reason = problems(executor(image="--privileged"))[0]
    assert where == "executors[0].image"
    assert "option" in reason


def test_a_very_long_image_name_is_refused() -> None:
    assert "255" in (image_problem("a" * 256) or "")


# --- paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "relative/x",
        "",
        "-v",
        "--privileged",
        "/a/../b",
        "/a/..",
        "/..",
        "/../a",
        "/a/b/../../..",
        "/a:b",
        "/a,b",
        "/x\ny",
        "/x\ty",
        "/x\x00y",
        "/x\x7fy",
        "/x\udc00y",
        "/" + "a" * 256,
        "/a" * 1100,
    ],
)
def test_unsafe_paths_are_refused(path: str) -> None:
    assert path_problem(path) is not None


@pytest.mark.parametrize(
    "path",
    ["/", "/data", "/data/", "//data//x", "/a/./b", "/a/%2e%2e/b", "/a/...", "/a/..b", "/with space/é"],
)
def test_paths_that_stay_where_they_say_are_accepted(path: str) -> None:
    assert path_problem(path) is None


def test_paths_are_normalised_without_resolving_anything() -> None:
    assert normalise("//data//x/./y/") == "/data/x/y"
    assert normalise("/") == "/"
    assert normalise("/a/%2e%2e/b") == "/a/%2e%2e/b"  # never URL-decoded: a plain name


def test_a_dotdot_segment_is_refused_wherever_a_path_is_given() -> None:
    t = task(
        inputs=[{"path": "/a/../etc/passwd", "content": "x"}],
        outputs=[{"path": "/out/..", "url": "http://h/o"}],
        volumes=["/v/../.."],
        executors=[
            {**EXECUTOR, "workdir": "/w/..", "stdin": "/../in", "stdout": "/o/../x", "stderr": "/e/.."}
        ],
    )
    assert sorted(fields(t)) == sorted(
        [
            "inputs[0].path",
            "outputs[0].path",
            "volumes[0]",
            "executors[0].workdir",
            "executors[0].stdin",
            "executors[0].stdout",
            "executors[0].stderr",
        ]
    )


def test_every_problem_is_reported_at_once() -> None:
    t = task(volumes=["rel", "/a:b"], executors=[{"image": "-x", "command": ["true"], "env": {"1": "v"}}])
    assert fields(t) == ["volumes[0]", "volumes[1]", "executors[0].image", "executors[0].env"]
    assert str(PlanError([("a", "b"), ("c", "d")])) == "a: b; c: d"


def test_a_colon_or_comma_in_any_path_is_refused_at_admission() -> None:
    t = task(outputs=[{"path": "/out/a:b", "url": "http://h/o"}], volumes=["/v,w"])
    assert fields(t) == ["outputs[0].path", "volumes[0]"]


def test_paths_in_proc_or_sys_are_refused() -> None:
    t = task(volumes=["/proc/sys"], inputs=[{"path": "/sys/x", "content": "x"}])
    assert sorted(fields(t)) == ["inputs[0].path", "volumes[0]"]


# --- workdir -------------------------------------------------------------------------------------


def test_workdir_slash_is_only_a_chdir() -> None:
    """Pulsar's TES client (Galaxy) sends workdir "/" on every executor."""
    p = plan(executor(workdir="/"))
    assert p.executors[0].workdir == "/"
    assert p.workdirs == ()
    assert p.roots(with_workdirs=True) == ()


@pytest.mark.parametrize("workdir", ["/usr", "/etc", "/tmp/..x", "/proc/self", "/home"])
def test_any_absolute_workdir_is_accepted(workdir: str) -> None:
    assert plan(executor(workdir=workdir)).executors[0].workdir == workdir


def test_a_system_directory_as_workdir_is_never_mounted() -> None:
    assert plan(executor(workdir="/usr")).workdirs == ()


def test_an_option_like_workdir_is_refused() -> None:
    assert fields(executor(workdir="--privileged")) == ["executors[0].workdir"]


def test_workdirs_are_listed_apart_from_the_mount_roots() -> None:
    t = task(
        executors=[
            {**EXECUTOR, "workdir": "/w"},
            {**EXECUTOR, "workdir": "/w/"},
            {**EXECUTOR, "workdir": "/"},
        ]
    )
    p = plan(t)
    assert p.workdirs == ("/w",)
    assert p.roots(with_workdirs=False) == ()
    assert p.roots(with_workdirs=True) == (MountRoot("/w", False),)


def test_a_workdir_below_a_mounted_directory_needs_no_root_of_its_own() -> None:
    t = task(volumes=["/data"], executors=[{**EXECUTOR, "workdir": "/data/run"}])
    assert roots(t) == [("/data", False)]


# --- mount roots ---------------------------------------------------------------------------------


def test_a_file_is_mounted_through_its_directory() -> None:
    t = task(
        inputs=[{"path": "/data/in/a.txt", "content": "x"}], outputs=[{"path": "/data/out.txt", "url": "u"}]
    )
    assert roots(t) == [("/data", False)]


def test_nested_roots_collapse_into_the_outermost() -> None:
    t = task(volumes=["/vol/a", "/vol"], outputs=[{"path": "/vol/a/b", "url": "u", "type": "DIRECTORY"}])
    assert roots(t) == [("/vol", False)]


def test_sibling_names_sharing_a_prefix_stay_apart() -> None:
    assert roots(task(volumes=["/data", "/data-2"])) == [("/data", False), ("/data-2", False)]


def test_a_file_directly_in_a_system_directory_is_mounted_alone() -> None:
    t = task(inputs=[{"path": "/etc/app.conf", "content": "x"}, {"path": "/in.txt", "content": "y"}])
    assert roots(t) == [("/etc/app.conf", True), ("/in.txt", True)]


def test_std_streams_are_mounted_through_their_directories() -> None:
    t = executor(stdin="/in/x", stdout="/out/o", stderr="/out/e")
    assert roots(t) == [("/in", False), ("/out", False)]


@pytest.mark.parametrize("volume", ["/", "/usr", "/etc", "/var", "/home"])
def test_a_system_directory_cannot_be_a_volume(volume: str) -> None:
    where, reason = problems(task(volumes=[volume]))[0]
    assert where == "volumes[0]"
    assert "cannot be mounted" in reason


def test_a_directory_input_cannot_be_a_system_directory() -> None:
    assert fields(task(inputs=[{"path": "/usr", "url": "http://h/d", "type": "DIRECTORY"}])) == [
        "inputs[0].path"
    ]


def test_galaxy_shaped_tasks_are_planned() -> None:
    """Pulsar's TES client: three executors with workdir "/" and the shared volume /pulsar_staging/."""
    t = task(
        volumes=["/pulsar_staging/"],
        executors=[
            {"image": "galaxy/pulsar-pod-staging:0.15.0", "command": ["pulsar-submit"], "workdir": "/"},
            {
                "image": "quay.io/biocontainers/samtools:1.17--h00cdaf9_0",
                "command": ["bash", "x"],
                "workdir": "/",
            },
            {"image": "galaxy/pulsar-pod-staging:0.15.0", "command": ["pulsar-finish"], "workdir": "/"},
        ],
    )
    p = plan(t)
    assert p.volumes == ("/pulsar_staging",)
    assert p.roots(with_workdirs=True) == (MountRoot("/pulsar_staging", False),)
    assert [e.workdir for e in p.executors] == ["/", "/", "/"]


# --- conflicts known at create -------------------------------------------------------------------


def test_two_inputs_at_the_same_path_are_refused() -> None:
    t = task(inputs=[{"path": "/data/a", "content": "x"}, {"path": "/data//a", "content": "y"}])
    where, reason = problems(t)[0]
    assert where == "inputs[1].path" and "inputs[0]" in reason


def test_nothing_can_lie_below_a_file() -> None:
    t = task(inputs=[{"path": "/data/a", "content": "x"}], volumes=["/data/a/v"])
    where, reason = problems(t)[0]
    assert where == "volumes[0]" and "file" in reason


def test_a_file_cannot_also_be_a_directory() -> None:
    t = task(
        inputs=[{"path": "/data/a", "content": "x"}],
        outputs=[{"path": "/data/a", "url": "u", "type": "DIRECTORY"}],
    )
    assert fields(t) == ["outputs[0].path"]


def test_stdout_may_be_an_output_and_stdin_an_input() -> None:
    t = task(
        inputs=[{"path": "/data/in", "content": "x"}],
        outputs=[{"path": "/data/out", "url": "u"}],
        executors=[{**EXECUTOR, "stdin": "/data/in", "stdout": "/data/out"}],
    )
    assert roots(t) == [("/data", False)]


def test_a_file_input_may_lie_in_a_directory_input() -> None:
    t = task(
        inputs=[
            {"path": "/ref", "url": "http://h/d", "type": "DIRECTORY"},
            {"path": "/ref/x.fa", "content": "x"},
        ]
    )
    assert roots(t) == [("/ref", False)]


# --- executors: command, env ---------------------------------------------------------------------


def test_a_nul_in_a_command_argument_is_refused_naming_it() -> None:
    where, reason = problems(executor(command=["echo", "a\x00b"]))[0]
    assert (where, "NUL" in reason) == ("executors[0].command[1]", True)


def test_an_empty_program_name_is_refused() -> None:
    assert fields(executor(command=[""])) == ["executors[0].command[0]"]


def test_an_empty_command_is_refused() -> None:
    assert fields(executor(command=[])) == ["executors[0].command"]


def test_no_executors_is_refused() -> None:
    assert fields(task(executors=[])) == ["executors"]


@pytest.mark.parametrize("name", ["", "1A", "A-B", "A=B", "A B", "A\x00", "É", "$X", "A.B"])
def test_bad_env_names_are_refused(name: str) -> None:
    assert fields(executor(env={name: "v"})) == ["executors[0].env"]


@pytest.mark.parametrize("name", ["A", "_", "_a1", "PATH", "lower_case"])
def test_env_names_of_letters_digits_and_underscores_are_accepted(name: str) -> None:
    assert plan(executor(env={name: "v"})).executors[0].env == {name: "v"}


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\x00b", "\udc00"])
def test_env_values_an_env_file_cannot_carry_are_refused(value: str) -> None:
    assert fields(executor(env={"K": value})) == ["executors[0].env.K"]


def test_env_values_may_hold_anything_else() -> None:
    value = "x=y; $(rm -rf /) 'q' \"d\" \t é"
    assert plan(executor(env={"K": value})).executors[0].env == {"K": value}


def test_the_executor_plan_carries_what_the_job_runs() -> None:
    t = executor(
        command=["sh", "-c", "cat"],
        workdir="/w//",
        stdin="/in//x",
        stdout="/o/x",
        stderr="/o/e",
        env={"A": "1"},
        ignore_error=True,
    )
    ex = plan(t).executors[0]
    assert (
        ex.index,
        ex.image,
        ex.command,
        ex.workdir,
        ex.stdin,
        ex.stdout,
        ex.stderr,
        ex.env,
        ex.ignore_error,
    ) == (0, "alpine", ("sh", "-c", "cat"), "/w", "/in/x", "/o/x", "/o/e", {"A": "1"}, True)


def test_the_plan_is_the_same_for_the_same_task() -> None:
    t = task(
        inputs=[{"path": "/d/a", "content": "x"}], outputs=[{"path": "/d/*.txt", "url": "u"}], volumes=["/v"]
    )
    assert build_plan(t) == build_plan(TesTask.model_validate(t.model_dump()))


# --- inputs and outputs --------------------------------------------------------------------------


def test_inputs_are_placed_with_their_type() -> None:
    t = task(
        inputs=[{"path": "/d/a", "content": "x"}, {"path": "/r//", "url": "http://h/r", "type": "DIRECTORY"}]
    )
    assert [(i.index, i.path, i.type) for i in plan(t).inputs] == [
        (0, "/d/a", TesFileType.FILE),
        (1, "/r", TesFileType.DIRECTORY),
    ]


def test_outputs_are_planned_by_kind() -> None:
    t = task(
        outputs=[
            {"path": "/o/f", "url": "http://h/f"},
            {"path": "/o/d", "url": "http://h/d", "type": "DIRECTORY"},
            {"path": "/o/g/*.txt", "url": "http://h/g/"},
            {"path": "/o/p/*/x", "path_prefix": "/o/", "url": "http://h/p/"},
        ]
    )
    assert [(o.index, o.path, o.kind, o.base, o.prefix, o.url) for o in plan(t).outputs] == [
        (0, "/o/f", OutputKind.FILE, "/o/f", None, "http://h/f"),
        (1, "/o/d", OutputKind.DIRECTORY, "/o/d", None, "http://h/d"),
        (2, "/o/g/*.txt", OutputKind.GLOB, "/o/g", "/o/g/", "http://h/g/"),
        (3, "/o/p/*/x", OutputKind.GLOB, "/o/p", "/o/", "http://h/p/"),
    ]


def test_a_wildcard_output_mounts_its_fixed_base() -> None:
    assert roots(task(outputs=[{"path": "/data/out/*/x.bam", "url": "u"}])) == [("/data/out", False)]


@pytest.mark.parametrize("path", ["/*.txt", "/usr/*", "/etc/*.conf"])
def test_a_wildcard_directly_in_a_system_directory_is_refused(path: str) -> None:
    where, reason = problems(task(outputs=[{"path": path, "url": "u"}]))[0]
    assert where == "outputs[0].path" and "directory of its own" in reason


def test_path_prefix_must_be_a_plain_prefix_of_the_path() -> None:
    t = task(outputs=[{"path": "/out/*.txt", "path_prefix": "/elsewhere/", "url": "u"}])
    assert fields(t) == ["outputs[0].path_prefix"]


def test_path_prefix_must_not_hold_wildcards() -> None:
    t = task(outputs=[{"path": "/out/*.txt", "path_prefix": "/out/*", "url": "u"}])
    assert fields(t) == ["outputs[0].path_prefix"]


def test_path_prefix_of_an_output_without_wildcards_is_ignored() -> None:
    assert (
        plan(task(outputs=[{"path": "/out/a", "path_prefix": "/nowhere:", "url": "u"}])).outputs[0].prefix
        is None
    )


# --- the one wildcard implementation -------------------------------------------------------------


def test_wildcards_are_the_posix_pattern_characters() -> None:
    assert [has_wildcard(p) for p in ("/a/*", "/a/?", "/a/[ab]", "/a/b", "/a/{b}")] == [
        True,
        True,
        True,
        False,
        False,
    ]


def test_wildcard_base_is_the_directory_above_the_first_wildcard() -> None:
    assert wildcard_base("/data/out/*/x.bam") == "/data/out"
    assert wildcard_base("/*.txt") == "/"
    assert wildcard_base("/data//out/x?.txt") == "/data/out"


def test_implicit_prefix_examples() -> None:
    assert implicit_prefix("/data/out/*.txt") == "/data/out/"
    assert implicit_prefix("/data/*/x.bam") == "/data/"
    assert implicit_prefix("/*.txt") == "/"
    assert implicit_prefix("/data/sample_?.vcf") == "/data/"


def test_effective_prefix_is_normalised_and_keeps_its_trailing_slash() -> None:
    assert effective_prefix(TesOutput(url="u", path="/d//o/*.txt")) == "/d/o/"
    assert effective_prefix(TesOutput(url="u", path="/d/o/*.txt", path_prefix="/d//./")) == "/d/"
    assert effective_prefix(TesOutput(url="u", path="/d/o/*.txt", path_prefix="/d/o")) == "/d/o"


def test_a_star_matches_within_one_component_only() -> None:
    assert matches("/data/*.txt", "/data/a.txt")
    assert not matches("/data/*.txt", "/data/sub/a.txt")
    assert matches("/data/*/x.bam", "/data/s1/x.bam")
    assert not matches("/data/*.txt", "/data/.hidden/../a.txt")
