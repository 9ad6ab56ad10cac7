"""`orchestrator inspect` tells what it finds; `orchestrator preview` shows a restored
stretch beside the original."""
from __future__ import annotations

import json
from fractions import Fraction

import av
import cv2
import numpy as np

from .helpers import read_frames, run_cli


def inspect_json(path) -> dict:
    result = run_cli("inspect", path, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_inspect_tape(shared):
    report = inspect_json(shared / "footage" / "tape_sim.mp4")
    video = report["video"]
    assert video["interlaced"] and video["field_order"] == "tff"
    assert (video["sample_aspect_ratio"], video["display_aspect_ratio"]) == ("8:9", "4:3")
    assert abs(report["native_resolution"]["width"] - 360) <= 8
    assert abs(report["native_resolution"]["height"] - 240) <= 8
    [grey] = report["black_and_white"]
    assert abs(grey["from_s"] - 3) < 0.2 and abs(grey["to_s"] - 6) < 0.2
    # Its colour will come from the colour shots on both sides, the nearest frames first.
    [scene] = report["grey_scenes"]
    sides = [r["side"] for r in scene["references"]]
    assert {"before", "after"} <= set(sides)
    nearest = {side: min(abs(r["at_s"] - (scene["from_s"] if side == "before" else scene["to_s"]))
                         for r in scene["references"] if r["side"] == side) for side in sides}
    assert max(nearest.values()) < 0.1
    assert "colour shots" in scene["colour"]
    bands = report["damaged_bands"]
    assert bands.get("left", 0) >= 10 and bands.get("bottom", 0) >= 6
    assert len(report["audio"]) == 1
    assert [s["task"] for s in report["pipeline"]["stages"]][:2] == ["deinterlace", "analog"]
    assert report["pipeline"]["stages"][0]["params"]["field_order"] == "tff"


def test_inspect_old_film(shared):
    report = inspect_json(shared / "footage" / "oldfilm_003.mp4")
    assert not report["video"]["interlaced"]
    assert report["native_resolution"] == {"width": 640, "height": 480}
    [grey] = report["black_and_white"]
    assert grey["from_s"] == 0 and grey["to_s"] >= report["video"]["duration_s"] - 0.1
    assert report["audio"] == []


def test_inspect_in_words(shared):
    result = run_cli("inspect", shared / "footage" / "tape_sim.mp4")
    assert result.returncode == 0, result.stderr
    assert "interlaced, top field first" in result.stdout
    assert "black-and-white: 3.0" in result.stdout
    assert "colour from 4 frame(s) of the tape's colour shots" in result.stdout


def test_preview_puts_original_and_restored_side_by_side(shared, tmp_path):
    source = shared / "footage" / "tape_sim.mp4"
    out, still = tmp_path / "cmp.mp4", tmp_path / "cmp.png"
    result = run_cli("preview", source, "--at", "1", "--seconds", "1", "-o", out,
                     "--still", still, "-q")
    assert result.returncode == 0, result.stderr
    frames = read_frames(out)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert abs(len(frames) / float(stream.average_rate) - 1.0) < 0.1
    height, width = frames[0].shape[:2]
    assert abs(width / height - 2 * 4 / 3) < 0.02           # two 4:3 pictures
    original = read_frames(source)[30]
    left = cv2.resize(original, (width // 2, height), interpolation=cv2.INTER_AREA)
    ours_left = frames[0][:, : width // 2].astype(np.float32)
    assert np.abs(ours_left - left).mean() < 12          # the before half is the original
    assert cv2.imread(str(still)) is not None


def test_preview_says_only_what_concerns_the_user(shared, tmp_path):
    """Issue 27: no warning about its own working files, log times in the video's own
    clock, the source's exact frame rate, and a wipe labelled before/after."""
    out, still = tmp_path / "wipe.mp4", tmp_path / "wipe.png"
    result = run_cli("preview", shared / "footage" / "tape_sim.mp4", "--at", "2.5", "--seconds",
                     "1", "--stages", "analog,denoise", "--layout", "wipe", "-o", out,
                     "--still", still, "-q")
    assert result.returncode == 0, result.stderr
    assert "Matroska" not in result.stderr and "restored.mkv" not in result.stderr
    # The grey scene of tape_sim starts at 3 s: logged at 3 s, not 0.5 s into the stretch.
    assert "black-and-white scene: 3.0" in result.stderr, result.stderr
    with av.open(str(out)) as container:
        assert container.streams.video[0].average_rate == Fraction(60000, 1001)
    picture = cv2.imread(str(still))
    width = picture.shape[1]
    # White label text in the top corners: 'before' at the left, 'after' at the right.
    for corner in (picture[5:35, 5:110], picture[5:35, width - 90:width - 5]):
        assert (corner.min(axis=-1) > 240).sum() > 40


def test_inspect_words_fit_the_pipeline(shared):
    result = run_cli("inspect", shared / "footage" / "tape_sim.mp4", "--stages", "analog,denoise")
    assert result.returncode == 0, result.stderr
    assert "superres" not in result.stdout
    assert "(of the 720x480 frame)" in result.stdout


def test_inspect_measures_vhs_chroma_delay_and_dropouts(shared, tmp_path):
    from orchestrator.media.simulate import (drawn_chroma_delay, kind_rng, read_clip,
                                             simulate, write_clip)
    clean, rate = read_clip(shared / "footage" / "cockatoo_clean.mp4", (240, 160), 8, 40)
    write_clip(tmp_path / "clean.mp4", clean, rate)
    write_clip(tmp_path / "vhs.mp4", simulate(clean, ["chroma_delay", "tape_dropouts"], 4).frames,
               rate)
    damaged, untouched = inspect_json(tmp_path / "vhs.mp4"), inspect_json(tmp_path / "clean.mp4")
    delay = drawn_chroma_delay(kind_rng(4, "chroma_delay"))
    assert abs(damaged["vhs"]["chroma_delay_px"] - delay) < 1.0
    assert damaged["vhs"]["dropout_rate"] > 0.001
    assert untouched["vhs"]["chroma_delay_px"] == 0 and untouched["vhs"]["dropout_rate"] < 1e-4
    from orchestrator.commands.inspect import render
    assert f"VHS: chroma delay {damaged['vhs']['chroma_delay_px']:.2f} px" in render(damaged)
