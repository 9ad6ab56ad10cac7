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


class Recording:
    """A stage runner that passes frames through and keeps each clip header."""

    def __init__(self):
        self.headers = []

    def run(self, info, frames):
        self.headers.append(info)
        return info, frames


def test_tape_is_given_frames_from_the_whole_input(tmp_path, monkeypatch):
    """TAPE takes its references from the whole video: every clip's header carries the
    same frames spread over the whole input (first to last), at the working size."""
    import cv2
    import numpy as np
    from orchestrator.pipeline.analysis import TAPE_CANDIDATES
    tape = make_demo_tape(tmp_path / "tape.mp4", seconds=1.0)
    source = media.probe(tape)
    from orchestrator.pipeline import registry
    classical = registry.create_local     # deinterlace goes first; TAPE has no weights here
    monkeypatch.setattr(registry, "create_local", lambda task, model, device="auto", precision=None:
                        Refusing() if model == "tape" else classical(task, model, device))
    plan = make_plan(source, pipeline.build(stages="analog", models=["analog=tape"]), native="full")
    job = Job(plan, media.OutputSpec(tmp_path / "out.mkv", "ffv1"), show_progress=False)
    step = next(s for s in job.steps if s.name.startswith("analog"))
    step.runner = recording = Recording()
    job.run()
    assert recording.headers
    sent = {info.references for info in recording.headers}
    assert len(sent) == 1
    images = [cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
              for data in sent.pop()]
    assert len(images) == min(TAPE_CANDIDATES, source.frame_count)
    from services.stagekit import codec
    for info in recording.headers:          # a TAPE service takes the header as it is
        codec.header_info(codec.header_message(info, "analog", "tape").header)
    assert all(image.shape[1::-1] == plan.working_size for image in images)
    frames = list(media.decode(source))
    ends = [cv2.cvtColor(cv2.resize(f[::2] if source.interlaced else f, plan.working_size,
                                    interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2BGR)
            for f in (frames[0], frames[-1])]
    assert np.abs(images[0].astype(int) - ends[0]).mean() < 3
    assert np.abs(images[-1].astype(int) - ends[1]).mean() < 3
