"""The damaged border bands are found once, by the orchestrator's analysis, at the geometry
the outpaint stage gets (working size, deinterlaced), and reach it in the clip header
("bands"); the stage rebuilds those and does not look for bands again."""
from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np
import pytest

from orchestrator import media
from orchestrator.media.shots import Shot
from orchestrator.media.simulate import interlace, write_tape
from orchestrator.pipeline import specs as pipeline
from orchestrator.pipeline.analysis import shot_bands
from orchestrator.pipeline.plan import make_plan
from orchestrator.pipeline.runner import Job
from orchestrator.pipeline.stagerunners import LocalRunner
from services.classical import outpaint
from services.stagekit.bands import detect_bands, header_bands

from .helpers import read_frames, write_video


def cockatoo(shared, first: int, count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """``count`` frames of the clean cockatoo from ``first``, its 4:3 middle at ``size``."""
    source = media.probe(shared / "footage" / "cockatoo_clean.mp4")
    found = media.frames_at(source, range(first, first + count))
    return [cv2.resize(found[i][:, 160:1120], size, interpolation=cv2.INTER_AREA)
            for i in sorted(found)]


def damaged(frames, left: int, bottom: int) -> list[np.ndarray]:
    """A black band at the left edge, a pale (head-switching) one at the bottom."""
    out = []
    for frame in frames:
        frame = frame.copy()
        frame[:, :left] = 8
        frame[-bottom:] = np.clip(0.3 * frame[-bottom:] + 170, 0, 255).astype(np.uint8)
        out.append(frame)
    return out


class Recording(outpaint.OutpaintStage):
    """The classical outpaint stage, keeping each clip's header and the frames it got."""

    def __init__(self):
        super().__init__()
        self.headers, self.frames = [], []

    def process(self, info, frames):
        self.headers.append(info)
        yield from super().process(info, self._kept(frames))

    def _kept(self, frames):
        for frame in frames:
            self.frames.append(frame.copy())
            yield frame


def progressive_clip(shared, folder):
    frames = damaged(cockatoo(shared, 200, 20, (160, 120)), left=6, bottom=4)
    return write_video(folder / "bands.mp4", frames, fps=Fraction(20)), "full"


def interlaced_clip(shared, folder):
    """A 320x240 capture, top field first, whose real content is 160x120: its bands are
    12 and 8 lines of the capture, 6 and 4 of the working size."""
    fields = damaged(cockatoo(shared, 40, 24, (320, 240)), left=12, bottom=8)
    write_tape(folder / "bands_tff.mp4", interlace(fields), 24 / 59.94)
    return folder / "bands_tff.mp4", "160x120"


@pytest.mark.parametrize("make", [progressive_clip, interlaced_clip])
def test_outpaint_gets_the_analysis_bands_and_does_not_detect_again(shared, tmp_path,
                                                                     monkeypatch, make):
    path, native = make(shared, tmp_path)
    plan = make_plan(media.probe(path), pipeline.build(stages="outpaint"), native=native)
    job = Job(plan, media.OutputSpec(tmp_path / "out.mkv", "ffv1"), show_progress=False)
    step = next(s for s in job.steps if s.name == "outpaint/classical")
    step.runner = LocalRunner(stage := Recording())

    def detector_called(images):
        raise AssertionError("the outpaint stage looked for bands itself")
    monkeypatch.setattr(outpaint, "detect_bands", detector_called)
    job.run()

    [header] = stage.headers
    bands = header_bands(header, "test")
    assert bands.left in (6, 7) and bands.bottom in (4, 5), bands
    assert bands.top == bands.right == 0
    # In the geometry of the frames the stage got (deinterlaced, working size): what the
    # detector finds in them (a line too few leaves a pale line in the picture).
    assert (header.width, header.height) == (160, 120)
    assert bands == detect_bands(stage.frames[:outpaint.LOOKAHEAD])
    # ... and those bands were rebuilt: the black left edge is picture again.
    out = read_frames(tmp_path / "out.mkv")
    assert len(out) == len(stage.frames)
    assert np.mean([f[:, :6].mean() for f in out]) > 40 > np.mean([f[:, :6].mean() for f in stage.frames])


def test_shot_bands_of_the_shared_tape_at_its_working_size(shared):
    """tape_sim.mp4: a 7-column black band and a 5-row pale band at its real 360x240,
    in a 720x480 interlaced capture; deinterlaced, the pale band's edge blends into a
    sixth row, which must be rebuilt too."""
    source = media.probe(shared / "footage" / "tape_sim.mp4")
    plan = make_plan(source, pipeline.build(stages="outpaint"), native="360x240")
    found = shot_bands(plan, [Shot(0, 90, False), Shot(90, 181, True), Shot(181, 240, False)])
    for bands in found.values():
        assert bands.left in (7, 8) and bands.bottom == 6, found
        assert bands.top == bands.right == 0
