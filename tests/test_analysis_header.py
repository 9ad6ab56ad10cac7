"""The orchestrator's analysis reaches every stage in the clip header (ClipInfo.analysis),
and a stage never decides again what it found: a grey scene is coloured even when a stage
before colorize tinted its frames a little."""
from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np
import pytest

from orchestrator import media
from orchestrator.media.simulate import make_demo_tape
from orchestrator.pipeline import specs as pipeline
from orchestrator.pipeline.plan import make_plan
from orchestrator.pipeline.runner import Job
from orchestrator.pipeline.stagerunners import LocalRunner
from services.classical.colorize import ColorizeStage
from services.classical.denoise import DenoiseStage
from services.stagekit import ClipInfo
from services.stagekit.monochrome import is_monochrome

from .helpers import textured, write_video

SIZE = (96, 64)
RED = np.array([1.0, 0.45, 0.35], np.float32)


def tinted(frame: np.ndarray, levels: float = 10.0) -> np.ndarray:
    """``frame`` with a tint of a few levels that changes across it (as a network's colour
    noise does): no longer black-and-white to a rule that looks at the frame alone."""
    h, w = frame.shape[:2]
    ramp = np.linspace(-levels, levels, w, dtype=np.float32)[None, :]
    out = frame.astype(np.float32)
    out[..., 0] += ramp
    out[..., 2] -= ramp
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def grey(frames) -> list[np.ndarray]:
    return [np.repeat(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=-1) for f in frames]


def chroma(frame: np.ndarray) -> float:
    """Mean |Cr| + |Cb| in 8-bit levels."""
    return float(np.abs(cv2.cvtColor(frame, cv2.COLOR_RGB2YCrCb)[..., 1:].astype(float) - 128).mean())


class Recording(DenoiseStage):
    """Hands frames on, tinted when asked, and keeps each clip's header."""

    def __init__(self, tint: bool = False):
        self.tint, self.headers = tint, []

    def process(self, info, frames):
        self.headers.append(info)
        for frame in frames:
            yield tinted(frame) if self.tint else frame


@pytest.fixture(scope="module")
def colour_then_grey(tmp_path_factory):
    """A colour shot, then a black-and-white one (a hard cut), 24 fps."""
    folder = tmp_path_factory.mktemp("greyscene")
    colour = [(f * RED).astype(np.uint8) for f in textured(1, SIZE, 16)]
    return write_video(folder / "scenes.mp4", colour + grey(textured(1, SIZE, 16)))


def test_a_grey_scene_tinted_before_colorize_is_still_coloured(colour_then_grey, tmp_path):
    source = media.probe(colour_then_grey)
    plan = make_plan(source, pipeline.build(stages="denoise,colorize"), native="full")
    job = Job(plan, media.OutputSpec(tmp_path / "out.mkv", "ffv1"), show_progress=False)
    before = next(s for s in job.steps if s.name.startswith("denoise"))
    before.runner = LocalRunner(tinter := Recording(tint=True))
    job.run()
    # Every stage got what the analysis found: one colour clip and one grey, progressive.
    assert [h.analysis for h in tinter.headers] == [
        {"grey": b"0", "field_order": b"progressive"}, {"grey": b"1", "field_order": b"progressive"}]
    with media.open_input(tmp_path / "out.mkv") as container:
        out = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    reached = [tinted(f) for f in grey(textured(1, SIZE, 16))]
    assert not any(is_monochrome(f) for f in reached)   # the frame alone no longer says grey
    # The grey scene took the colour shot's colour, far beyond the tint it reached colorize with.
    assert np.mean([chroma(f) for f in out[20:]]) > np.mean([chroma(f) for f in reached]) + 5


def test_every_stage_sees_the_field_order_of_the_frames_it_gets(tmp_path):
    tape = make_demo_tape(tmp_path / "tape.mp4", seconds=0.2)
    plan = make_plan(media.probe(tape), pipeline.build(stages="analog"), native="180x120")
    job = Job(plan, media.OutputSpec(tmp_path / "out.mkv", "ffv1"), show_progress=False)
    analog = next(s for s in job.steps if s.name.startswith("analog"))
    analog.runner = LocalRunner(recorder := Recording())
    assert [s.name for s in job.steps][0] == "deinterlace/classical"
    job.run()
    [header] = recorder.headers
    assert header.analysis["field_order"] == b"progressive"   # deinterlaced before it
    assert header.fps == 2 * plan.source.fps and (header.width, header.height) == (180, 120)


def grey_clip_reaching_colorize(count: int = 4) -> tuple[list[np.ndarray], np.ndarray]:
    frames = [tinted(f) for f in grey(textured(4, (64, 40), count))]
    reference = (textured(5, (64, 40), 1)[0] * RED).astype(np.uint8)
    return frames, reference


def header(frames, grey: bytes | None, references=()) -> ClipInfo:
    h, w = frames[0].shape[:2]
    return ClipInfo("c", w, h, Fraction(25), analysis={} if grey is None else {"grey": grey},
                    references=tuple(references))


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def coloured(stage, info, frames) -> bool:
    _, out = stage.run(info, iter(frames))
    return any(not np.array_equal(a, b) for a, b in zip(out, frames))


def test_the_classical_colorizer_takes_grey_from_the_header():
    frames, reference = grey_clip_reaching_colorize()
    refs = [png(reference)]
    assert coloured(ColorizeStage(), header(frames, b"1", refs), frames)
    assert not coloured(ColorizeStage(), header(frames, None, refs), frames)  # tint fools the frames
    assert not coloured(ColorizeStage(), header(frames, b"0", refs), frames)
    # a grey stretch too short for a shot of its own: its frames, grey, are still coloured
    assert coloured(ColorizeStage(), header(grey(frames), b"0", refs), grey(frames))
    forced = header(frames, b"0", refs).replace(params={"scenes": "all"})
    assert coloured(ColorizeStage(), forced, frames)


def test_tcvc_takes_grey_from_the_header():
    from services.tcvc.tests.test_tcvc import tiny_stage
    frames, _ = grey_clip_reaching_colorize()
    small = {"working_size": "32x56"}
    assert coloured(tiny_stage(), header(frames, b"1").replace(params=small), frames)
    assert not coloured(tiny_stage(), header(frames, None).replace(params=small), frames)
    assert not coloured(tiny_stage(), header(grey(frames), b"0").replace(params=small), grey(frames))
