"""The heartbeat watch's verdicts (tesp_api/pulsar/liveness.py), one behaviour each.

The job directory is a plain directory standing in for Pulsar's (what ``fetch`` reads) and the clock is
a number the test moves: the watch's decisions depend only on what the files say and when. The same
watch against a real Pulsar killed and restarted: tests/e2e/test_pulsar_restart_rest.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tesp_api.pulsar.liveness import ALIVE_NAME, DONE, META_NAME, NO_BEAT_YET, HeartbeatWatch
from tesp_api.pulsar.port import LOST_REASON_KEY, RESUBMIT_KEY, JobStatus

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


async def test_a_queued_job_that_never_started_is_handed_back_for_one_resubmit_after_the_deadline(
    tmp_path: Path,
) -> None:
    job = Job(tmp_path)  # maybe dropped from the queue by a restarted Pulsar, maybe only waiting
    (job.dir / ALIVE_NAME).write_bytes(NO_BEAT_YET)
    watch = job.watch()
    answers = []
    for _ in range(10):
        answers.append(await watch.review(running("queued")))
        job.now += LOST_AFTER / 2
    assert {a.status for a in answers} == {"queued"}  # never judged lost by the clock: queues may be long
    resubmits = [i for i, a in enumerate(answers) if RESUBMIT_KEY in a.raw]
    assert resubmits == [2]  # once, at the first look past the deadline
    assert "submitted to Pulsar once more" in answers[2].raw[RESUBMIT_KEY]


async def test_a_job_pulsar_answers_preprocessing_for_too_long_is_handed_back_for_a_resubmit(
    tmp_path: Path,
) -> None:
    job = Job(tmp_path)  # Pulsar killed inside the submit: launch_config stored, never launched
    watch = job.watch()
    assert RESUBMIT_KEY not in (await watch.review(running("preprocessing"))).raw
    job.now += LOST_AFTER
    verdict = await watch.review(running("preprocessing"))
    assert (verdict.status, RESUBMIT_KEY in verdict.raw) == ("preprocessing", True)


async def test_a_queued_job_that_has_beaten_is_never_resubmitted(tmp_path: Path) -> None:
    job = Job(tmp_path)  # its runner started (Pulsar died before recording the pid)
    watch = job.watch()
    for _ in range(4):
        job.beat()
        assert RESUBMIT_KEY not in (await watch.review(running("queued"))).raw
        job.now += LOST_AFTER / 4


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


async def test_a_resubmitted_job_overtaken_again_was_dropped_for_good_and_is_lost(tmp_path: Path) -> None:
    job = Job(tmp_path)
    watch = job.watch()
    await watch.review(running("queued"))
    job.now += LOST_AFTER
    assert RESUBMIT_KEY in (await watch.review(running("queued"))).raw
    job.now += LOST_AFTER + 10
    await watch.review(JobStatus("after-resubmit", "running"))  # first seen well after the re-submit
    job.now += 16
    verdict = await watch.review(running("queued"))
    assert verdict.status == "lost"
    assert "will not start it" in verdict.raw[LOST_REASON_KEY]


async def test_a_resubmitted_job_waiting_behind_earlier_ones_is_never_lost(tmp_path: Path) -> None:
    job = Job(tmp_path)  # a full Pulsar: jobs submitted before the re-submit start, hours pass
    watch = job.watch()
    await watch.review(running("queued"))
    job.now += LOST_AFTER
    await watch.review(running("queued"))  # handed back for the re-submit
    earlier = [f"earlier-{k}" for k in range(100)]
    for other in earlier:
        await watch.review(JobStatus(other, "queued"))  # submitted before the re-submit
    for other in earlier:
        job.now += LOST_AFTER
        await watch.review(JobStatus(other, "running"))
        await watch.review(JobStatus(other, "complete"))
        verdict = await watch.review(running("queued"))
        assert (verdict.status, RESUBMIT_KEY in verdict.raw) == ("queued", False)


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
        verdict = await watch.review(running("queued"))
        assert verdict.status == "queued" and LOST_REASON_KEY not in verdict.raw
        job.now += LOST_AFTER
