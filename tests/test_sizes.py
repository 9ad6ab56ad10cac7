"""The output-size policy (--scale, --max-height), the refusal of jobs that cannot fit, and
tiled stages against untiled ones."""
from __future__ import annotations

import threading
from fractions import Fraction

import cv2
import numpy as np
import pytest

from orchestrator import cli, media
from orchestrator.errors import UserError
from orchestrator.pipeline import memory, registry, sizing
from orchestrator.pipeline import specs as pipeline
from orchestrator.pipeline.plan import make_plan
from orchestrator.pipeline.runner import Cancelled, Channel, Job
from services.classical.superres import SuperresStage
from services.stagekit import ClipInfo, Stage
from services.stagekit.tiling import tiled

from .helpers import read_frames, run_cli, textured, write_video


@pytest.mark.parametrize("lines,max_height,factor", [
    (240, 2160, 4),      # a VHS tape: 960 lines
    (480, 2160, 4),      # DVD: 1920 lines
    (540, 2160, 4),      # exactly 2160
    (720, 2160, 2),      # HD 720: 4x would be 2880
    (1080, 2160, 1),     # full HD: none by default, whatever the height allows
    (2160, 4320, 1),
    (240, 500, 2),
    (300, 500, 1),
])
def test_auto_takes_the_largest_factor_within_the_maximum(lines, max_height, factor):
    sized = sizing.decide((lines * 16 // 9, lines), "auto", max_height, "classical")
    assert sized.factor == factor and sized.output[1] <= max_height
    assert sized.reason


def test_a_fixed_4x_model_runs_at_4x_then_is_resized_down():
    sized = sizing.decide((1280, 720), "auto", 2160, "psrt")
    assert (sized.factor, sized.model_factor) == (2, 4)
    assert "resized down to 2x" in sized.describe()
    classical = sizing.decide((1280, 720), "auto", 2160, "classical")
    assert (classical.factor, classical.model_factor) == (2, 2)


def test_a_real_resolution_taller_than_the_maximum_is_restored_within_it():
    sized = sizing.decide((3840, 2160), "auto", 1080, "classical")
    assert (sized.working, sized.factor) == ((1920, 1080), 1)


@pytest.mark.parametrize("scale,max_height,needle", [
    ("4", 2160, "--max-height 2160"),   # 4x of 2160 lines
    ("2", 4000, "--scale"),
    ("3", 2160, "expected auto, 1, 2 or 4"),
    ("auto", 8, "--max-height 8"),
])
def test_impossible_sizes_are_refused_with_what_to_change(scale, max_height, needle):
    with pytest.raises(UserError, match=needle) as caught:
        sizing.decide((3840, 2160), scale, max_height, "classical")
    assert "\n" not in str(caught.value)


def test_an_explicit_factor_needs_a_superres_stage():
    with pytest.raises(UserError, match="no superres stage"):
        sizing.decide((360, 240), "2", 2160, None)


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("sizes") / "small.mp4",
                       textured(5, size=(64, 48), count=4), fps=Fraction(25))


@pytest.mark.parametrize("flags,size", [
    (["--scale", "1"], (64, 48)),
    (["--scale", "2"], (128, 96)),
    (["--scale", "4"], (256, 192)),
    (["--max-height", "100"], (128, 96)),       # auto: 4x would be 192 lines
    (["--max-height", "40"], (54, 40)),         # taller than the maximum: restored within it
])
def test_submit_honours_scale_and_max_height(small_clip, tmp_path, flags, size):
    out = tmp_path / "out.mp4"
    done = run_cli("submit", small_clip, "-o", out, "--stages", "superres", "--native", "full",
                   "-q", *flags, timeout=120)
    assert done.returncode == 0, done.stderr
    assert read_frames(out)[0].shape[1::-1] == size


def test_an_impossible_request_is_refused_before_any_work(small_clip, tmp_path):
    out = tmp_path / "out.mp4"
    done = run_cli("submit", small_clip, "-o", out, "--stages", "superres", "--native", "full",
                   "--scale", "4", "--max-height", "100", timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: --scale 4 makes 256x192 from the real resolution 64x48, above --max-height "
        "100: use a smaller --scale or a larger --max-height"]
    assert not out.exists() and not list(tmp_path.iterdir())


def test_a_job_too_large_for_memory_is_refused_in_one_line(small_clip, tmp_path, monkeypatch,
                                                           capsys):
    monkeypatch.setattr(memory, "available", lambda: 1 << 20)
    out = tmp_path / "out.mp4"
    code = cli.main(["submit", str(small_clip), "-o", str(out), "--native", "full", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith("error: this job needs about") and "--scale or --max-height" in err[0]
    assert not list(tmp_path.iterdir())


def test_inspect_states_the_factor_and_why(small_clip):
    done = run_cli("inspect", small_clip, "--native", "full", "--max-height", "100", timeout=120)
    assert done.returncode == 0, done.stderr
    assert ("output 128x96: super-resolution 2x; the largest factor within --max-height 100 "
            "from 48 real lines") in done.stdout
    assert "memory: about" in done.stdout


def test_the_estimate_grows_with_frame_area_not_length():
    def plan(width, height, seconds):
        source = media.SourceInfo(
            path=None, width=width, height=height, fps=Fraction(25), sar=Fraction(1),
            field_order="progressive", rotation=0, frame_count=int(25 * seconds),
            duration=seconds, start_time=0.0, pix_fmt="yuv420p", variable_rate=False,
            audio_codec=None, audio_duration=None)
        return make_plan(source, pipeline.build(), native=f"{width}x{height}", refuse=False)
    small, large = plan(960, 540, 2), plan(1920, 1080, 2)
    assert memory.estimate(plan(960, 540, 3600)) == memory.estimate(small)
    assert small.sizing.factor == 4 and large.sizing.factor == 1
    # 4x of 540 lines makes a frame 4x the area of 1080 lines: it holds more
    assert memory.estimate(small) > memory.estimate(large)
    base = memory.BASE_BYTES
    assert memory.estimate(plan(3840, 2160, 2)) - base <= 4.2 * (memory.estimate(large) - base)


def test_queues_are_bounded_in_bytes():
    """Large frames: fewer of them wait between two stages, and one always passes."""
    assert memory.queue_frames(100) == memory.QUEUE_FRAMES
    assert memory.queue_frames(3840 * 2160 * 3) == 4
    assert memory.queue_frames(1 << 40) == 1
    cancel = threading.Event()
    channel = Channel(cancel, size=8, max_bytes=3000)
    for _ in range(3):
        channel.put(("frame", np.zeros(1000, np.uint8)))
    threading.Timer(0.3, cancel.set).start()
    with pytest.raises(Cancelled):      # the fourth frame would pass 3000 bytes: it waits
        channel.put(("frame", np.zeros(1000, np.uint8)))
    cancel.clear()
    channel.put(("end", None))          # markers cost nothing
    assert [channel.get()[0] for _ in range(4)] == ["frame"] * 3 + ["end"]
    channel.put(("frame", np.zeros(10_000, np.uint8)))   # larger than the bound, alone
    assert channel.get()[1].nbytes == 10_000


@pytest.mark.parametrize("scale", ["2", "4"])
def test_tiled_superres_gives_the_whole_frame_result(scale):
    frame = textured(3, size=(150, 110), count=1)[0]
    info = ClipInfo("c", 150, 110, Fraction(25))
    whole = SuperresStage().run(info.replace(params={"scale": scale, "tile": "0"}), iter([frame]))
    parts = SuperresStage().run(info.replace(params={"scale": scale, "tile": "48"}), iter([frame]))
    a, b = next(whole[1]), next(parts[1])
    assert a.shape == (110 * int(scale), 150 * int(scale), 3)
    # every output pixel reaches at most TILE_MARGIN input pixels: equal to float rounding
    assert np.abs(a.astype(int) - b).max() <= 1


def test_tiles_cover_the_frame_once():
    image = np.arange(7 * 11, dtype=np.float32).reshape(7, 11)
    assert np.array_equal(tiled(lambda x: x * 2, image, tile=3, margin=1), image * 2)
    up = tiled(lambda x: x.repeat(2, 0).repeat(2, 1), image, tile=4, margin=0, factor=2)
    assert np.array_equal(up, image.repeat(2, 0).repeat(2, 1))


class FixedFour(Stage):
    """A stand-in for a model that only makes 4x (PSRT, DiffBIR)."""

    task, model, scale = "superres", "psrt", 4

    def process(self, info, frames):
        for frame in frames:
            yield cv2.resize(frame, (info.width * 4, info.height * 4),
                             interpolation=cv2.INTER_LANCZOS4)


def test_a_fixed_4x_model_is_resized_down_to_the_chosen_factor(small_clip, tmp_path,
                                                                monkeypatch):
    monkeypatch.setattr(registry, "create_local",
                        lambda task, model, device="auto", precision=None: FixedFour())
    source = media.probe(small_clip)
    plan = make_plan(source, pipeline.build(stages="superres", models=["superres=psrt"]),
                     native="full", scale="2")
    assert "the model makes 4x, resized down to 2x" in plan.lines()[1]
    out = Job(plan, media.OutputSpec(tmp_path / "out.mkv", "ffv1"), show_progress=False).run()
    assert read_frames(out)[0].shape[:2] == (96, 128)
