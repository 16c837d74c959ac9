"""Each runtime is a pure command builder: these pin the exact argv it produces."""

from __future__ import annotations

import pytest

from tesp_api.config.settings import RuntimeSettings
from tesp_api.engine.runtimes import build_runtime, detect_runtime_type
from tesp_api.engine.runtimes.apptainer import ApptainerRuntime, image_uri
from tesp_api.engine.runtimes.base import ExecutorRun, Mount
from tesp_api.engine.runtimes.bwrap import HOST_ETC, BwrapRuntime
from tesp_api.engine.runtimes.docker import DockerRuntime
from tesp_api.engine.shell import ARGS_FD_PLACEHOLDER, ENV_FILE_PLACEHOLDER, HostPath, render, resolve

WORK = "/pulsar/staging/j1/working"
RUN = ExecutorRun(
    name="tes-t1-0",
    image="ubuntu:24.04",
    command=["sh", "-c", "echo $HOME; rm -rf /x'y"],
    workdir="/data",
    env={"A": "x y", "B": "1,2"},
    mounts=[Mount(HostPath("fs/data"), "/data"), Mount(HostPath("fs/ref"), "/ref", read_only=True)],
    cpu_cores=2,
    ram_gb=1.5,
)


def test_docker_run_line() -> None:
    argv = resolve(DockerRuntime().command(RUN), WORK)
    assert argv == [
        "docker",
        "run",
        "--rm",
        "-i",
        "--name",
        "tes-t1-0",
        "--pull=missing",
        "--network",
        "none",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--pids-limit",
        "4096",
        "--workdir",
        "/data",
        "--env-file",
        ENV_FILE_PLACEHOLDER,
        "--volume",
        f"{WORK}/fs/data:/data",
        "--volume",
        f"{WORK}/fs/ref:/ref:ro",
        "--cpus",
        "2",
        "--memory",
        str(int(1.5 * 1024**3)),
        "--",
        "ubuntu:24.04",
        "sh",
        "-c",
        "echo $HOME; rm -rf /x'y",
    ]


def test_docker_hardening_settings() -> None:
    rt = build_runtime(
        RuntimeSettings(
            type="docker",
            cap_add=["net_bind_service"],
            user="1000:1000",
            pids_limit=0,
            docker_args=["--ulimit", "nofile=1:1"],
            bwrap_args=["--bwrap-only"],
        )
    )
    argv = resolve(rt.command(RUN), WORK)
    assert argv[argv.index("--cap-drop") : argv.index("--security-opt")] == [
        "--cap-drop",
        "ALL",
        "--cap-add",
        "NET_BIND_SERVICE",
    ]
    assert argv[argv.index("--user") + 1] == "1000:1000" and "--pids-limit" not in argv
    assert (
        argv[argv.index("--") - 2 : argv.index("--")] == ["--ulimit", "nofile=1:1"]
        and "--bwrap-only" not in argv
    )


def test_docker_env_values_never_reach_argv() -> None:
    argv = resolve(DockerRuntime().command(RUN), WORK)
    assert not [a for a in argv if "x y" in a or "1,2" in a]


def test_docker_network_follows_the_run() -> None:
    run = ExecutorRun(name="n", image="i", command=["true"], network="bridge")
    argv = resolve(DockerRuntime().command(run), WORK)
    assert argv[argv.index("--network") + 1] == "bridge"


def test_docker_cleanup_removes_the_named_container() -> None:
    assert DockerRuntime().cleanup_command(RUN) == ["docker", "rm", "-f", "tes-t1-0"]


def test_podman_mounts_the_workdir_docker_creates_it() -> None:
    """podman 4.3 refuses a --workdir that is not in the image; docker creates it."""
    assert build_runtime(RuntimeSettings(type="podman")).needs_workdir_mount
    assert not build_runtime(RuntimeSettings(type="docker")).needs_workdir_mount


def test_podman_cleanup_does_not_wait_the_stop_timeout() -> None:
    rt = build_runtime(RuntimeSettings(type="podman"))
    assert rt.cleanup_command(RUN) == ["podman", "rm", "-f", "-t", "0", "tes-t1-0"]


def test_podman_uses_the_same_line_with_its_binary() -> None:
    rt = build_runtime(RuntimeSettings(type="podman", podman_bin="/usr/bin/podman", pull_policy="never"))
    argv = resolve(rt.command(RUN), WORK)
    assert argv[:7] == ["/usr/bin/podman", "run", "--rm", "-i", "--name", "tes-t1-0", "--pull=never"]
    assert rt.kind == "podman"


def test_extra_args_go_before_the_image() -> None:
    rt = DockerRuntime(extra_args=["--ulimit", "nofile=1:1"])
    argv = resolve(rt.command(RUN), WORK)
    assert argv[argv.index("ubuntu:24.04") - 3 : argv.index("ubuntu:24.04")] == [
        "--ulimit",
        "nofile=1:1",
        "--",
    ]


def test_apptainer_exec_line() -> None:
    rt = ApptainerRuntime()
    argv = resolve(rt.command(RUN), WORK)
    assert argv == [
        "apptainer",
        "exec",
        "--containall",
        "--cleanenv",
        "--no-home",
        "--no-privs",
        "--net",
        "--network",
        "none",
        "--pwd",
        "/data",
        "--bind",
        f"{WORK}/fs/data:/data",
        "--bind",
        f"{WORK}/fs/ref:/ref:ro",
        "--cpus",
        "2",
        "--memory",
        str(int(1.5 * 1024**3)),
        "--",
        "docker://ubuntu:24.04",
        "sh",
        "-c",
        "echo $HOME; rm -rf /x'y",
    ]
    assert (
        rt.env_prefix == "APPTAINERENV_"
    )  # the runner sets APPTAINERENV_A etc. in the runtime's environment


def test_singularity_uses_its_own_env_prefix() -> None:
    rt = build_runtime(RuntimeSettings(type="singularity"))
    assert rt.env_prefix == "SINGULARITYENV_" and resolve(rt.command(RUN), WORK)[0] == "singularity"


@pytest.mark.parametrize(
    ("image", "uri"),
    [
        ("alpine", "docker://alpine"),
        ("docker://alpine", "docker://alpine"),
        ("/images/x.sif", "/images/x.sif"),
        ("library://a/b/c", "library://a/b/c"),
        ("x.sif", "x.sif"),
    ],
)
def test_apptainer_image_references(image: str, uri: str) -> None:
    assert image_uri(image) == uri


def test_bwrap_line() -> None:
    argv = resolve(BwrapRuntime().command(RUN), WORK)
    etc = [w for path in HOST_ETC for w in ("--ro-bind-try", path, path)]
    assert argv == [
        "bwrap",
        "--die-with-parent",
        "--new-session",
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-net",
        "--cap-drop",
        "ALL",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--ro-bind",
        "/usr",
        "/usr",
        "--ro-bind-try",
        "/bin",
        "/bin",
        "--ro-bind-try",
        "/sbin",
        "/sbin",
        "--ro-bind-try",
        "/lib",
        "/lib",
        "--ro-bind-try",
        "/lib32",
        "/lib32",
        "--ro-bind-try",
        "/lib64",
        "/lib64",
        "--ro-bind-try",
        "/opt",
        "/opt",
        *etc,
        "--bind",
        f"{WORK}/fs/data",
        "/data",
        "--ro-bind",
        f"{WORK}/fs/ref",
        "/ref",
        "--chdir",
        "/data",
        "--clearenv",
        "--setenv",
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--setenv",
        "HOME",
        "/tmp",
        "--args",
        ARGS_FD_PLACEHOLDER,
        "--",
        "/bin/sh",
        "-c",
        'exec "$@"',
        "sh",
        "sh",
        "-c",
        "echo $HOME; rm -rf /x'y",
    ]
    assert "/etc/shadow" not in HOST_ETC and "/etc" not in argv


def test_bwrap_under_a_root_runner_drops_to_the_sandbox_user_with_setpriv() -> None:
    """A user namespace would leave uid 0 on the host (owner of /dev/null): the root variant stays in the
    host's namespace with only setpriv's capabilities, and setpriv switches to the sandbox user."""
    run = ExecutorRun(
        name="n", image="i", command=["id"], mounts=[Mount(HostPath("fs/a/b/data"), "/a/b/data")]
    )
    argv = resolve(BwrapRuntime().root_command(run) or [], WORK)
    assert "--unshare-user" not in argv
    assert [argv[i + 1] for i, w in enumerate(argv) if w == "--cap-add"] == [
        "CAP_SETUID",
        "CAP_SETGID",
        "CAP_SETPCAP",
    ]
    dirs = [argv[i + 1] for i, w in enumerate(argv) if w == "--dir"]
    assert dirs == ["/a", "/etc", "/a/b"]  # parents first; bwrap as root would make them 0700
    assert all(argv[argv.index(d) - 3 : argv.index(d)] == ["--perms", "0755", "--dir"] for d in dirs)
    assert argv[argv.index("--tmpfs") - 2 : argv.index("--tmpfs")] == ["--perms", "1777"]
    tail = argv[argv.index("--") + 1 :]
    assert tail == [
        "/usr/bin/setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--bounding-set=-all",
        "--",
        "/bin/sh",
        "-c",
        'exec "$@"',
        "sh",
        "id",
    ]


def test_bwrap_root_variant_keeps_the_operators_capabilities_as_ambient_ones() -> None:
    rt = build_runtime(RuntimeSettings(type="bwrap", cap_add=["NET_RAW"], sandbox_user="1000:1001"))
    argv = resolve(rt.root_command(ExecutorRun(name="n", image="i", command=["true"])) or [], WORK)
    tail = argv[argv.index("--") + 1 :]
    assert tail[:7] == [
        "/usr/bin/setpriv",
        "--reuid=1000",
        "--regid=1001",
        "--clear-groups",
        "--bounding-set=-all,+net_raw",
        "--inh-caps=+net_raw",
        "--ambient-caps=+net_raw",
    ]


def test_an_empty_sandbox_user_keeps_one_argv_for_root_too() -> None:
    rt = build_runtime(RuntimeSettings(type="bwrap", sandbox_user=""))
    assert rt.root_command(ExecutorRun(name="n", image="i", command=["true"])) is None


@pytest.mark.parametrize("kind", ["docker", "podman", "apptainer"])
def test_container_engines_have_no_root_variant(kind: str) -> None:
    rt = build_runtime(RuntimeSettings(type=kind))  # type: ignore[arg-type]
    assert rt.root_command(RUN) is None


def test_bwrap_network_and_extra_paths_from_settings() -> None:
    rt = build_runtime(
        RuntimeSettings(
            type="bwrap",
            bind_host_paths=["/srv/venv"],
            cap_add=["CAP_NET_RAW"],
            bwrap_args=["--unshare-cgroup"],
            podman_args=["--podman-only"],
        )
    )
    run = ExecutorRun(name="n", image="i", command=["true"], network="host")
    argv = resolve(rt.command(run), WORK)
    assert "--unshare-net" not in argv
    assert argv[argv.index("--cap-drop") : argv.index("--cap-drop") + 4] == [
        "--cap-drop",
        "ALL",
        "--cap-add",
        "CAP_NET_RAW",
    ]
    assert argv[argv.index("/srv/venv") - 1 : argv.index("/srv/venv") + 2] == [
        "--ro-bind-try",
        "/srv/venv",
        "/srv/venv",
    ]
    assert argv[-7:] == ["--unshare-cgroup", "--", "/bin/sh", "-c", 'exec "$@"', "sh", "true"]
    assert "--podman-only" not in argv


@pytest.mark.parametrize("sandbox_user", ["", "65534:65534"])
def test_a_host_path_under_tmp_is_bound_after_the_private_tmp_so_it_stays_visible(sandbox_user: str) -> None:
    """A checkout (its venv, runtime.bind_host_paths) under /tmp was hidden by the sandbox's own
    --tmpfs /tmp when bound before it: Galaxy's TES client tasks then failed in a clone under /tmp."""
    rt = build_runtime(
        RuntimeSettings(type="bwrap", bind_host_paths=["/tmp/ci/.venv"], sandbox_user=sandbox_user)
    )
    run = ExecutorRun(name="n", image="i", command=["true"])
    for command in (rt.command(run), rt.root_command(run)):
        if command is None:
            continue
        argv = resolve(command, WORK)
        assert argv.index("--tmpfs") < argv.index("/tmp/ci/.venv")


def test_bwrap_mounts_parents_before_children() -> None:
    run = ExecutorRun(
        name="n",
        image="i",
        command=["true"],
        mounts=[Mount(HostPath("fs/a/b"), "/a/b"), Mount(HostPath("fs/a"), "/a")],
    )
    argv = resolve(BwrapRuntime().command(run), WORK)
    assert argv.index("/a") < argv.index("/a/b")


def test_rendered_line_quotes_every_argument() -> None:
    line = render(DockerRuntime().command(RUN))
    assert "'echo $HOME; rm -rf /x'\"'\"'y'" in line
    assert '"$TES_WORK"/fs/data:/data' in line


def test_auto_detection_falls_back_to_bwrap_when_no_runtime_works(caplog: pytest.LogCaptureFixture) -> None:
    """The docker CLI exists on this machine but no engine: ``docker info`` fails, so it must not count."""
    settings = RuntimeSettings(
        docker_bin="docker",
        podman_bin="no-such-podman",
        apptainer_bin="no-such-apptainer",
        singularity_bin="no-such-singularity",
    )
    assert detect_runtime_type(settings) == "bwrap"
    assert "IMAGES ARE IGNORED" in caplog.text
    assert "no-such-podman not found" in caplog.text and "`docker info` exited" in caplog.text  # the reasons


def test_unknown_runtime_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown runtime"):
        build_runtime(RuntimeSettings(), kind="lxc")
