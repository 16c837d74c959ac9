"""The heartbeat watch's verdicts (tesp_api/pulsar/liveness.py), one behaviour each.

The job directory is a plain directory standing in for Pulsar's (what ``fetch`` reads) and the clock is
a number the test moves: the watch's decisions depend only on what the files say and when. The same
watch against a real Pulsar killed and restarted: tests/e2e/test_pulsar_restart_rest.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tesp_api.pulsar.liveness import ALIVE_NAME, DONE, META_NAME, NO_BEAT_YET, HeartbeatWatch
from tesp_api.pulsar.port import LOST_REASON_KEY, JobStatus

LOST_AFTER = 60.0


class Job:
    def __init__(self, root: Path) -> None:
        self.dir = root / "job"
        self.dir.mkdir()
        self.now = 0.0
        self.beats = 0

    async def fetch(self, job_id: str, name: str, dest: Path) -> bool:
        src = self.dir / name
        if not src.exists():
            return False
        shutil.copyfile(src, dest)
        return True

    def beat(self) -> None:
        self.beats += 1
        (self.dir / ALIVE_NAME).write_text(f"{self.beats}\n")

    def watch(self) -> HeartbeatWatch:
        return HeartbeatWatch(self.fetch, lost_after=LOST_AFTER, check_every=5, clock=lambda: self.now)


def running(status: str = "running") -> JobStatus:
    return JobStatus("j", status)


async def test_a_beating_job_stays_running(tmp_path: Path) -> None:
    job = Job(tmp_path)
    watch = job.watch()
    for _ in range(40):
        job.beat()
        assert (await watch.review(running())).status == "running"
        job.now += 5


async def test_a_finished_runner_pulsar_lost_track_of_is_complete_after_the_deadline(tmp_path: Path) -> None:
    job = Job(tmp_path)
    watch = job.watch()
    job.beat()
    (job.dir / META_NAME).write_bytes(b"tar")
    (job.dir / ALIVE_NAME).write_bytes(DONE)  # the runner's last word
    assert (await watch.review(running())).status == "running"
    job.now += LOST_AFTER - 1
    assert (await watch.review(running())).status == "running"
    job.now += 6  # past the deadline and the next check (every 5 s)
    verdict = await watch.review(running())
    assert (verdict.status, verdict.returncode) == ("complete", None)
    assert "lost track of it" in verdict.raw[LOST_REASON_KEY]


async def test_a_killed_runner_is_lost_with_the_reason(tmp_path: Path) -> None:
    job = Job(tmp_path)
    watch = job.watch()
    job.beat()
    await watch.review(running())
    job.now += LOST_AFTER + 1
    verdict = await watch.review(running())
    assert verdict.status == "lost"
    assert "were killed" in verdict.raw[LOST_REASON_KEY]


async def test_a_queued_job_that_never_started_is_left_alone(tmp_path: Path) -> None:
    job = Job(tmp_path)
    watch = job.watch()
    for _ in range(10):
        assert (await watch.review(running("queued"))).status == "queued"
        job.now += LOST_AFTER


async def test_a_queued_job_whose_runner_beat_and_stopped_is_judged(tmp_path: Path) -> None:
    job = Job(tmp_path)  # Pulsar killed between starting the job and recording its pid
    watch = job.watch()
    job.beat()
    await watch.review(running("queued"))
    job.now += 2 * LOST_AFTER
    assert (await watch.review(running("queued"))).status == "lost"


async def test_final_answers_pass_through(tmp_path: Path) -> None:
    watch = Job(tmp_path).watch()
    for status in ("complete", "cancelled", "failed", "lost", "preprocessing"):
        assert (await watch.review(running(status))).status == status


async def test_a_queued_job_overtaken_by_a_much_later_one_was_dropped_by_pulsar(tmp_path: Path) -> None:
    job = Job(tmp_path)  # Pulsar killed between taking it off its queue and starting it
    watch = job.watch()
    assert (await watch.review(running("queued"))).status == "queued"
    job.now += LOST_AFTER + 10
    await watch.review(JobStatus("later", "running"))  # submitted long after, already running
    job.now += 30
    verdict = await watch.review(running("queued"))
    assert verdict.status == "lost"
    assert "will not start it" in verdict.raw[LOST_REASON_KEY]


async def test_a_queued_job_behind_one_submitted_at_about_the_same_time_waits(tmp_path: Path) -> None:
    job = Job(tmp_path)  # a full Pulsar: adjacent jobs may start far apart, in either order of sight
    watch = job.watch()
    await watch.review(running("queued"))
    job.now += 1
    await watch.review(JobStatus("next", "running"))
    for _ in range(10):
        job.now += LOST_AFTER
        assert (await watch.review(running("queued"))).status == "queued"


async def test_the_placeholder_uploaded_with_the_job_is_no_beat(tmp_path: Path) -> None:
    job = Job(tmp_path)  # uploaded by prepare, so no read ever asks Pulsar for a missing file
    (job.dir / ALIVE_NAME).write_bytes(NO_BEAT_YET)
    watch = job.watch()
    for _ in range(10):
        assert (await watch.review(running("queued"))).status == "queued"
        job.now += LOST_AFTER
