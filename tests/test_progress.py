"""Progress that tells the truth for slow stages: frames out per stage while a clip is in
work, a percentage of the output's frames (not of the decoded ones), an ETA from the
slowest stage."""
from __future__ import annotations

import re
import threading
import time

import pytest

from orchestrator import media
from orchestrator.errors import UserError
from orchestrator.media.simulate import make_demo_tape
from orchestrator.pipeline import specs as pipeline
from orchestrator.pipeline.plan import make_plan
from orchestrator.pipeline.progress import Progress
from orchestrator.pipeline.runner import Job
from orchestrator.pipeline.segments import ClipSegments
from orchestrator.pipeline.stagerunners import LocalRunner
from services.classical.denoise import DenoiseStage

from .helpers import textured, write_video

SLOW = 0.25   # seconds the slow stage takes per frame


class SlowStage(DenoiseStage):
    """A stage that takes SLOW seconds per frame and hands the frame on unchanged."""

    def process(self, info, frames):
        for frame in frames:
            time.sleep(SLOW)
            yield frame


def test_the_eta_is_the_slowest_stages_time_left():
    progress = Progress(["fast", "slow"], total_frames=10, frames_out={"fast": 20, "slow": 20})
    progress.clips_total = 1
    assert progress.eta() is None            # no stage has made a frame: no speed known
    for _ in range(20):
        progress.stage_frame("fast", 0.01)
    progress.decoded = 10
    assert progress.eta() is None            # the slow one has made none yet
    for _ in range(4):
        progress.stage_frame("slow", 2.0)
    progress.written = 4
    assert progress.eta() == 16 * 2.0        # 16 frames left at 2 s each, the fast one done
    assert progress.fraction() == 4 / 20     # of the output's frames, not the decoded ones
    assert "slow 4/20 2.0 s/f" in progress.details()
    assert " 20% ETA 0:00:32" in progress.line()


def test_a_slow_stage_shows_its_frames_and_the_job_is_not_done_before_it_is(tmp_path):
    tape = make_demo_tape(tmp_path / "tape.mp4", seconds=0.3)   # interlaced: 2 frames a field
    source = media.probe(tape)
    plan = make_plan(source, pipeline.build(stages="denoise"), native="180x120")
    job = Job(plan, media.OutputSpec(tmp_path / "out.mkv", "ffv1"), show_progress=False)
    slow = next(s for s in job.steps if s.name.startswith("denoise"))
    slow.runner = LocalRunner(SlowStage())
    fields = 2 * source.frame_count
    assert job.progress.frames_out[slow.name] == job.progress.output_total == fields

    seen: list[tuple[str, int, float | None, float | None]] = []
    done = threading.Event()

    def watch():
        while not done.wait(0.05):
            p = job.progress
            if p.clips_total is not None:
                seen.append((p.line(), p.decoded, p.fraction(), p.eta()))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        job.run()
    finally:
        done.set()
        watcher.join()
    # Decoding ran ahead of the slow stage: every frame decoded while the output was not
    # half written, and the percentage said so.
    behind = [s for s in seen if s[1] == source.frame_count and s[2] is not None and s[2] < 0.5]
    assert behind, seen
    # While it worked, the slow stage's frames out were shown against all it will make,
    # with its own speed.
    pattern = re.compile(rf"{re.escape(slow.name)} (\d+)/{fields} (\d+\.\d) f/s")
    shown = [m for line, *_ in seen for m in pattern.finditer(line)]
    assert any(0 < int(m[1]) < fields for m in shown), seen
    # (its own time per frame: the sleep, and what a loaded machine adds)
    assert all(0.9 * SLOW < 1 / float(m[2]) < 3 * SLOW for m in shown), shown
    # The ETA is at least the slow stage's frames left at its speed, not an extrapolation
    # of the decoded count (which says 0 s once all is decoded); other stages may be
    # slower still on a loaded machine, hence the loose bound above.
    for line, _, fraction, eta in seen:
        match = pattern.search(line)
        if match and eta is not None and int(match[1]) < fields - 2:
            left = (fields - int(match[1])) * SLOW
            assert 0.5 * left < eta < 4 * left + 1, (line, eta)
    assert job.progress.fraction() == 1.0 and job.progress.eta() == 0.0


def test_clips_kept_from_an_earlier_run_come_off_the_work_left():
    progress = Progress(["deinterlace", "slow"], total_frames=30,
                        frames_out={"deinterlace": 60, "slow": 60})
    progress.clips_total = 3
    progress.clip_kept(20)                   # two thirds of the tape are done already
    for _ in range(5):
        progress.stage_frame("deinterlace", 0.01)
        progress.stage_frame("slow", 2.0)
    assert progress.to_make("slow") == 20    # 10 source frames, two fields each
    assert progress.eta() == 15 * 2.0        # not (60 - 5) frames at 2 s
    assert "slow 5/20 2.0 s/f" in progress.details()


def test_many_small_kept_clips_do_not_round_the_work_left_away():
    progress = Progress(["slow"], total_frames=10, frames_out={"slow": 15})
    for _ in range(3):
        progress.clip_kept(1)                # 1.5 output frames each
    assert progress.to_make("slow") == 11    # 15 - 4.5 kept, not 15 - 3 x 1


def test_a_resumed_job_counts_only_the_clips_it_makes(tmp_path):
    """A job stopped after its first clip runs again: the kept clip is not counted as work
    left, in the stages' frames or in the ETA, and the output is whole."""
    red = [(f * [1.0, 0.45, 0.35]).astype("uint8") for f in textured(1, (64, 48), 10)]
    grey = [f.mean(axis=2, keepdims=True).repeat(3, axis=2).astype("uint8")
            for f in textured(2, (64, 48), 14)]
    clip = write_video(tmp_path / "two_shots.mp4", red + grey)   # a cut between them
    plan = make_plan(media.probe(clip), pipeline.build(stages="denoise"), native="full")
    output = media.OutputSpec(tmp_path / "out.mkv", "ffv1")
    kept = ClipSegments(tmp_path / "segments")
    with pytest.raises(UserError, match="clip00001"):   # the clip left out: no output yet
        Job(plan, output, show_progress=False, checkpoints=kept, skip={"clip00001"}).run()
    assert kept.done() == ["clip00000"]
    job = Job(plan, output, show_progress=False, checkpoints=kept)
    job.run()
    [name] = [s.name for s in job.steps]
    p = job.progress
    assert p.frames_out[name] == 24 and p.to_make(name) == 14 == p.stages[name].frames
    assert p.eta() == 0.0 and p.fraction() == 1.0
    assert f"{name} 14/14" in " ".join(p.details())
