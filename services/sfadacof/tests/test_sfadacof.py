"""SF-AdaCoF: parity with the authors' outputs, strict weights, streaming, the real service."""
from __future__ import annotations

import io
import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from services.sfadacof import MODEL, TASK
from services.sfadacof.network import adacof, build_network, load_arch
from services.sfadacof.parity import run_case
from services.stagekit.parity import uint8_pm1
from services.sfadacof.stage import SfAdaCoFStage, create_stage, to_frames
from services.stagekit import parity
from services.stagekit.stage import ClipInfo, StageError
from services.stagekit.testing import damaged, parity_dir, running_service
from services.stagekit.weights import WeightsError, load_checkpoint, sha256_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURES = parity_dir(MODEL)
CONFIG = FIXTURES / "config.json"
TINY_STATE = FIXTURES / "tiny_state.safetensors"

needs_fixtures = pytest.mark.skipif(not CONFIG.is_file(), reason=f"no fixtures in {FIXTURES}")


def tiny_stage(**kwargs) -> SfAdaCoFStage:
    return create_stage(TINY_STATE, "cpu", CONFIG, **kwargs)


def pipeline_frames() -> np.ndarray:
    return parity.load_arrays(FIXTURES, "tiny_pipeline_case.npz")["frames_in"]


def clip(frames, factor: int = 2, fps=Fraction(30000, 1001), start: float = 0.0, fmt="rgb24"):
    height, width = frames[0].shape[:2]
    return ClipInfo("clip", width=width, height=height, fps=fps, pixel_format=fmt,
                    params={"factor": str(factor)}, frame_count=len(frames), start_time=start)


def interpolate(stage, frames, factor: int = 2) -> np.ndarray:
    _, out = stage.run(clip(frames, factor), iter(frames))
    return np.stack(list(out))


def random_tiny(seed: int, base_channels: int = 3):
    """A tiny network with non-trivial offsets (both signs, several px), like the fixtures'."""
    torch.manual_seed(seed)
    network = build_network(base_channels=base_channels)
    with torch.no_grad():
        for name, value in network.named_parameters():
            if value.dim() > 1:
                value.normal_(0, 1.414 / math.sqrt(value[0].numel()))
            else:
                offset_bias = name.endswith(".7.bias") and ("Alpha" in name or "Beta" in name)
                value.normal_(0, 0.5 if offset_bias else 0.05)
    return network.eval()


# --- (1) parity --------------------------------------------------------------------------

@needs_fixtures
def test_parity_command_passes_on_the_shared_fixtures():
    printed = io.StringIO()
    assert parity.run(FIXTURES, run_case, out=printed) == 0, printed.getvalue()


@needs_fixtures
def test_intermediates_and_their_extra_limits_match_the_authors():
    config = parity.load_config(FIXTURES)
    case = next(c for c in config["cases"] if c["kind"] == "forward")
    arrays = parity.load_arrays(FIXTURES, case["file"])
    produced = run_case(config, case, arrays)
    for name, spec in {**case["outputs"], **case["debug"]}.items():
        for check in [spec, *spec.get("also", [])]:
            value = parity.METRICS[check["metric"]](produced[name], arrays[name])
            assert value <= check["tol"], (name, check["metric"], value)


def scalar_adacof(frame, weight, off_i, off_j, dilation):
    """The README's formula, one pixel and tap at a time (C casts truncate toward zero)."""
    _, channels, h_in, w_in = frame.shape
    _, taps, height, width = weight.shape
    size = math.isqrt(taps)
    out = np.zeros((1, channels, height, width), np.float32)
    for c in range(channels):
        for i in range(height):
            for j in range(width):
                for t in range(taps):
                    k, l = divmod(t, size)
                    alpha, beta = off_i[0, t, i, j], off_j[0, t, i, j]
                    a, b = int(alpha), int(beta)
                    fa, fb = alpha - a, beta - b
                    r0, r1 = (min(max(i + k * dilation + a + d, 0), h_in - 1) for d in (0, 1))
                    c0, c1 = (min(max(j + l * dilation + b + d, 0), w_in - 1) for d in (0, 1))
                    p = frame[0, c]
                    out[0, c, i, j] += weight[0, t, i, j] * (
                        p[r0, c0] * (1 - fa) * (1 - fb) + p[r1, c0] * fa * (1 - fb)
                        + p[r0, c1] * (1 - fa) * fb + p[r1, c1] * fa * fb)
    return out


@pytest.mark.parametrize("size, dilation, height, width", [(5, 1, 7, 6), (3, 2, 5, 9), (7, 1, 4, 5)])
def test_adacof_op_holds_for_other_seeds_sizes_and_kernels(size, dilation, height, width):
    rng = np.random.default_rng(size * 10 + dilation)
    pad = (size - 1) * dilation
    frame = rng.random((1, 3, height + pad, width + pad), dtype=np.float32)
    logits = rng.normal(size=(1, size * size, height, width)).astype(np.float32)
    weight = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    off_i = (rng.normal(size=weight.shape) * 3).astype(np.float32)
    off_j = (rng.normal(size=weight.shape) * 3).astype(np.float32)
    off_i[0, :3, 0, 0] = [-0.4, -2.0, 9.5]   # fractional negative, exact integer, far out
    ours = adacof(*map(torch.from_numpy, (frame, weight, off_i, off_j)), dilation).numpy()
    theirs = scalar_adacof(frame, weight, off_i, off_j, dilation)
    assert parity.rel_l2(ours, theirs) <= 1e-6


def test_stage_matches_the_plain_forward_for_another_seed_and_odd_size():
    network = random_tiny(seed=7)
    frames = np.random.default_rng(7).integers(0, 256, (5, 37, 45, 3), dtype=np.uint8)
    stage = SfAdaCoFStage(network, "cpu")
    pairs = [torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255 for f in frames]
    with torch.inference_mode():
        mids = [network(a, b) for a, b in zip(pairs, pairs[1:])]
        q1 = [network(a, m) for a, m in zip(pairs, mids)]
        q3 = [network(m, b) for m, b in zip(mids, pairs[1:])]
    for factor, made in ((2, [mids]), (4, [q1, mids, q3])):
        expected = []
        for k, frame in enumerate(frames[:-1]):
            expected += [frame] + [to_frames(m[k], np.uint8)[0] for m in made]
        expected += [frames[-1]] * factor
        assert uint8_pm1(interpolate(stage, frames, factor), np.stack(expected)) <= 1e-3


def test_float32_network_is_stable_against_float64_on_another_size():
    network = random_tiny(seed=11)
    rng = torch.Generator().manual_seed(11)
    frame0, frame2 = torch.rand(2, 3, 33, 70, generator=rng), torch.rand(2, 3, 33, 70, generator=rng)
    with torch.inference_mode():
        single = network(frame0, frame2)
        double = network.double()(frame0.double(), frame2.double())
    assert single.shape == (2, 3, 33, 70)
    assert parity.rel_l2(single, double) <= 1e-5


# --- (2) weights -------------------------------------------------------------------------

def official_state(seed: int = 0) -> dict:
    keys = json.loads((FIXTURES / "official_keys.json").read_text())["params"]
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen) * 0.01 for name, shape in keys.items()}


def save_authors_file(state: dict, path) -> None:
    torch.save({"epoch": 60, "state_dict": state}, path)


@needs_fixtures
def test_official_layout_loads_strictly_as_the_authors_ship_it(tmp_path):
    state = official_state()
    save_authors_file(state, tmp_path / "model60.pth")
    stage = create_stage(tmp_path, "cpu")   # a folder: the manifest's file name inside it
    assert sum(v.numel() for v in stage.network.state_dict().values()) == 8_585_590
    loaded = stage.network.state_dict()
    assert all(torch.equal(loaded[name], value) for name, value in state.items())
    assert stage.weights_identity() == sha256_file(tmp_path / "model60.pth")


@needs_fixtures
@pytest.mark.parametrize("damage, named", [
    ("missing", "get_kernel.moduleOcclusion.7.bias"),
    ("extra", "get_kernel.moduleExtra.weight"),
    ("misshaped", "get_kernel.moduleAlpha2.4.weight"),
])
def test_a_bad_key_fails_naming_it(tmp_path, damage, named):
    state = damaged(dict(load_checkpoint(TINY_STATE)), damage, named)
    save_authors_file(state, tmp_path / "model60.pth")
    with pytest.raises(WeightsError, match=named.replace(".", r"\.")):
        create_stage(tmp_path / "model60.pth", "cpu", CONFIG)


@needs_fixtures
def test_a_bare_state_dict_in_a_pth_is_not_the_authors_file(tmp_path):
    torch.save(dict(load_checkpoint(TINY_STATE)), tmp_path / "model60.pth")
    with pytest.raises(WeightsError, match="state_dict"):
        create_stage(tmp_path / "model60.pth", "cpu", CONFIG)


def test_official_kwargs_are_the_default():
    assert load_arch(None) == {"kernel_size": 5, "dilation": 1}


# --- (3) the stage -----------------------------------------------------------------------

@needs_fixtures
def test_every_input_frame_is_kept_in_place_and_timestamps_are_exact():
    stage, frames = tiny_stage(), pipeline_frames()
    for factor in (2, 4):
        info = clip(frames, factor, fps=Fraction(30000, 1001), start=12.5)
        out_info, out = stage.run(info, iter(frames))
        out = np.stack(list(out))
        assert len(out) == factor * len(frames) == out_info.frame_count
        assert out_info.fps == info.fps * factor and out_info.start_time == info.start_time
        for k, frame in enumerate(frames):
            # Output n sits at start + n / (fps * factor): input k lands on n = factor * k.
            assert Fraction(factor * k) / out_info.fps == Fraction(k) / info.fps
            assert np.array_equal(out[factor * k], frame)
        assert all(np.array_equal(f, frames[-1]) for f in out[-factor:])


@needs_fixtures
def test_small_and_large_batches_give_the_same_frames():
    frames = np.concatenate([pipeline_frames()] * 3)
    small, large = tiny_stage(), tiny_stage()
    small.max_batch, large.max_batch = 1, 8
    one_by_one = interpolate(small, frames)
    assert uint8_pm1(one_by_one, interpolate(large, frames)) <= 1e-3
    # However the clip arrives, the batches the network sees are the same.
    arrivals = (f for f in list(frames))
    assert np.array_equal(interpolate(small, list(arrivals)), one_by_one)


@needs_fixtures
@pytest.mark.parametrize("count", [0, 1, 2])
def test_clips_shorter_than_the_window(count):
    frames = pipeline_frames()[:count]
    stage = tiny_stage()
    info = clip(pipeline_frames(), 2)
    out = list(stage.run(info.replace(frame_count=count), iter(frames))[1])
    assert len(out) == 2 * count
    assert all(np.array_equal(out[2 * k], f) for k, f in enumerate(frames))


@needs_fixtures
def test_streams_with_memory_bounded_by_the_batch():
    frames = np.concatenate([pipeline_frames()] * 4)
    stage = tiny_stage()
    pulled = 0

    def source():
        nonlocal pulled
        for frame in frames:
            pulled += 1
            yield frame

    for n, _ in enumerate(stage.run(clip(frames), source())[1]):
        assert pulled - n // 2 <= stage.max_batch + 1
    assert pulled == len(frames)


@needs_fixtures
def test_float16_frames_in_float16_frames_out():
    frames = (pipeline_frames()[:3] / 255).astype(np.float16)
    out = list(tiny_stage().run(clip(frames, fmt="rgbf16"), iter(frames))[1])
    assert len(out) == 6 and all(f.dtype == np.float16 for f in out)
    assert 0 <= min(f.min() for f in out) and max(f.max() for f in out) <= 1


@needs_fixtures
@pytest.mark.parametrize("change, message", [
    ({"width": 16}, "at least 17x17"), ({"params": {"factor": "3"}}, "factor")])
def test_bad_clips_are_refused(change, message):
    info = clip(pipeline_frames()).replace(**change)
    with pytest.raises(StageError, match=message):
        tiny_stage().validate(info)


@needs_fixtures
def test_describe_tells_task_window_and_factor():
    described = tiny_stage().describe()
    assert (described["task"], described["model"]) == (TASK, MODEL)
    assert (described["window_past"], described["window_future"], described["fps_factor"]) == (0, 1, 2)
    assert described["weights"] == sha256_file(TINY_STATE)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@needs_fixtures
def test_half_precision_on_cuda_holds_quality():
    frames = np.concatenate([pipeline_frames()] * 2)
    full = interpolate(create_stage(TINY_STATE, "cuda", CONFIG, half=False), frames)
    half = interpolate(create_stage(TINY_STATE, "cuda", CONFIG, half=True), frames)
    cpu = interpolate(tiny_stage(), frames)
    # CUDA's float32 convolutions may use TF32 (PyTorch's default), so compare by PSNR.
    assert psnr(full, cpu) >= 45
    assert psnr(half, full) >= 40


def psnr(ours: np.ndarray, reference: np.ndarray) -> float:
    mse = np.mean((ours.astype(np.float64) - reference) ** 2)
    return float(10 * np.log10(255 ** 2 / max(mse, 1e-12)))


# --- (4) the real service ----------------------------------------------------------------

@needs_fixtures
def test_service_streams_the_pipeline_clip_like_the_authors():
    from services.stagekit.client import StageClient
    arrays = parity.load_arrays(FIXTURES, "tiny_pipeline_case.npz")
    frames = arrays["frames_in"]
    with running_service("services.sfadacof", "--weights", str(TINY_STATE),
                         "--arch", str(CONFIG), "--device", "cpu",
                         env={"OMP_NUM_THREADS": "1"}) as address:
        with StageClient(address, timeout=120) as client:
            described = client.describe()[0]
            assert (described["task"], described["fps_factor"]) == (TASK, 2)
            assert described["weights"] == sha256_file(TINY_STATE)
            for factor, reference in ((2, arrays["out_repeat1"]), (4, arrays["out_repeat2"])):
                info = clip(frames, factor)
                out_info, out = client.process(info, iter(frames), batch=1)
                out = np.stack(list(out))
                assert out_info.fps == info.fps * factor and len(out) == factor * len(frames)
                assert uint8_pm1(out[:len(reference)], reference) <= 1e-3
                assert all(np.array_equal(f, frames[-1]) for f in out[len(reference):])
            with pytest.raises(StageError, match="at least"):
                tiny = np.zeros((2, 8, 8, 3), np.uint8)
                list(client.process(clip(tiny), iter(tiny))[1])
            assert client.describe()[0]["model"] == MODEL   # still serving
