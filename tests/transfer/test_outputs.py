"""Wildcard outputs: one upload per match, prefix stripped, the rest appended to the url."""

from pathlib import Path

from tesp_api.tes.models import TesOutput
from tesp_api.transfer.outputs import glob_local, implicit_prefix, matches, plan_wildcard_output


def host(path: str) -> Path:
    return Path("/host/job") / path.lstrip("/")


def test_path_prefix_is_stripped_and_rest_appended_to_url() -> None:
    out = TesOutput(url="s3://b/results", path="/data/out/*.txt", path_prefix="/data/")
    targets = plan_wildcard_output(out, ["/data/out/a.txt"], host)
    assert [(t.url, t.path, t.local) for t in targets] == [
        ("s3://b/results/out/a.txt", "/data/out/a.txt", Path("/host/job/data/out/a.txt"))
    ]


def test_without_path_prefix_the_directory_before_the_first_wildcard_is_the_prefix() -> None:
    out = TesOutput(url="s3://b/results/", path="/data/*/x.bam")
    targets = plan_wildcard_output(out, ["/data/s1/x.bam", "/data/s2/x.bam"], host)
    assert [t.url for t in targets] == ["s3://b/results/s1/x.bam", "s3://b/results/s2/x.bam"]


def test_implicit_prefix_examples() -> None:
    assert implicit_prefix("/data/out/*.txt") == "/data/out/"
    assert implicit_prefix("/data/*/x.bam") == "/data/"
    assert implicit_prefix("/*.txt") == "/"
    assert implicit_prefix("/data/sample_?.vcf") == "/data/"


def test_star_does_not_cross_a_directory() -> None:
    assert matches("/data/*.txt", "/data/a.txt")
    assert not matches("/data/*.txt", "/data/sub/a.txt")


def test_paths_that_do_not_match_the_pattern_are_ignored() -> None:
    out = TesOutput(url="s3://b/r", path="/data/*.txt")
    assert plan_wildcard_output(out, ["/etc/passwd", "/data/a.csv"], host) == []


def test_http_urls_get_percent_encoded_names() -> None:
    out = TesOutput(url="https://h/up", path="/data/*.txt")
    assert plan_wildcard_output(out, ["/data/a b.txt"], host)[0].url == "https://h/up/a%20b.txt"


def test_glob_local_finds_files_by_container_path(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.txt").write_text("a")
    (tmp_path / "out" / "b.csv").write_text("b")
    (tmp_path / "out" / "d.txt").mkdir()
    assert glob_local("/data/out/*.txt", "/data", tmp_path) == ["/data/out/a.txt"]


def test_glob_local_skips_symlinks_leaving_the_job_directory(tmp_path: Path) -> None:
    (tmp_path / "leak.txt").symlink_to("/etc/hostname")
    assert glob_local("/data/*.txt", "/data", tmp_path) == []


def test_the_wildcard_rules_are_the_jobplans() -> None:
    """One implementation: admission, the engine and the uploads agree on what a wildcard matches."""
    from tesp_api.tes import jobplan
    from tesp_api.transfer import outputs

    assert (outputs.matches, outputs.implicit_prefix, outputs.effective_prefix, outputs.has_wildcard) == (
        jobplan.matches,
        jobplan.implicit_prefix,
        jobplan.effective_prefix,
        jobplan.has_wildcard,
    )


def test_matches_from_a_sloppy_listing_are_normalised_before_matching() -> None:
    out = TesOutput(url="s3://b/r/", path="/data//out/*.txt")
    assert [t.url for t in plan_wildcard_output(out, ["/data/out//a.txt"], host)] == ["s3://b/r/a.txt"]
