"""outpaint/classical takes the damaged bands the orchestrator's analysis found (the clip
header's "bands") and does not look for them again; a ``bands`` parameter still forces
others; a clip sent without either has them found here."""
from __future__ import annotations

import json

import numpy as np
import pytest

from services.classical import outpaint
from services.classical.outpaint import OutpaintStage
from services.stagekit.bands import bands_entry
from services.stagekit.stage import StageError

from .test_classical import info, panned, run

W, H = 96, 64


def header(analysis: dict, **params):
    return info(W, H, **params).replace(analysis=analysis)


def changed_columns(out, frames) -> set[int]:
    return {int(x) for o, f in zip(out, frames) for x in np.flatnonzero((o != f).any(axis=(0, 2)))}


@pytest.fixture
def no_detection(monkeypatch):
    def detector_called(images):
        raise AssertionError("the stage looked for bands itself")
    monkeypatch.setattr(outpaint, "detect_bands", detector_called)


def test_the_header_bands_are_rebuilt_on_a_clip_that_shows_none(no_detection):
    frames = panned(8, width=W, height=H)
    out_info, out = run(OutpaintStage(), header(bands_entry(outpaint.Bands(left=10))), frames)
    assert changed_columns(out, frames) == set(range(10))
    # Rebuilt: a stage after it (an inpainter) is told there are none left.
    assert json.loads(out_info.analysis["bands"]) == {e: 0 for e in ("left", "right", "top", "bottom")}


def test_bands_measured_on_smaller_frames_are_scaled_to_the_clip(no_detection):
    """A superres before outpaint: the analysis measured 5 columns at half the size."""
    frames = panned(8, width=W, height=H)
    found = bands_entry(outpaint.Bands(left=5), size=(W // 2, H // 2))
    _, out = run(OutpaintStage(), header(found), frames)
    assert changed_columns(out, frames) == set(range(10))


def test_header_saying_none_leaves_the_clip_alone(no_detection):
    frames = panned(6, width=W, height=H)
    frames[0][:, :5] = 0            # a band the analysis did not report is not looked for
    _, out = run(OutpaintStage(), header(bands_entry(outpaint.Bands())), frames)
    assert all(np.array_equal(a, b) for a, b in zip(out, frames))


@pytest.mark.parametrize("forced, columns", [("none", set()), ("left=3", set(range(3)))])
def test_a_bands_parameter_beats_the_header(no_detection, forced, columns):
    frames = panned(6, width=W, height=H)
    _, out = run(OutpaintStage(), header(bands_entry(outpaint.Bands(left=10)), bands=forced),
                 frames)
    assert changed_columns(out, frames) == columns


@pytest.mark.parametrize("value", [b"left=4", b'{"left": -1}', json.dumps({"left": 60, "right": 40}).encode()])
def test_a_bad_header_entry_is_refused(value):
    with pytest.raises(StageError, match="bands"):
        OutpaintStage().validate(header({"bands": value}))


def test_without_header_or_parameter_the_stage_detects(monkeypatch):
    seen = []
    real = outpaint.detect_bands
    monkeypatch.setattr(outpaint, "detect_bands", lambda images: seen.append(len(images)) or real(images))
    frames = panned(20, width=W, height=H)
    run(OutpaintStage(), header({}), frames)
    assert seen == [outpaint.LOOKAHEAD]
