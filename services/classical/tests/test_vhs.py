"""VHS damage (issue 28): the analog stage repairs chroma delay and bleed, dropouts and line
jitter made by the tape simulator from the shared clean footage, and leaves clean footage
as it was."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from orchestrator.media.simulate import (drawn_chroma_bleed, drawn_chroma_delay, kind_rng,
                                         read_clip, simulate)
from services.classical import analog, vhs
from services.classical.analog import AnalogStage
from services.stagekit.stage import ClipInfo
from services.stagekit.testing import shared_dir

SIZE, COUNT = (240, 160), 6


def footage(name: str, start: int) -> list[np.ndarray]:
    path = shared_dir() / "footage" / name
    if not path.exists():
        pytest.skip(f"no {path}")
    return read_clip(path, SIZE, COUNT, start)[0]


# Stretches away from the frames the repairs were tuned on (cockatoo's first ones). The
# old film is black and white: for the luma damages only. (tape_sim is interlaced: lines
# of its two fields really are apart, and the analog stage straightens after weaving.)
@pytest.fixture(scope="module")
def cockatoo() -> list[np.ndarray]:
    return footage("cockatoo_clean.mp4", 150)


@pytest.fixture(scope="module", params=[("cockatoo_clean.mp4", 150), ("oldfilm_003.mp4", 30)],
                ids=["cockatoo", "oldfilm"])
def either(request) -> list[np.ndarray]:
    return footage(*request.param)


def repaired(frames: list[np.ndarray], **params) -> list[np.ndarray]:
    info = ClipInfo("vhs", frames[0].shape[1], frames[0].shape[0], Fraction(30),
                    params={"deflicker": "off", **params})
    return list(AnalogStage().run(info, iter(frames))[1])


def psnr(frames, truth) -> float:
    mse = np.mean([(f.astype(np.float32) - t) ** 2 for f, t in zip(frames, truth)])
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-6)))


def chroma_error(frames, truth) -> float:
    """RMS of the R - Y and B - Y differences."""
    errors = []
    for f, t in zip(frames, truth):
        _, fr, fb = vhs.split_chroma(f.astype(np.float32))
        _, tr, tb = vhs.split_chroma(t.astype(np.float32))
        errors.append(np.mean((fr - tr) ** 2 + (fb - tb) ** 2) / 2)
    return float(np.sqrt(np.mean(errors)))


@pytest.mark.parametrize("kind", ["tape_dropouts", "line_jitter"])
def test_repair_beats_the_untouched_clip_by_a_decibel(either, kind):
    damaged = simulate(either, [kind], seed=11).frames
    untouched, ours = psnr(damaged, either), psnr(repaired(damaged), either)
    assert ours > untouched + 1.0, (untouched, ours)


def test_chroma_delay_repair_cuts_the_chroma_error_by_a_fifth(cockatoo):
    damaged = simulate(cockatoo, ["chroma_delay"], seed=11).frames
    untouched = chroma_error(damaged, cockatoo)
    ours = chroma_error(repaired(damaged), cockatoo)
    assert ours < 0.8 * untouched, (untouched, ours)


# A fifth on tape_sim, whose colour has edges to lose (it gets 24 to 26 %); a tenth at
# least on cockatoo's stretches, whose colour is soft (10 to 16 %). bench/quality.py's
# rows (cockatoo's first frames, bikes.mp4) get 21 and 26 % in their own measure.
@pytest.mark.parametrize("name,start,strength,cut", [("tape_sim.mp4", 40, 1.0, 0.8),
                                                     ("tape_sim.mp4", 40, 1.2, 0.8),
                                                     ("cockatoo_clean.mp4", 60, 1.0, 0.9),
                                                     ("cockatoo_clean.mp4", 200, 1.0, 0.93)])
def test_chroma_bleed_repair_cuts_the_chroma_error(name, start, strength, cut):
    clean = footage(name, start)
    damaged = simulate(clean, ["chroma_bleed"], seed=11,
                       strengths={"chroma_bleed": strength}).frames
    untouched = chroma_error(damaged, clean)
    ours = chroma_error(repaired(damaged), clean)
    assert ours < cut * untouched, (untouched, ours)


# A bleed repaired as wider than it is makes the chroma worse than leaving it (by 30 %
# more, the repair wins nothing): the measure may err a little low, never much high.
@pytest.mark.parametrize("name,start", [("tape_sim.mp4", 40), ("cockatoo_clean.mp4", 60),
                                        ("cockatoo_clean.mp4", 200)])
def test_chroma_bleed_is_not_overestimated(name, start):
    clean = footage(name, start)
    damaged = simulate(clean, ["chroma_bleed"], seed=11).frames
    true = drawn_chroma_bleed(kind_rng(11, "chroma_bleed"))
    measured = vhs.measure_chroma([f.astype(np.float32) for f in damaged[:1]]).bleed
    assert 0.8 * true < measured < 1.1 * true, (true, measured)


def test_a_black_and_white_picture_has_no_chroma_damage(either):
    grey = [np.repeat(f.mean(axis=2, keepdims=True, dtype=np.float32), 3, axis=2)
            for f in either[:2]]
    assert vhs.measure_chroma(grey) == vhs.VhsMeasure(0.0, 0.0)


def test_chroma_delay_is_measured(cockatoo):
    damaged = simulate(cockatoo, ["chroma_delay"], seed=11, strengths={"chroma_delay": 1.0})
    delay = drawn_chroma_delay(kind_rng(11, "chroma_delay"))
    measured = vhs.measure_chroma([f.astype(np.float32) for f in damaged.frames[:4]]).delay
    # Cockatoo's own chroma sits about a pixel right of its luma here.
    assert abs(measured - delay) < 1.25, (delay, measured)


# Not the old film: it has its own dust and streaks, which the stage rightly mends.
# Cockatoo at 250: its own chroma is softer across than down (a blur measured across
# alone took it for a bleed).
@pytest.mark.parametrize("name,start", [("cockatoo_clean.mp4", 150), ("cockatoo_clean.mp4", 250),
                                        ("tape_sim.mp4", 40)])
def test_clean_footage_passes_through_the_vhs_repairs_unchanged(name, start, monkeypatch):
    clean = footage(name, start)
    frames = [f.astype(np.float32) for f in clean]
    assert vhs.measure_chroma(frames[:2]) == vhs.VhsMeasure(0.0, 0.0)
    assert vhs.measure_jitter(vhs.luma(frames[0])) < vhs.JITTER_FLOOR
    with_repairs = psnr(repaired(clean), clean)
    # The same stage with every VHS repair taken out: its impulse pass stays.
    monkeypatch.setattr(analog, "straighten_lines", lambda images, clip_id: images)
    monkeypatch.setattr(analog, "mend_colour", lambda images, clip_id: images)
    monkeypatch.setattr(analog, "fill_dropouts", lambda image, *rest: (image, 0))
    without = psnr(repaired(clean), clean)
    assert abs(with_repairs - without) < 0.1, (with_repairs, without)
