"""The tape simulator's degradations: each is deterministic for a seed, differs between
seeds, and changes the frames the way its kind of damage does (issue 3, acceptance 4)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from orchestrator.media.simulate import KINDS, kind_rng, main, simulate, write_clip

W, H, COUNT = 64, 48, 8


def clean_clip(count=COUNT) -> list[np.ndarray]:
    """A textured colour picture panning right by 2 px a frame."""
    rng = np.random.default_rng(7)
    base = rng.uniform(0, 255, (H // 3, (W + 2 * count) // 3, 3)).astype(np.float32)
    big = cv2.resize(base, (W + 2 * count, H), interpolation=cv2.INTER_CUBIC)
    return [np.clip(big[:, 2 * i:2 * i + W], 0, 255).astype(np.uint8) for i in range(count)]


def luma(frame) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)


def changed(frames, clean) -> list[np.ndarray]:
    """Per frame, where a degraded frame differs from its clean one (by more than 8)."""
    return [np.abs(f.astype(np.int16) - c).max(axis=2) > 8 for f, c in zip(frames, clean)]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_is_deterministic_for_a_seed_and_changes_the_frames(kind):
    clean = clean_clip()
    first, again = simulate(clean, [kind], seed=1), simulate(clean, [kind], seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(first.frames, again.frames))
    assert all(np.array_equal(a, b) for a, b in zip(first.truth, again.truth))
    assert all(np.array_equal(a, c) for a, c in zip(first.truth, clean[:len(first.truth)]))
    same_size = first.frames[0].shape == clean[0].shape
    if same_size and first.fps_factor == 1:
        assert any(not np.array_equal(f, c) for f, c in zip(first.frames, clean))


@pytest.mark.parametrize("kind", ["grain", "motion_blur", "defocus", "scratches", "dirt",
                                  "dropouts", "flicker", "borders", "black_and_white"])
def test_random_kinds_differ_between_seeds(kind):
    clean = clean_clip()
    one, two = simulate(clean, [kind], seed=1), simulate(clean, [kind], seed=2)
    assert any(not np.array_equal(a, b) for a, b in zip(one.frames, two.frames))


def test_grain_is_zero_mean_noise_in_luma_and_chroma():
    clean = clean_clip()
    noisy = simulate(clean, ["grain"], seed=0).frames
    diff = np.stack([f.astype(np.float32) - c for f, c in zip(noisy, clean)])
    assert abs(diff.mean()) < 1.0
    assert 4.0 < diff.std() < 20.0
    # Chroma noise: the channels do not move together.
    assert np.std(diff[..., 0] - diff[..., 2]) > 3.0


@pytest.mark.parametrize("kind", ["defocus", "motion_blur"])
def test_blur_removes_detail(kind):
    clean = clean_clip()
    blurred = simulate(clean, [kind], seed=0).frames
    detail = lambda f: cv2.Laplacian(luma(f), cv2.CV_32F).var()
    assert all(detail(b) < 0.8 * detail(c) for b, c in zip(blurred, clean))


def test_downscale_is_4x_area_and_keeps_the_full_size_truth():
    clean = clean_clip()
    result = simulate(clean, ["downscale"], seed=0)
    assert result.scale == 4
    assert result.frames[0].shape == (H // 4, W // 4, 3)
    assert result.truth[0].shape == clean[0].shape
    block_mean = clean[0].reshape(H // 4, 4, W // 4, 4, 3).mean(axis=(1, 3))
    assert np.abs(result.frames[0] - block_mean).max() <= 1.0


def test_dropped_frames_keep_every_other_frame_and_all_of_the_truth():
    clean = clean_clip()
    result = simulate(clean, ["drop_frames"], seed=0)
    assert result.fps_factor == 2
    assert len(result.frames) == COUNT // 2 and len(result.truth) == COUNT
    assert all(np.array_equal(f, clean[2 * i]) for i, f in enumerate(result.frames))


def test_interlaced_fields_come_from_consecutive_moments():
    clean = clean_clip()
    result = simulate(clean, ["interlace"], seed=0)
    assert result.fps_factor == 2 and len(result.frames) == COUNT // 2
    for i, woven in enumerate(result.frames):
        assert np.array_equal(woven[0::2], clean[2 * i][0::2])      # top field first
        assert np.array_equal(woven[1::2], clean[2 * i + 1][1::2])
        # The picture moved between the fields: they really differ (combing).
        assert not np.array_equal(woven[1::2], clean[2 * i][1::2])


def test_black_and_white_scene_is_grey_in_the_middle_and_colour_around_it():
    clean = clean_clip(20)
    frames = simulate(clean, ["black_and_white"], seed=0).frames
    grey = [bool(np.all(f[..., 0] == f[..., 1]) and np.all(f[..., 1] == f[..., 2]))
            for f in frames]
    assert not grey[0] and not grey[-1] and any(grey)
    first, last = grey.index(True), len(grey) - 1 - grey[::-1].index(True)
    assert all(grey[first:last + 1])
    assert np.abs(luma(frames[first]) - luma(clean[first])).max() <= 1.0


def test_borders_damage_exactly_the_mask():
    clean = clean_clip()
    result = simulate(clean, ["borders"], seed=0)
    mask = result.mask > 0
    assert mask[:, 0].all() and mask[-1].all() and not mask[H // 2, W // 2]
    for frame, truth in zip(result.frames, clean):
        assert np.array_equal(frame[~mask], truth[~mask])
        left = frame[:H - 4, :2]
        assert left.max() < 16                                      # black band
        assert frame[-1].astype(np.float32).mean() > 150            # pale switching band


@pytest.mark.parametrize("kind", ["scratches", "dirt", "dropouts", "line_tears"])
def test_impulse_damage_is_local(kind):
    clean = clean_clip(12)
    frames = simulate(clean, [kind], seed=3).frames
    masks = changed(frames, clean)
    assert any(m.any() for m in masks)
    assert all(m.mean() < 0.25 for m in masks)


def test_scratches_are_vertical_lines():
    clean = clean_clip(12)
    frames = simulate(clean, ["scratches"], seed=3).frames
    for mask in changed(frames, clean):
        columns = np.flatnonzero(mask.any(axis=0))
        for x in columns:
            assert mask[:, x].sum() >= H // 4


def test_dropouts_are_bright_horizontal_streaks():
    clean = clean_clip(12)
    frames = simulate(clean, ["dropouts"], seed=3).frames
    for frame, mask in zip(frames, changed(frames, clean)):
        rows = np.flatnonzero(mask.any(axis=1))
        for y in rows:
            assert frame[y][mask[y]].min() >= 240 - 1
            assert mask[y].sum() >= 4


def test_line_tears_shift_rows_sideways():
    clean = clean_clip(20)
    frames = simulate(clean, ["line_tears"], seed=3).frames
    torn = [i for i, m in enumerate(changed(frames, clean)) if m.any()]
    assert torn
    frame, truth = frames[torn[0]], clean[torn[0]]
    row = int(np.flatnonzero((frame != truth).any(axis=(1, 2)))[0])
    assert any(np.array_equal(frame[row], np.roll(truth[row], shift, axis=0))
               for shift in range(3, 12))


def test_flicker_changes_each_frames_brightness_but_not_its_picture():
    clean = clean_clip()
    frames = simulate(clean, ["flicker"], seed=0).frames
    shifts = [luma(f).mean() - luma(c).mean() for f, c in zip(frames, clean)]
    assert np.std(shifts) > 1.0
    for f, c in zip(frames, clean):
        assert np.corrcoef(luma(f).ravel(), luma(c).ravel())[0, 1] > 0.99


def test_kinds_combine_in_order_and_each_keeps_its_own_randomness():
    """Two kinds together are the second applied to the first's result, with the very
    draws it makes alone: adding a kind does not reshuffle the others."""
    clean = clean_clip()
    both = simulate(clean, ["dirt", "scratches"], seed=5).frames     # scratches go first
    scratched = simulate(clean, ["scratches"], seed=5).frames
    expected = KINDS["dirt"](scratched, kind_rng(5, "dirt"))
    assert all(np.array_equal(a, b) for a, b in zip(both, expected))


def test_unknown_kind_and_two_rate_halvings_are_refused():
    with pytest.raises(ValueError, match="unknown"):
        simulate(clean_clip(), ["mould"])
    with pytest.raises(ValueError, match="halve"):
        simulate(clean_clip(), ["drop_frames", "interlace"])


def test_command_line_writes_the_degraded_clip_and_its_truth(tmp_path):
    source = tmp_path / "clean.mp4"
    write_clip(source, clean_clip(), 20)
    degraded, truth = tmp_path / "tape.mp4", tmp_path / "truth"
    args = [str(source), "-o", str(degraded), "--truth", str(truth), "--seed", "4",
            "--kinds", "grain", "borders", "interlace"]
    assert main(args) == 0
    meta = json.loads((truth / "truth.json").read_text())
    assert meta["truth_frames"] == COUNT and meta["degraded_frames"] == COUNT // 2
    assert meta["truth_fps"] == "20" and meta["degraded_fps"] == "10"
    assert (truth / "mask.png").exists() and len(list(truth.glob("0*.png"))) == COUNT
    first = degraded.read_bytes()
    assert main(args) == 0
    assert degraded.read_bytes() == first


# ---- VHS damage (issue 28) --------------------------------------------------------------

def chroma(frame) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2YCrCb)[..., 1:].astype(np.float32)


def test_chroma_delay_moves_the_colour_right_and_keeps_the_luma():
    clean = clean_clip()
    delayed = simulate(clean, ["chroma_delay"], seed=3).frames
    assert np.abs(luma(delayed[0]) - luma(clean[0])).mean() < 1.5
    errors = {dx: np.abs(chroma(delayed[0])[:, 8:-8] - np.roll(chroma(clean[0]), dx, 1)[:, 8:-8]).mean()
              for dx in range(0, 6)}
    assert 2 <= min(errors, key=errors.get) <= 4


def test_chroma_bleed_blurs_the_colour_sideways_only():
    clean = clean_clip()
    bled = simulate(clean, ["chroma_bleed"], seed=3).frames[0]
    across = lambda c: np.abs(np.diff(c, axis=1)).mean()
    down = lambda c: np.abs(np.diff(c, axis=0)).mean()
    ratio = lambda measure: measure(chroma(bled)) / measure(chroma(clean[0]))
    assert ratio(across) < 0.6 and ratio(across) < 0.7 * ratio(down)
    assert np.abs(luma(bled) - luma(clean[0])).mean() < 1.5


def test_tape_dropouts_are_one_line_streaks_on_one_frame():
    clean = clean_clip()
    damaged = changed(simulate(clean, ["tape_dropouts"], seed=3).frames, clean)
    assert all(mask.any() for mask in damaged)
    for mask in damaged:
        labels, stats = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)[1:3]
        widths, heights = stats[1:, cv2.CC_STAT_WIDTH], stats[1:, cv2.CC_STAT_HEIGHT]
        assert (heights <= 2).all() and widths.max() >= 6
    # Random per frame: no streak stays where it was.
    assert not (damaged[0] & damaged[1]).sum() > 0.5 * damaged[0].sum()


def test_line_jitter_shifts_lines_sideways_differently_per_field():
    clean = clean_clip()
    jittered = simulate(clean, ["line_jitter"], seed=3).frames
    def row_shifts(frame, ref):
        lags = np.arange(-3, 4)
        errs = np.stack([np.abs(np.roll(luma(ref), s, 1) - luma(frame))[:, 4:-4].mean(axis=1)
                         for s in lags])
        return lags[errs.argmin(axis=0)]
    shifts = [row_shifts(j, c) for j, c in zip(jittered[:2], clean[:2])]
    assert all(np.abs(s).max() >= 1 for s in shifts)
    assert not np.array_equal(shifts[0][0::2], shifts[1][0::2])
    assert not np.array_equal(shifts[0][0::2], shifts[0][1::2])


@pytest.mark.parametrize("kind", ["chroma_delay", "chroma_bleed", "tape_dropouts", "line_jitter"])
def test_vhs_kinds_scale_with_their_strength(kind):
    clean = clean_clip()
    error = lambda s: np.mean([np.abs(f.astype(np.float32) - c).mean() for f, c in
                               zip(simulate(clean, [kind], 1, {kind: s}).frames, clean)])
    assert error(0.0) < 0.7 < error(0.5) < error(1.5)


def test_a_strength_for_a_kind_without_one_is_refused():
    with pytest.raises(ValueError, match="no strength"):
        simulate(clean_clip(), ["grain"], 0, {"grain": 2.0})


@pytest.mark.parametrize("strength,ok", [("chroma_delay=1.5", True), ("chroma_delay=lots", False),
                                         ("grain=2", False)])
def test_the_command_takes_strengths_and_refuses_bad_ones(tmp_path, strength, ok, capsys):
    source = tmp_path / "clean.mp4"
    write_clip(source, clean_clip(), 20)
    args = [str(source), "-o", str(tmp_path / "tape.mp4"), "--truth", str(tmp_path / "truth"),
            "--kinds", "chroma_delay", "--strength", strength]
    if ok:
        assert main(args) == 0
        return
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2 and "error:" in capsys.readouterr().err
    assert not (tmp_path / "tape.mp4").exists()
