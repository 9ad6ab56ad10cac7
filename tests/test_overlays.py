"""Burned-in overlays (date stamps): found by the analysis, kept out of temporal work,
removed by the outpaint stage. Clips are made here from the shared clean footage, with
stamps drawn by the tape simulator (OpenCV putText) in several variants."""
from __future__ import annotations

import json
import subprocess
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from orchestrator.media import simulate as sim
from orchestrator.media.overlays import find_overlays
from services.stagekit.stage import ClipInfo
from tests.helpers import read_frames, run_cli, write_video

SIZE = (320, 240)
STAMPS = [sim.Stamp(),
          sim.Stamp("12:41:07", "top-left", (255, 255, 255), True, 0.06),
          sim.Stamp("PLAY", "top-right", (120, 255, 120), False, 0.07)]


@pytest.fixture(scope="module")
def footage():
    """Two moving clean clips: a stretch of real video, and a pan over a photograph."""
    from services.stagekit.testing import shared_dir
    shared = shared_dir()
    if not (shared / "footage").is_dir():
        pytest.skip("../shared/footage is not available")
    cockatoo, rate = sim.read_clip(shared / "footage" / "cockatoo_clean.mp4", SIZE, 40, 150)
    still = sim.read_clip(shared / "footage" / "cockatoo_clean.mp4", None, 1, 200)[0][0]
    return {"cockatoo": (cockatoo, float(rate)), "pan": (list(sim.pan(still, 40, SIZE)), 20.0),
            "still": still}


def captured(frames, seed=0, sigma=4.0):
    """A camera's softness and noise over ``frames``."""
    rng = np.random.default_rng(seed)
    return [np.clip(cv2.GaussianBlur(f, (0, 0), 0.6) + rng.normal(0, sigma, f.shape), 0, 255)
            .astype(np.uint8) for f in frames]


def visible_truth(clean, stamped, drawn):
    """The stamp's pixels a viewer sees: drawn, and changed in most frames (a dark rim on a
    dark picture is not there to be found)."""
    changed = np.mean([np.abs(a.astype(int) - b).mean(axis=2) > 20
                       for a, b in zip(clean, stamped)], axis=0) > 0.5
    return (drawn > 0) & changed


def iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


@pytest.mark.parametrize("clip", ["cockatoo", "pan"])
def test_drawn_stamps_are_found_text_shaped_and_clean_clips_give_none(footage, clip):
    frames, rate = footage[clip]
    assert not find_overlays(captured(frames), rate)
    for stamp in STAMPS:
        stamped, drawn = sim.draw_stamp(frames, stamp)
        found = find_overlays(captured(stamped), rate)
        assert len(found.items) == 1, (stamp, [(o.box, o.first, o.last) for o in found.items])
        overlay = found.items[0]
        truth = visible_truth(frames, stamped, drawn)
        assert iou(found.mask_at(SIZE) > 0, truth) >= 0.6, stamp
        assert overlay.last - overlay.first + 1 >= 0.9 * len(frames)


def test_a_stamp_found_only_where_it_is_shown(footage):
    frames, rate = footage["pan"]
    stamped, _ = sim.draw_stamp(frames, STAMPS[0], span=(12, 40))
    found = find_overlays(captured(stamped), rate)
    assert len(found.items) == 1
    assert abs(found.items[0].first - 12) <= 2 and found.items[0].last >= 37


def test_text_on_a_wall_that_pans_with_the_scene_is_no_overlay(footage):
    wall = footage["still"].copy()
    height, width = wall.shape[:2]
    for row, text in enumerate(("EXIT", "CAFE 1994", "NO PARKING")):
        cv2.putText(wall, text, (width // 4, height // 4 + row * height // 5),
                    cv2.FONT_HERSHEY_SIMPLEX, 2.5, (255, 240, 40), 6, cv2.LINE_AA)
    frames = list(sim.pan(wall, 40, SIZE))
    assert not find_overlays(captured(frames), 20.0)


def test_the_clip_header_carries_the_overlay_at_the_working_size(footage):
    frames, rate = footage["pan"]
    stamped, drawn = sim.draw_stamp(frames, STAMPS[0])
    found = find_overlays(captured(stamped), rate)
    entries = found.analysis(10, 30, (640, 480))
    listed = json.loads(entries["overlays"])
    assert listed[0]["frames"] == [0, 19]
    x, y, w, h = listed[0]["box"]
    tx, ty, tw, th = (2 * v for v in cv2.boundingRect(drawn))
    assert abs(x - tx) <= 4 and abs(y - ty) <= 4 and abs(w - tw) <= 8 and abs(h - th) <= 8
    mask = cv2.imdecode(np.frombuffer(entries["overlay_mask"], np.uint8), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (480, 640)
    assert found.analysis(40, 50, (640, 480)) == {}


def stamp_region(drawn, grow=3):
    x, y, w, h = cv2.boundingRect(drawn)
    region = np.zeros(drawn.shape, bool)
    region[y - grow:y + h + grow, x - grow:x + w + grow] = True
    return region


def test_a_temporal_stage_leaves_the_overlay_crisp_and_single(footage):
    """Denoising mixes frames along the motion; interpolation makes frames between two:
    with the overlay in the clip header neither drags the stamp along with the picture."""
    from services.classical.denoise import DenoiseStage
    from services.classical.interpolate import InterpolateStage
    frames, rate = footage["pan"]
    stamped, drawn = sim.draw_stamp(frames, STAMPS[0])
    found = find_overlays(captured(stamped), rate)
    noisy = captured(stamped[:12])
    info = ClipInfo("c", *SIZE, Fraction(20), analysis=found.analysis(0, 12, SIZE))
    letters = drawn > 0
    for stage, params in ((DenoiseStage(), {"strength": "12"}), (InterpolateStage(), {"factor": "2"})):
        out_info, out = stage.run(info.replace(params=params), iter(noisy))
        out = list(out)
        step = round(float(out_info.fps) / rate)
        for index, frame in enumerate(out):
            source = noisy[min(index // step, len(noisy) - 1)]
            assert np.abs(frame[letters].astype(int) - source[letters]).mean() < 3.0
        _, plain = stage.run(info.replace(params=params, analysis={}), iter(noisy))
        plain = list(plain)
        # Without the overlay the same stage does smear it (the test can fail).
        assert np.mean([np.abs(p[letters].astype(int) - noisy[i // step][letters]).mean()
                        for i, p in enumerate(plain[:len(noisy) * step - step])]) > 3.0


def psnr(a, b, where):
    error = np.mean((a.astype(np.float64) - b)[where] ** 2)
    return 10 * np.log10(255.0 ** 2 / max(error, 1e-9))


def delogo(path: Path, box, size, count) -> list[np.ndarray]:
    import imageio_ffmpeg
    x, y, w, h = box
    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-vf",
                          f"delogo=x={x}:y={y}:w={w}:h={h}", "-f", "rawvideo", "-pix_fmt",
                          "rgb24", "-"], check=True, capture_output=True).stdout
    frame = size[0] * size[1] * 3
    return [np.frombuffer(raw[i:i + frame], np.uint8).reshape(size[1], size[0], 3)
            for i in range(0, frame * count, frame)]


def test_outpaint_removes_the_stamp_better_than_delogo_given_the_box(footage, tmp_path):
    frames, rate = footage["cockatoo"]
    stamped, drawn = sim.draw_stamp(frames, STAMPS[0])
    tape = write_video(tmp_path / "tape.mp4", captured(stamped), fps=Fraction(20),
                       options={"crf": "4"}, pix_fmt="yuv444p")
    out = tmp_path / "out.mkv"
    done = run_cli("submit", tape, "--stages", "outpaint", "--codec", "ffv1", "-o", out)
    assert done.returncode == 0, done.stderr
    restored, given = read_frames(out), read_frames(tape)
    region = stamp_region(drawn)
    x, y, w, h = cv2.boundingRect(region.astype(np.uint8))
    theirs = delogo(tape, (x, y, w, h), SIZE, len(frames))
    ours_db = np.mean([psnr(o, t, region) for o, t in zip(restored, frames)])
    delogo_db = np.mean([psnr(o, t, region) for o, t in zip(theirs, frames)])
    assert ours_db >= delogo_db + 2.0, (ours_db, delogo_db)
    rest = ~cv2.dilate(region.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    before = np.mean([psnr(i, t, rest) for i, t in zip(given, frames)])
    after = np.mean([psnr(o, t, rest) for o, t in zip(restored, frames)])
    assert after >= before - 0.3, (after, before)


def test_keep_leaves_the_stamp_and_a_bad_choice_is_refused(footage, tmp_path):
    frames, rate = footage["pan"]
    stamped, drawn = sim.draw_stamp(frames[:24], STAMPS[0])
    tape = write_video(tmp_path / "tape.mp4", captured(stamped), fps=Fraction(20),
                       options={"crf": "4"}, pix_fmt="yuv444p")
    out = tmp_path / "out.mkv"
    done = run_cli("submit", tape, "--stages", "outpaint", "--codec", "ffv1", "-o", out,
                   "--set", "outpaint.overlays=keep")
    assert done.returncode == 0, done.stderr
    letters = drawn > 0
    for kept, given in zip(read_frames(out), read_frames(tape)):
        assert np.abs(kept[letters].astype(int) - given[letters]).mean() < 2.0
    bad = run_cli("submit", tape, "--stages", "outpaint", "-o", tmp_path / "x.mp4",
                  "--set", "outpaint.overlays=erase")
    assert bad.returncode != 0 and "remove or keep" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "x.mp4").exists()


def test_inspect_lists_the_overlay_with_its_crop(footage, tmp_path):
    frames, rate = footage["pan"]
    stamped, drawn = sim.draw_stamp(frames, STAMPS[0])
    tape = write_video(tmp_path / "tape.mp4", captured(stamped), fps=Fraction(20),
                       options={"crf": "4"}, pix_fmt="yuv444p")
    done = run_cli("inspect", tape, "--json", "--overlay-crops", tmp_path / "crops")
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)["overlays"]
    assert len(listed) == 1
    x, y, w, h = cv2.boundingRect(drawn)
    bx, by, bw, bh = listed[0]["box"]
    assert abs(bx - x) <= 3 and abs(by - y) <= 3 and abs(bw - w) <= 6 and abs(bh - h) <= 6
    assert listed[0]["frames"][0] == 0 and listed[0]["frames"][1] >= 36
    crop = cv2.imread(listed[0]["crop"])
    assert crop is not None and crop.shape[0] >= h and crop.shape[1] >= w
    from orchestrator.commands.inspect import render
    assert f"overlays: 0.00s-" in render(json.loads(done.stdout))


def yellow(frame):
    """Where a frame is the date stamp's yellow."""
    hsv = cv2.cvtColor(frame, cv2.COLOR_RGB2HSV)
    return (hsv[..., 0] >= 20) & (hsv[..., 0] <= 38) & (hsv[..., 1] >= 110) & (hsv[..., 2] >= 120)


def sharpness(frame, where):
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))[where].mean())


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_tape_sim_loses_its_date_stamp_by_default_and_keeps_it_crisp_when_asked(tmp_path):
    """tape_sim.mp4's 'JAN 15 1994': the default job removes it with no ghost left; with
    outpaint.overlays=keep it is in every frame, as sharp as in the tape and single (no
    shifted copies beside it)."""
    from services.stagekit.testing import shared_dir
    tape = shared_dir() / "footage" / "tape_sim.mp4"
    if not tape.exists():
        pytest.skip("../shared/footage is not available")
    size = (360, 240)
    given = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in read_frames(tape)]
    stamp = np.mean([yellow(f) for f in given], axis=0) > 0.8
    assert 150 < stamp.sum() < 2000
    x, y, w, h = cv2.boundingRect(stamp.astype(np.uint8))
    near = np.zeros(stamp.shape, bool)
    near[y - 12:y + h + 12, max(0, x - 24):x + w + 24] = True
    letters = cv2.dilate(stamp.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    beside = near & ~letters
    rims = cv2.dilate(stamp.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    for choice in ("remove", "keep"):
        out = tmp_path / f"{choice}.mkv"
        done = run_cli("submit", tape, "--codec", "ffv1", "-o", out,
                       "--set", f"outpaint.overlays={choice}")
        assert done.returncode == 0, done.stderr
        frames = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in read_frames(out)]
        assert len(frames) >= 2 * len(given) - 2
        step = round(len(frames) / len(given))
        for index, frame in enumerate(frames):
            source = given[min(index // step, len(given) - 1)]
            shown = yellow(frame)
            ghosts = (shown & beside).sum()
            if choice == "remove":
                assert (shown & near).sum() < 0.05 * stamp.sum(), index
            else:
                assert (shown & stamp).sum() > 0.7 * stamp.sum(), index
                assert ghosts < 0.05 * stamp.sum(), index
                # As sharp as in the tape's frame of that moment (what lies behind the
                # letters changes their edges' contrast from frame to frame).
                assert sharpness(frame, rims) > 0.9 * sharpness(source, rims), index
