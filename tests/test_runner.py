"""The streaming runner's own work: what it skips, and what it reports."""
from __future__ import annotations

from orchestrator import media
from orchestrator.pipeline import specs as pipeline
from orchestrator.pipeline.plan import make_plan
from orchestrator.pipeline.runner import Job
from orchestrator.media.simulate import make_demo_tape


class Refusing:
    """A stage runner that must not be called."""

    def __init__(self):
        self.calls = 0

    def run(self, info, frames):
        self.calls += 1
        raise AssertionError("the runner was given a clip")


def test_a_tape_at_the_target_rate_skips_interpolation(tmp_path):
    """Deinterlaced to 59.94 fields/s, a tape is already at the output rate: interpolation
    by 1 is the identity, so no frame is sent to the stage (over gRPC it would cost two
    transfers of every 4x frame)."""
    tape = make_demo_tape(tmp_path / "tape.mp4", seconds=0.5)
    source = media.probe(tape)
    plan = make_plan(source, pipeline.build(stages="analog,interpolate"), native="full")
    job = Job(plan, media.OutputSpec(tmp_path / "out.mkv", "ffv1"), show_progress=False)
    interpolate = next(s for s in job.steps if s.name.startswith("interpolate"))
    interpolate.runner = refusing = Refusing()
    job.run()
    assert refusing.calls == 0
    assert job.progress.written == 2 * source.frame_count   # one frame per field
    stats = job.progress.stats()
    assert stats["frames_written"] == job.progress.written
    assert stats["stages"][interpolate.name]["frames"] == job.progress.written
