"""DiffBIR stage 1: parity with the authors' outputs, strict weights, streaming, the service."""
from __future__ import annotations

import io
import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from services.diffbir import MODEL, TASK
from services.diffbir.network import (OFFICIAL_KWARGS, SwinTransformerBlock, build_swinir,
                                      load_arch, shift_mask)
from services.diffbir.parity import run_case
from services.diffbir.pipeline import gaussian_weights, sliding_windows, tiled
from services.diffbir.stage import DiffBIRStage, Settings, create_stage
from services.stagekit import parity
from services.stagekit.parity import rel_l2, uint8_pm1
from services.stagekit.stage import ClipInfo, StageError
from services.stagekit.testing import check_cpu_precisions, parity_dir, running_service
from services.stagekit.weights import WeightsError, load_checkpoint, sha256_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURES = parity_dir(MODEL)
CONFIG = FIXTURES / "config.json"
TINY_STATE = FIXTURES / "tiny_state.safetensors"
TINY_KWARGS = {"img_size": 16, "patch_size": 1, "in_chans": 3, "embed_dim": 12,
               "depths": [2], "num_heads": [2], "window_size": 8, "mlp_ratio": 2, "sf": 8,
               "img_range": 1.0, "upsampler": "nearest+conv", "resi_connection": "1conv",
               "unshuffle": True, "unshuffle_scale": 8}

needs_fixtures = pytest.mark.skipif(not CONFIG.is_file(), reason=f"no fixtures in {FIXTURES}")


def tiny_stage(device: str = "cpu", **kwargs) -> DiffBIRStage:
    return create_stage(TINY_STATE, device, CONFIG, **kwargs)


def pipeline_arrays() -> dict:
    return parity.load_arrays(FIXTURES, "tiny_pipeline_case.npz")


def clip(frames, fmt: str = "rgb24", **params) -> ClipInfo:
    height, width = frames[0].shape[:2]
    return ClipInfo("clip", width=width, height=height, fps=Fraction(30000, 1001),
                    pixel_format=fmt, params={k: str(v) for k, v in params.items()},
                    frame_count=len(frames))


def upscale(stage, frames, fmt: str = "rgb24", **params) -> np.ndarray:
    _, out = stage.run(clip(frames, fmt, **params), iter(frames))
    return np.stack(list(out))


def random_tiny(seed: int, **changes) -> torch.nn.Module:
    """A tiny SwinIR with weights like the fixtures' (so attention and shifts matter)."""
    torch.manual_seed(seed)
    network = build_swinir(**{**TINY_KWARGS, **changes})
    with torch.no_grad():
        for name, value in network.named_parameters():
            if name.endswith("relative_position_bias_table"):
                value.normal_(0, 1.0)
            elif value.dim() > 1:
                value.normal_(0, 1 / math.sqrt(value[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                value.normal_(1, 0.1)
            else:
                value.normal_(0, 0.02)
    return network.eval()


# --- (1) parity --------------------------------------------------------------------------

@needs_fixtures
def test_parity_command_passes_on_the_shared_fixtures():
    printed = io.StringIO()
    assert parity.run(FIXTURES, run_case, out=printed) == 0, printed.getvalue()


@needs_fixtures
@pytest.mark.parametrize("prefix, settings", [
    ("", Settings()), ("tiled_", Settings(tiled=True, tile_size=64, tile_stride=32))])
def test_cleaner_output_matches_the_authors(prefix, settings):
    arrays = pipeline_arrays()
    x = torch.from_numpy(arrays[f"{prefix}upscaled_uint8"]).float().div(255).permute(0, 3, 1, 2)
    cleaned = tiny_stage().clean(x.contiguous(), settings)
    assert rel_l2(cleaned[..., ::8, ::8], arrays[f"{prefix}cleaner_out_sub8"]) <= 1e-5


def wrapped_pairs(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """The shift mask from its meaning: two tokens of one rolled window are kept apart
    when the roll wrapped one of them round the image and not the other, i.e. when their
    distance before the roll is not their distance after it."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")

    def windows(values: torch.Tensor) -> torch.Tensor:
        v = values.view(h // window, window, w // window, window).permute(0, 2, 1, 3)
        return v.reshape(-1, window * window)

    def apart(values: torch.Tensor) -> torch.Tensor:
        return values[:, :, None] - values[:, None, :]

    wrapped = torch.zeros(h * w // window ** 2, window ** 2, window ** 2, dtype=torch.bool)
    for axis in (rows, cols):
        before = windows(torch.roll(axis, (-shift, -shift), (0, 1)))
        wrapped |= apart(before) != apart(windows(axis))
    return wrapped


@needs_fixtures
@pytest.mark.parametrize("h, w", [(16, 16), (16, 24), (40, 8), (8, 8)])
def test_shift_mask_at_other_sizes(h, w):
    expected = torch.where(wrapped_pairs(h, w, 8, 4), -100.0, 0.0)
    assert torch.equal(shift_mask(h, w, 8, 4), expected)
    stored = load_checkpoint(TINY_STATE)["layers.0.residual_group.blocks.1.attn_mask"]
    assert torch.equal(shift_mask(16, 16, 8, 4), stored)


def reference_block(block: SwinTransformerBlock, x: torch.Tensor, size) -> torch.Tensor:
    """A Swin block as the README spells it: roll, partition, q * scale @ k^T + bias
    (+ mask), softmax, @ v, reverse, roll back, residual, MLP."""
    h, w = size
    b, _, c = x.shape
    ws, shift, attn = block.window_size, block.shift_size, block.attn
    heads, n = attn.num_heads, ws * ws
    y = block.norm1(x).view(b, h, w, c)
    y = torch.roll(y, (-shift, -shift), (1, 2))
    windows = y.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, n, c)
    q, k, v = attn.qkv(windows).view(-1, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    scores = (q * attn.scale) @ k.transpose(-2, -1)
    table = attn.relative_position_bias_table[attn.relative_position_index.view(-1)]
    scores = scores + table.view(n, n, heads).permute(2, 0, 1)
    if shift:
        mask = shift_mask(h, w, ws, shift)
        scores = (scores.view(b, -1, heads, n, n) + mask[None, :, None]).view(-1, heads, n, n)
    out = attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(-1, n, c))
    out = out.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
    x = x + torch.roll(out, (shift, shift), (1, 2)).reshape(b, h * w, c)
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("shift, size, batch",
                         [(4, (16, 24), 2), (0, (24, 16), 1), (4, (16, 16), 1)])
def test_block_matches_the_spelled_out_computation(shift, size, batch):
    network = random_tiny(seed=3, depths=[2], num_heads=[2])
    block = network.layers[0].residual_group.blocks[1 if shift else 0]
    x = torch.randn(batch, size[0] * size[1], 12, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        assert rel_l2(block(x, size), reference_block(block, x, size)) <= 1e-6


def plain_upscale(network, frame: np.ndarray) -> np.ndarray:
    """The authors' stage-1 sr path written out for one frame, with nothing of ours but
    the network: Pillow 4x, /255, short edge to 512, zero pad to 64, crop, resize back,
    truncate."""
    height, width = frame.shape[:2]
    big = np.array(Image.fromarray(frame).resize((width * 4, height * 4), Image.BICUBIC))
    x = torch.from_numpy(big).float().div(255).clamp(0, 1).permute(2, 0, 1)[None]
    h, w = x.shape[-2:]
    if min(h, w) < 512:
        target = {True: (512, int(w * 512 / h)), False: (int(h * 512 / w), 512)}[h < w]
        target = (512, 512) if h == w else target
        x = F.interpolate(x, size=target, mode="bicubic", antialias=True)
    h0, w0 = x.shape[-2:]
    x = F.pad(x, (0, -w0 % 64, 0, -h0 % 64))
    with torch.inference_mode():
        y = network(x)[..., :h0, :w0]
    y = F.interpolate(y, size=(h, w), mode="bicubic", antialias=True)
    return (y * 255).clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()


def test_stage_matches_the_plain_path_for_another_seed_and_odd_size():
    network = random_tiny(seed=7)
    frames = np.random.default_rng(7).integers(0, 256, (1, 13, 21, 3), dtype=np.uint8)
    ours = upscale(DiffBIRStage(network, "cpu"), frames)
    expected = np.stack([plain_upscale(network, frame) for frame in frames])
    assert ours.shape == (1, 52, 84, 3)
    assert uint8_pm1(ours, expected) <= 1e-3


def test_tiles_cover_the_frame_and_blend_with_the_asymmetric_gaussian():
    assert sliding_windows(64, 160, 64, 40) == [(0, 64, 0, 64), (0, 64, 40, 104),
                                                (0, 64, 80, 144), (0, 64, 96, 160)]
    t = 64
    i = np.arange(t)
    def profile(mid):
        return np.exp(-(i - mid) ** 2 / t ** 2 / (2 * 0.01)) / np.sqrt(2 * np.pi * 0.01)
    expected = np.outer(profile(t / 2), profile((t - 1) / 2))   # rows: height, T/2
    assert np.allclose(gaussian_weights(t, t).numpy(), expected, rtol=1e-12, atol=0)
    network = random_tiny(seed=5)
    x = torch.rand(1, 3, 64, 160, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        blended = tiled(network, x, 64, 40)
        identity = tiled(lambda tile: tile, x, 64, 40)
        first = network(x[..., :64])
    assert rel_l2(identity, x) <= 1e-6                    # weights normalise everywhere
    assert rel_l2(blended[..., :40], first[..., :40]) <= 1e-6   # only the first tile there


def test_float32_network_is_stable_against_float64_at_another_size():
    network = random_tiny(seed=11, depths=[2, 2], num_heads=[2, 2])
    x = torch.rand(2, 3, 64, 192, generator=torch.Generator().manual_seed(11))
    with torch.inference_mode():
        single = network(x)
        double = network.double()(x.double())
    assert single.shape == x.shape
    assert rel_l2(single, double) <= 1e-5


# --- (2) weights -------------------------------------------------------------------------

def official_entry() -> dict:
    return json.loads((FIXTURES / "official_keys.json").read_text())[0]


def official_state(seed: int = 0) -> dict:
    entry = official_entry()
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in entry["params"].items():
        if entry["buffer_keys"].get(name) == "int64":
            state[name] = torch.randint(0, 225, shape, generator=gen)
        else:
            state[name] = torch.randn(shape, generator=gen) * 0.01
    return state


@needs_fixtures
def test_official_network_has_the_checkpoint_layout():
    entry = official_entry()
    assert load_arch(None) == OFFICIAL_KWARGS == entry["kwargs"]
    network = build_swinir()
    own = network.state_dict()
    assert {k: list(v.shape) for k, v in own.items()} == entry["params"]
    assert sum(p.numel() for p in network.parameters()) == entry["num_params"] == 15_792_587


@needs_fixtures
@pytest.mark.parametrize("name, wrap", [
    ("realesrgan_s4_swinir_100k.pth", lambda s: s),
    ("general_swinir_v1.ckpt", lambda s: {"state_dict": s, "epoch": 3, "global_step": 100}),
    ("realesrgan_s4_swinir_100k.pth", lambda s: {f"module.{k}": v for k, v in s.items()}),
])
def test_official_layout_loads_strictly_as_the_authors_ship_it(tmp_path, name, wrap):
    state = official_state()
    torch.save(wrap(state), tmp_path / name)
    stage = create_stage(tmp_path, "cpu")   # a folder: the manifest's file names inside it
    loaded = stage.network.state_dict()
    assert len(loaded) == 732
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert stage.weights_identity() == f"{name} sha256:{sha256_file(tmp_path / name)}"


@needs_fixtures
@pytest.mark.parametrize("damage, named", [
    ("missing", "layers.1.residual_group.blocks.1.attn_mask"),
    ("missing", "conv_up3.bias"),
    ("extra", "conv_up4.weight"),
    ("misshaped", "layers.0.residual_group.blocks.0.attn.relative_position_bias_table"),
])
def test_a_bad_key_fails_naming_it(tmp_path, damage, named):
    state = dict(load_checkpoint(TINY_STATE))
    if damage == "missing":
        del state[named]
    elif damage == "extra":
        state[named] = torch.zeros(1)
    else:
        state[named] = state[named][:-1]
    torch.save({"state_dict": state}, tmp_path / "general_swinir_v1.ckpt")
    with pytest.raises(WeightsError, match=named.replace(".", r"\.")):
        create_stage(tmp_path / "general_swinir_v1.ckpt", "cpu", CONFIG)


def test_no_weights_says_how_to_get_them(tmp_path):
    with pytest.raises(WeightsError, match="weights pull diffbir"):
        create_stage(tmp_path, "cpu")


# --- (3) the stage -----------------------------------------------------------------------

@needs_fixtures
def test_small_and_large_batches_give_the_same_frames():
    arrays = pipeline_arrays()
    stage = tiny_stage()
    one_by_one = upscale(stage, arrays["lq_uint8"], batch=1)
    assert uint8_pm1(upscale(stage, arrays["lq_uint8"], batch=2), one_by_one) <= 1e-3
    assert uint8_pm1(one_by_one, arrays["out_uint8"]) <= 1e-3


@needs_fixtures
@pytest.mark.parametrize("count", [0, 1])
def test_every_frame_comes_out_however_short_the_clip(count):
    frames = pipeline_arrays()["lq_uint8"][:count]
    stage = tiny_stage()
    info = clip(pipeline_arrays()["lq_uint8"]).replace(frame_count=count)
    out_info, out = stage.run(info, iter(frames))
    out = list(out)
    assert len(out) == count
    assert (out_info.width, out_info.height, out_info.fps) == (112, 80, info.fps)
    assert all(f.shape == (80, 112, 3) and f.dtype == np.uint8 for f in out)


@needs_fixtures
def test_streams_with_memory_bounded_by_the_batch():
    frames = np.concatenate([pipeline_arrays()["lq_uint8"]] * 2)[:3]
    pulled = 0

    def source():
        nonlocal pulled
        for frame in frames:
            pulled += 1
            yield frame

    for n, _ in enumerate(tiny_stage().run(clip(frames, batch=2), source())[1]):
        assert pulled - n <= 2
    assert pulled == len(frames)


@needs_fixtures
def test_precision_is_taken_as_the_video_models_take_it():
    frames = pipeline_arrays()["lq_uint8"][:1]
    check_cpu_precisions(create_stage, lambda stage: upscale(stage, frames), mean_levels=1,
                         weights=TINY_STATE, device="cpu", arch=CONFIG)


@needs_fixtures
def test_float16_frames_in_float16_frames_out():
    arrays = pipeline_arrays()
    frames = (arrays["lq_uint8"][:1] / 255).astype(np.float16)
    out = upscale(tiny_stage(), frames, fmt="rgbf16")
    assert out.shape == (1, 80, 112, 3) and out.dtype == np.float16
    assert 0 <= out.min() and out.max() <= 1
    # Float bicubic instead of Pillow's 8-bit passes: close to the authors' frames.
    assert np.abs(out.astype(np.float64) * 255 - arrays["out_uint8"][:1]).mean() < 2


@needs_fixtures
@pytest.mark.parametrize("params, message", [
    ({"tiled": 1, "tile_size": 100}, "tile_size"), ({"tiled": "maybe"}, "tiled"),
    ({"tiled": 1, "tile_stride": 0}, "tile_stride"), ({"batch": 0}, "batch")])
def test_bad_params_are_refused(params, message):
    with pytest.raises(StageError, match=message):
        tiny_stage().validate(clip(pipeline_arrays()["lq_uint8"], **params))


@needs_fixtures
def test_describe_tells_task_scale_window_and_weights():
    described = tiny_stage().describe()
    assert (described["task"], described["model"]) == (TASK, MODEL)
    assert (described["scale"], described["fps_factor"]) == (4, 1)
    assert (described["window_past"], described["window_future"]) == (0, 0)
    assert described["weights"] == f"{TINY_STATE.name} sha256:{sha256_file(TINY_STATE)}"
    tiling = (described["tiled"], described["tile_size"], described["tile_stride"])
    assert tiling == (False, 512, 256)


def psnr(ours: np.ndarray, reference: np.ndarray) -> float:
    mse = np.mean((ours.astype(np.float64) - reference) ** 2)
    return float(10 * np.log10(255 ** 2 / max(mse, 1e-12)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@needs_fixtures
def test_half_precision_on_cuda_holds_quality():
    arrays = pipeline_arrays()
    for frames, params in ((arrays["lq_uint8"], {}),
                           (arrays["tiled_lq_uint8"], {"tiled": 1, "tile_size": 64,
                                                       "tile_stride": 32})):
        full = upscale(tiny_stage(half=False, device="cuda"), frames, **params)
        half = upscale(tiny_stage(half=True, device="cuda"), frames, **params)
        cpu = upscale(tiny_stage(), frames, **params)
        # CUDA float32 matmuls may use TF32, so compare by PSNR.
        assert psnr(full, cpu) >= 45
        assert psnr(half, full) >= 40


# --- (4) the real service ----------------------------------------------------------------

@needs_fixtures
def test_service_streams_the_pipeline_clip_like_the_authors():
    from services.stagekit.client import StageClient
    arrays = pipeline_arrays()
    config = parity.load_config(FIXTURES)
    tol = {case["params"]["cleaner_tiled"]: case["outputs"] for case in config["cases"]
           if case["kind"] == "pipeline"}
    with running_service("services.diffbir", "--weights", str(TINY_STATE),
                         "--arch", str(CONFIG), "--device", "cpu",
                         env={"OMP_NUM_THREADS": "1"}) as address:
        with StageClient(address, timeout=120) as client:
            described = client.describe()[0]
            assert (described["task"], described["model"], described["scale"]) == (TASK, MODEL, 4)
            assert described["weights"].endswith(sha256_file(TINY_STATE))
            frames = arrays["lq_uint8"]
            out_info, out = client.process(clip(frames), iter(frames), batch=1)
            assert (out_info.width, out_info.height) == (112, 80)
            out = np.stack(list(out))
            assert uint8_pm1(out, arrays["out_uint8"]) <= tol[False]["out_uint8"]["tol"]
            frames = arrays["tiled_lq_uint8"]
            info = clip(frames, tiled=1, tile_size=64, tile_stride=32)
            out = np.stack(list(client.process(info, iter(frames), batch=1)[1]))
            assert uint8_pm1(out, arrays["tiled_out_uint8"]) <= tol[True]["tiled_out_uint8"]["tol"]
            with pytest.raises(StageError, match="tile_size"):
                list(client.process(clip(frames, tiled=1, tile_size=96), iter(frames))[1])
            assert client.describe()[0]["model"] == MODEL   # still serving
