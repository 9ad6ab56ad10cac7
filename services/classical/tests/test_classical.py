"""The classical stages: streaming invariance, each task's contract, and quality against
the obvious baselines on small synthetic clips (64x48, a few frames)."""
from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np
import pytest

from services.classical.analog import AnalogStage
from services.classical.colorize import ColorizeStage
from services.classical.deblur import DeblurStage
from services.classical.deinterlace import DeinterlaceStage
from services.classical.denoise import DenoiseStage
from services.classical.interpolate import InterpolateStage
from services.classical.outpaint import OutpaintStage, detect_bands
from services.classical.stage import create_stage
from services.classical.superres import SuperresStage
from services.stagekit.parallel import frame_workers
from services.stagekit.stage import ClipInfo, StageError

W, H = 64, 48


def info(width=W, height=H, fmt="rgb24", **params) -> ClipInfo:
    return ClipInfo("clip", width, height, Fraction(30), pixel_format=fmt,
                    params={k: str(v) for k, v in params.items()})


def scene(width=W * 2, height=H * 2, seed=0) -> np.ndarray:
    """A textured colour picture, larger than a frame so that frames can pan over it."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 255, (height // 8 + 2, width // 8 + 2, 3)).astype(np.float32)
    image = cv2.resize(base, (width, height), interpolation=cv2.INTER_CUBIC)
    ys, xs = np.mgrid[0:height, 0:width]
    image += 40 * np.sin(xs / 3.0)[..., None] * np.cos(ys / 5.0)[..., None]
    return np.clip(image, 0, 255)


def panned(count, dx=1.5, dy=0.5, width=W, height=H, seed=0) -> list[np.ndarray]:
    big = scene(width + 64, height + 64, seed)
    frames = []
    for i in range(count):
        matrix = np.float32([[1, 0, 8 + dx * i], [0, 1, 8 + dy * i]])
        frames.append(cv2.warpAffine(big, matrix, (width, height),
                                     flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP))
    return [np.clip(np.rint(f), 0, 255).astype(np.uint8) for f in frames]


def psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


def run(stage, clip_info, frames):
    out_info, out = stage.run(clip_info, iter(frames))
    return out_info, list(out)


def chunked(frames, sizes):
    """The same frames, arriving as an iterator that is consumed in uneven bursts."""
    def generate():
        i = 0
        for size in sizes:
            for frame in frames[i:i + size]:
                yield frame
            i += size
            if i >= len(frames):
                return
        yield from frames[i:]
    return generate()


TEMPORAL = [
    (DeinterlaceStage, {"field_order": "tff"}),
    (AnalogStage, {}),
    (OutpaintStage, {}),
    (DenoiseStage, {}),
    (InterpolateStage, {}),
]


@pytest.mark.parametrize("stage_class,params", TEMPORAL,
                         ids=[f"{c.task}-{'-'.join(p.values()) or 'default'}"
                              for c, p in TEMPORAL])
def test_streaming_in_small_batches_gives_the_same_frames(stage_class, params):
    frames = panned(7, seed=1)
    for f in frames:
        f[:, :4] = 0   # a band for outpaint to find
    clip = info(**params)
    _, whole = run(stage_class(), clip, frames)
    for sizes in ([1] * 7, [2, 3, 2], [3, 1, 1, 2]):
        out_info, out = stage_class().run(clip, chunked(frames, sizes))
        out = list(out)
        assert len(out) == len(whole) == out_info.frame_count or out_info.frame_count is None
        for a, b in zip(out, whole):
            assert np.array_equal(a, b)


def test_streaming_is_lazy_and_bounded():
    """A long clip flows through frame by frame: the stage reads no further ahead than its
    window and the frames in flight on its worker threads."""
    read = []

    def source():
        for i, frame in enumerate(panned(40)):
            read.append(i)
            yield frame

    _, out = DenoiseStage().run(info(), source())
    next(out)
    assert len(read) <= DenoiseStage.window[1] + 1 + frame_workers()


def test_colorize_leaves_colour_frames_bit_identical_and_colours_grey_ones(tmp_path):
    colour = panned(3, seed=2)
    truth = panned(3, seed=2)[1]
    grey = np.repeat(cv2.cvtColor(truth, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    reference = tmp_path / "reference.png"
    cv2.imwrite(str(reference), cv2.cvtColor(colour[0], cv2.COLOR_RGB2BGR))
    frames = [colour[0], grey, colour[2]]
    _, out = run(ColorizeStage(), info(reference=reference), frames)
    assert np.array_equal(out[0], colour[0]) and np.array_equal(out[2], colour[2])
    chroma = np.abs(out[1].astype(int) - out[1].mean(axis=2, keepdims=True)).mean()
    assert chroma > 2.0
    assert psnr(out[1], truth) > psnr(grey, truth) + 1.0


def test_colorize_without_reference_leaves_grey_and_warns(caplog):
    grey = [np.full((H, W, 3), v, np.uint8) for v in (40, 90, 140)]
    colour = panned(1)[0]
    with caplog.at_level("WARNING", logger="restoration.classical"):
        _, out = run(ColorizeStage(), info(), [colour, *grey])
    assert all(np.array_equal(a, b) for a, b in zip(out, [colour, *grey]))
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "no reference" in warnings[0].getMessage()


def test_interpolation_never_blends_past_the_clip_end():
    frames = panned(3)
    cut = np.full((H, W, 3), 255, np.uint8)   # the next shot: never given to this clip
    out_info, out = run(InterpolateStage(), info(factor=3), frames)
    assert len(out) == out_info.frame_count or out_info.frame_count is None
    assert len(out) == 9 and out_info.fps == 90
    assert all(np.array_equal(out[3 * i], frames[i]) for i in range(3))
    for tail in out[-3:]:
        assert np.array_equal(tail, frames[-1])
        assert not np.array_equal(tail, cut)


def test_interpolated_midpoint_beats_blending():
    frames = panned(5, dx=2.0, dy=1.0)
    _, out = run(InterpolateStage(), info(), frames[::2])
    blend = (frames[0].astype(np.float32) + frames[2]) / 2
    assert psnr(out[1][8:-8, 8:-8], frames[1][8:-8, 8:-8]) > psnr(blend, frames[1])[()] + 3


def test_interpolation_follows_fast_motion():
    """A quarter of the frame between the input frames, more than DIS finds from zero:
    a pan, and a textured block crossing a still background (with the background it
    covers and uncovers, which only one of the two frames shows)."""
    frames = panned(3, dx=8.0, dy=1.0)
    _, out = run(InterpolateStage(), info(), frames[::2])
    assert psnr(out[1][10:-10, 10:-10], frames[1][10:-10, 10:-10]) > 40
    background, block = scene(W, H, seed=1), scene(24, 20, seed=2)
    frames = []
    for x in (4, 12, 20):
        frame = background.copy()
        frame[14:34, x:x + 24] = block
        frames.append(np.clip(np.rint(frame), 0, 255).astype(np.uint8))
    _, out = run(InterpolateStage(), info(), frames[::2])
    blend = (frames[0].astype(np.float32) + frames[2]) / 2
    assert psnr(out[1], frames[1]) > psnr(blend, frames[1]) + 5


def interlace(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    frame = top.copy()
    frame[1::2] = bottom[1::2]
    return frame


@pytest.mark.parametrize("order", ["tff", "bff"])
def test_deinterlace_separates_fields_at_their_true_positions(order):
    progressive = panned(8, dx=1.0, dy=0.0)
    first, second = (progressive[0::2], progressive[1::2])
    frames = [interlace(a, b) if order == "tff" else interlace(b, a)
              for a, b in zip(first, second)]
    out_info, out = run(DeinterlaceStage(), info(field_order=order), frames)
    assert len(out) == 8 and out_info.fps == 60 and out_info.frame_count is None
    for i, frame in enumerate(out):
        own = 0 if (i % 2 == 0) == (order == "tff") else 1
        assert np.array_equal(frame[own::2], progressive[i][own::2])
        # The other field's rows are rebuilt close to the truth of this field's time.
        assert psnr(frame[8:-8], progressive[i][8:-8]) > 30


def test_analog_working_size_and_impulses():
    frames = panned(5, dx=1.0, dy=0.0)
    dirty = [f.copy() for f in frames]
    dirty[2][20:24, 30:34] = 255          # a dropout in one frame
    out_info, out = run(AnalogStage(), info(size="32x24"), dirty)
    assert (out_info.width, out_info.height) == (32, 24) and out[0].shape == (24, 32, 3)
    _, cleaned = run(AnalogStage(), info(), dirty)
    region = (slice(18, 26), slice(28, 36))
    assert psnr(cleaned[2][region], frames[2][region]) > psnr(dirty[2][region],
                                                            frames[2][region]) + 6


def test_outpaint_finds_and_rebuilds_black_left_and_pale_bottom_bands():
    truth = panned(10, dx=2.0, dy=-1.0)
    damaged = []
    for f in truth:
        g = f.copy()
        g[:, :4] = 3
        g[-3:] = (0.3 * g[-3:] + 170).astype(np.uint8)
        damaged.append(g)
    _, out = run(OutpaintStage(), info(), damaged)
    band = np.zeros((H, W), bool)
    band[:, :4] = True
    band[-3:] = True
    telea = [cv2.inpaint(d, band.astype(np.uint8), 5, cv2.INPAINT_TELEA) for d in damaged]
    for o, d in zip(out, damaged):
        assert np.array_equal(o[~band], d[~band])

    def mean_psnr(frames):
        # From the fourth frame on, the picture has moved far enough to show what the
        # bands hide in the frames around.
        return np.mean([psnr(f[band], t[band]) for f, t in zip(frames[3:], truth[3:])])

    assert mean_psnr(out) > mean_psnr(damaged) + 10
    assert mean_psnr(out) > mean_psnr(telea) + 3


def test_outpaint_band_includes_the_half_dark_line_a_resampled_capture_leaves():
    """A 7-pixel black band of a 720-wide capture is 3.5 pixels at the real 360: the
    fourth column is half band, half picture. On a mostly dark picture it makes no strong
    step, yet it must be rebuilt too, or the fill carries its darkness inward."""
    rng = np.random.default_rng(5)
    picture = np.full((120, 360, 3), 25, np.uint8)               # a dark background
    picture[:30] = 180                                           # a lit band across it
    picture = np.clip(picture + rng.normal(0, 3, picture.shape), 0, 255).astype(np.uint8)
    capture = cv2.resize(picture, (720, 240), interpolation=cv2.INTER_NEAREST)
    capture[:, :7] = 8
    frame = cv2.resize(capture, (360, 120), interpolation=cv2.INTER_AREA)
    assert detect_bands([frame] * 4).left == 4


def test_outpaint_leaves_a_clean_clip_alone():
    frames = panned(6)
    _, out = run(OutpaintStage(), info(), frames)
    assert all(np.array_equal(a, b) for a, b in zip(out, frames))


def test_denoise_raises_psnr_on_a_moving_pattern():
    truth = panned(6, dx=1.0, dy=0.5)
    rng = np.random.default_rng(3)
    noisy = [np.clip(f + rng.normal(0, 12, f.shape), 0, 255).astype(np.uint8) for f in truth]
    _, out = run(DenoiseStage(), info(), noisy)
    before = np.mean([psnr(n, t) for n, t in zip(noisy, truth)])
    after = np.mean([psnr(o, t) for o, t in zip(out, truth)])
    assert after > before + 3


def test_deblur_sharpens_a_blurred_pattern():
    truth = panned(2)
    blurred = [cv2.GaussianBlur(f, (0, 0), 1.2) for f in truth]
    _, out = run(DeblurStage(), info(sigma=1.2), blurred)
    assert psnr(out[0], truth[0]) > psnr(blurred[0], truth[0]) + 1


def test_superres_beats_lanczos_on_an_area_downscaled_image():
    truth = panned(1, width=W * 4, height=H * 4)[0]
    small = cv2.resize(truth, (W, H), interpolation=cv2.INTER_AREA)
    out_info, out = run(SuperresStage(), info(), [small])
    assert (out_info.width, out_info.height) == (W * 4, H * 4)
    lanczos = cv2.resize(small, (W * 4, H * 4), interpolation=cv2.INTER_LANCZOS4)
    assert psnr(out[0], truth) > psnr(lanczos, truth) + 0.3


def test_float16_frames_come_back_as_float16():
    frames = [(f / 255.0).astype(np.float16) for f in panned(3)]
    for stage in create_stage():
        out_info, out = run(stage, info(fmt="rgbf16"), frames)
        assert out and all(f.dtype == np.float16 and f.shape == (out_info.height,
                                                                  out_info.width, 3)
                           for f in out), stage.task


@pytest.mark.parametrize("stage_class,params,needle", [
    (DeinterlaceStage, {"field_order": "upper"}, "field_order"),
    (DeinterlaceStage, {"size": "360"}, "size"),
    (AnalogStage, {"field_order": "tff"}, "unknown"),   # deinterlacing is not its job
    (AnalogStage, {"size": "360"}, "size"),
    (AnalogStage, {"sharpen": "yes"}, "unknown"),
    (OutpaintStage, {"bands": "left=four"}, "bands"),
    (OutpaintStage, {"bands": "left=64"}, "bands"),
    (ColorizeStage, {"reference": "/nonexistent/ref.png"}, "does not exist"),
    (DeblurStage, {"strength": "-1"}, "strength"),
    (DenoiseStage, {"strength": "lots"}, "strength"),
    (SuperresStage, {"scale": "3"}, "scale"),
    (SuperresStage, {"zoom": "2"}, "unknown"),
    (InterpolateStage, {"factor": "0"}, "factor"),
    (InterpolateStage, {"factor": "2.5"}, "factor"),
])
def test_invalid_params_are_stage_errors(stage_class, params, needle):
    with pytest.raises(StageError, match=needle):
        stage_class().run(info(**params), iter(panned(1)))


def test_every_task_is_served_once():
    stages = create_stage()
    assert sorted(s.task for s in stages) == sorted(
        ("deinterlace", "analog", "outpaint", "colorize", "deblur", "denoise", "superres",
         "interpolate"))
    assert all(s.model == "classical" for s in stages)
    with pytest.raises(StageError):
        create_stage(device="cuda")


def test_served_stages_match_in_process_and_reject_bad_params():
    from services.stagekit.client import StageClient
    from services.stagekit.testing import running_service
    frames = panned(4)
    with running_service("services.classical") as address, StageClient(address) as client:
        assert sorted(d["task"] for d in client.describe()) == sorted(
            s.task for s in create_stage())
        clip = info(factor=2)
        out_info, out = client.process(clip, frames, batch=3, task="interpolate")
        _, local = run(InterpolateStage(), clip, frames)
        assert out_info.fps == 60 and len(list(out)) == len(local)
        _, served = client.process(info(), frames, batch=1, task="denoise")
        _, local = run(DenoiseStage(), info(), frames)
        assert all(np.array_equal(a, b) for a, b in zip(served, local))
        with pytest.raises(StageError, match="field_order"):
            _, out = client.process(info(field_order="upper"), frames, task="deinterlace")
            list(out)
        _, out = client.process(info(), frames, task="superres")
        assert len(list(out)) == 4     # still serving after the bad request
