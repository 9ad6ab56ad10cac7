"""End to end: the real CLI on real footage and on tapes made here, embedded and through
the classical stage service running as a real process."""
from __future__ import annotations

import json
import os
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from orchestrator.media.simulate import TapeDamage, make_demo_tape
from services.stagekit.testing import running_service

from .helpers import read_frames, run_cli, textured, write_video


def video_facts(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        frames = sum(1 for _ in container.decode(stream))
        facts = {
            "width": ctx.width, "height": ctx.height, "fps": stream.average_rate,
            "sar": stream.sample_aspect_ratio or ctx.sample_aspect_ratio or Fraction(1),
            "frames": frames, "field_order": int(ctx.field_order or 0),
        }
    return {**facts, "audio": audio_duration(path)}


def audio_duration(path):
    """Seconds from the first audio packet's start to the last one's end (None: no audio)."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        packets = [p for p in container.demux(stream) if p.pts is not None]
        first = min(p.pts for p in packets)
        last = max(p.pts + p.duration for p in packets)
        return float((last - first) * stream.time_base)


def test_tape_sim_restores_end_to_end(shared, tmp_path):
    source = shared / "footage" / "tape_sim.mp4"
    out = tmp_path / "out.mp4"
    result = run_cli("submit", source, "-o", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    facts = video_facts(out)
    dar = facts["sar"] * Fraction(facts["width"], facts["height"])
    assert abs(float(dar) / (4 / 3) - 1) <= 0.01
    assert facts["height"] == 960
    assert facts["fps"] == Fraction(60000, 1001)
    assert abs(facts["frames"] - 480) <= 2
    assert facts["field_order"] in (0, 1)  # progressive
    assert abs(facts["audio"] - audio_duration(source)) <= 0.1
    assert "black-and-white scene: 3.0" in result.stderr
    frames = read_frames(out)
    assert_band_rebuilt(frames, side="left", width=7 * 4)   # 7 px of the real 360
    assert_band_rebuilt(frames, side="bottom", width=5 * 4)  # 5 rows of the real 240
    # The grey scene (3-6 s) is coloured from the tape's own colour shots around it:
    # 0.3 levels of chroma left grey, 1.7 coloured.
    assert "colour from 4 frame(s) of the tape's colour shots" in result.stderr
    assert middle_colour(frames) > 1.0


def middle_colour(frames) -> float:
    """Mean |Cr|, |Cb| (8-bit levels) of frames in the middle scene, above the date stamp."""
    picked = [frames[i] for i in range(len(frames) * 7 // 16, len(frames) * 11 // 16, 20)]
    return float(np.mean([np.abs(cv2.cvtColor(f[:f.shape[0] * 4 // 5], cv2.COLOR_RGB2YCrCb)
                                 [..., 1:].astype(float) - 128).mean() for f in picked]))


def assert_band_rebuilt(frames, side: str, width: int) -> None:
    """The damaged band now looks like the picture beside it: not black, not flat."""
    sample = np.stack(frames[::40]).astype(np.float32).mean(axis=-1)
    if side == "bottom":
        sample = sample.transpose(0, 2, 1)[:, :, ::-1]
    band = sample[:, :, :width]
    beside = sample[:, :, width:2 * width]
    assert band.mean() > 0.7 * beside.mean(), (band.mean(), beside.mean())
    assert band.mean() < 1.3 * beside.mean(), (band.mean(), beside.mean())
    assert band.std(axis=1).mean() > 0.5 * beside.std(axis=1).mean()


def test_old_film_restores_to_4x_and_double_rate(shared, tmp_path):
    out = tmp_path / "film.mp4"
    result = run_cli("submit", shared / "footage" / "oldfilm_001.mp4", "-o", out)
    assert result.returncode == 0, result.stderr
    facts = video_facts(out)
    assert (facts["width"], facts["height"]) == (2312, 1360)
    assert facts["fps"] == 48
    assert abs(facts["frames"] - 48) <= 1
    assert facts["audio"] is None


@pytest.fixture(scope="module")
def small_tape(tmp_path_factory):
    path = tmp_path_factory.mktemp("tape") / "tape.mp4"
    return make_demo_tape(path, seconds=1.0, damage=TapeDamage(seed=3, grey_from=0.5, grey_to=1.0))


def test_grpc_stages_give_identical_frames(small_tape, tmp_path):
    embedded = tmp_path / "embedded.mkv"
    remote = tmp_path / "remote.mkv"
    stats = tmp_path / "stats.json"
    result = run_cli("submit", small_tape, "-o", embedded, "--codec", "ffv1", "-q",
                     "--stats", stats)
    assert result.returncode == 0, result.stderr
    assert_stats(json.loads(stats.read_text()), frames=len(read_frames(embedded)))
    with running_service("services.classical") as address:
        result = run_cli("submit", small_tape, "-o", remote, "--codec", "ffv1", "-q",
                         "--endpoint", f"all=grpc://{address}")
    assert result.returncode == 0, result.stderr
    a, b = read_frames(embedded), read_frames(remote)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def assert_stats(stats: dict, frames: int) -> None:
    """`submit --stats`: the figures bench/pipeline.py reads, consistent with the run."""
    assert stats["frames_written"] == frames
    start, stop = stats["streaming_span"]
    assert 0 < stop - start <= stats["wall_s"]
    assert 0 < stats["cpu_use"] <= os.cpu_count() + 0.5
    assert set(stats["stages"]) >= {"analog/classical", "superres/classical"}
    assert all(s["frames"] > 0 and s["busy_s"] >= 0 for s in stats["stages"].values())
    # The CPU breakdown bench/pipeline.py prints: the stages' share within the streaming
    # span's, the phases within the whole process's.
    phases = stats["cpu_phases_s"]
    assert stats["stages"]["superres/classical"]["cpu_s"] > 0
    assert 0 < phases["streaming: stages"] <= phases["streaming"] + 0.5
    assert sum(phases[k] for k in ("start-up", "probe and plan", "analysis", "streaming")) \
        <= phases["total"] + 0.5


def test_interpolation_never_blends_across_a_cut(tmp_path):
    first = [(f * 0.5).astype(np.uint8) for f in textured(10, size=(96, 64), count=12, shift=1)]
    second = [(f * 0.4 + 150).astype(np.uint8) for f in textured(11, size=(96, 64), count=12, shift=1)]
    source = write_video(tmp_path / "cut.mkv", first + second, codec="ffv1")
    out = tmp_path / "smooth.mkv"
    result = run_cli("submit", source, "-o", out, "--codec", "ffv1", "-q",
                     "--stages", "interpolate", "--native", "full")
    assert result.returncode == 0, result.stderr
    frames = read_frames(out)
    assert len(frames) == 48
    # Output frame 23 is the one after the first shot's last frame: a copy, not a blend.
    scene_a, scene_b = np.mean(first, axis=0), np.mean(second, axis=0)
    for i, frame in enumerate(frames):
        near_a = np.abs(frame.astype(np.float32) - scene_a).mean()
        near_b = np.abs(frame.astype(np.float32) - scene_b).mean()
        assert (near_a < near_b) == (i < 24), i
    np.testing.assert_allclose(frames[23].astype(np.float32), frames[22].astype(np.float32), atol=3)
