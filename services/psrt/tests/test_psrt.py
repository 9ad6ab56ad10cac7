"""PSRT-recurrent: parity with the authors' outputs, checkpoint layout, streaming, service.

Everything runs the tiny configuration from the parity fixtures on the CPU, one thread
(the machine is shared); the official network is only built, never run, except in the
CUDA test.
"""
from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from services.psrt import MODEL, TASK
from services.psrt.network import build_network, relative_position_index
from services.psrt.parity import run_case, tiny_network
from services.stagekit.parity import uint8_pm1
from services.psrt.stage import PSRTStage, Settings, create_stage, load_weights, tile_plan
from services.stagekit import ClipInfo, StageError
from services.stagekit import parity
from services.stagekit.testing import parity_dir, running_service
from services.stagekit.weights import WeightsError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURES = parity_dir(MODEL)
needs_fixtures = pytest.mark.skipif(not (FIXTURES / "config.json").is_file(),
                                    reason="../shared/parity/psrt is not available")


@pytest.fixture(scope="module")
def config() -> dict:
    return json.loads((FIXTURES / "config.json").read_text())


@pytest.fixture(scope="module")
def tiny(config):
    return tiny_network(config, FIXTURES)


def clip(count: int, height: int = 64, width: int = 64, seed: int = 3) -> list[np.ndarray]:
    """Smooth moving content (a shifted crop of one blurred noise image), uint8 RGB."""
    rng = np.random.default_rng(seed)
    base = torch.from_numpy(rng.random((1, 3, height // 4 + 4, width // 4 + 4), np.float32))
    big = F.interpolate(base, scale_factor=4, mode="bicubic", align_corners=False)[0]
    big = (big.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return [np.ascontiguousarray(big[i % 3:i % 3 + height, i % 5:i % 5 + width])
            for i in range(count)]


def info_for(frames, **params) -> ClipInfo:
    height, width = frames[0].shape[:2]
    return ClipInfo("test", width=width, height=height, fps=Fraction(25),
                    params={k: str(v) for k, v in params.items()})


def run_stage(stage, frames, **params) -> np.ndarray:
    _, out = stage.run(info_for(frames, **params), iter(frames))
    return np.stack(list(out))


def one_pass(network, frames) -> np.ndarray:
    """The authors' procedure with no chunks or tiles: one forward, tensor2img."""
    lq = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div(255.0)[None]
    with torch.inference_mode():
        out = network(lq)[0].clamp(0, 1).permute(0, 2, 3, 1)
    return (out * 255.0).round().to(torch.uint8).numpy()


def psnr(a, b) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


# ------------------------------------------------------------------------ parity


@needs_fixtures
def test_parity_on_the_shared_fixtures():
    assert parity.run(FIXTURES, run_case) == 0


def reference_block(block, x, shift, window):
    """A Swin block as the authors write it: norm1, zero-pad, roll, window partition,
    attention with bias and explicit -100 shift mask, reverse, crop, MLP."""
    n, t, h, w, c = x.shape
    wd, wh, ww = window
    y = block.norm1(x)
    pd, ph, pw = (-t) % wd, (-h) % wh, (-w) % ww
    y = F.pad(y, (0, 0, 0, pw, 0, ph, 0, pd))
    _, dp, hp, wp, _ = y.shape
    if any(shift):
        y = torch.roll(y, (-shift[0], -shift[1], -shift[2]), (1, 2, 3))
    win = y.view(n, dp // wd, wd, hp // wh, wh, wp // ww, ww, c).permute(
        0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, wd * wh * ww, c)
    attn = block.attn
    heads, tokens = attn.num_heads, wd * wh * ww
    qkv = attn.qkv(win).reshape(-1, tokens, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * (c // heads) ** -0.5, qkv[1], qkv[2]
    scores = q @ k.transpose(-2, -1) + attn.bias()
    if any(shift):
        img = torch.zeros(1, dp, hp, wp)
        cnt = 0
        for d in slice(-wd), slice(-wd, -shift[0]), slice(-shift[0], None):
            for hh in slice(-wh), slice(-wh, -shift[1]), slice(-shift[1], None):
                for ww_ in slice(-ww), slice(-ww, -shift[2]), slice(-shift[2], None):
                    img[:, d, hh, ww_] = cnt
                    cnt += 1
        labels = img.view(dp // wd, wd, hp // wh, wh, wp // ww, ww).permute(
            0, 2, 4, 1, 3, 5).reshape(-1, tokens)
        mask = (labels[:, None, :] - labels[:, :, None]) != 0
        windows = mask.shape[0]
        scores = scores.view(n, windows, heads, tokens, tokens) + \
            mask[None, :, None].float() * -100.0
        scores = scores.view(-1, heads, tokens, tokens)
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(-1, tokens, c)
    out = attn.proj(out).view(n, dp // wd, hp // wh, wp // ww, wd, wh, ww, c).permute(
        0, 1, 4, 2, 5, 3, 6, 7).reshape(n, dp, hp, wp, c)
    if any(shift):
        out = torch.roll(out, shift, (1, 2, 3))
    x = x + out[:, :t, :h, :w]
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("n, height, width", [(1, 66, 64), (2, 72, 80), (1, 70, 97)])
def test_window_plan_matches_the_authors_block_for_other_seeds_and_sizes(n, height, width):
    """Our gathered, mask-grouped, chunked Swin block against the plain formulation."""
    torch.manual_seed(height * width + n)
    network = build_network(embed_dim=12, depths=[2], num_heads=[3], mid_channels=8)
    branch = network.patch_align["forward_1"].eval()
    for p in branch.parameters():
        p.data.normal_(0, 0.3)
    x = torch.randn(n, 3, height, width, 12)
    plans = branch.plans(n, 3, height, width, x.device)
    for block in branch.layers[0].residual_group.blocks:
        state = torch.cat([x.reshape(-1, 12), x.new_zeros(1, 12)])
        out = torch.full_like(state, float("nan"))
        with torch.inference_mode():
            block(state, plans[block.shifted], out)
            want = reference_block(block, x, block.shift_size, block.window_size)
        got = out[:-1].view_as(x)       # every real token written: no NaN left
        assert float((got - want).norm() / want.norm()) < 1e-5


@needs_fixtures
def test_one_chunk_is_the_plain_forward_for_another_size(tiny):
    frames = clip(4, height=72, width=80, seed=11)
    stage = PSRTStage(tiny, "cpu", settings=Settings(chunk=8, overlap=2))
    assert np.array_equal(run_stage(stage, frames), one_pass(tiny, frames))


# ----------------------------------------------------------------------- weights


def official_state(keys: dict) -> dict:
    """Random values in the official layout; index buffers with their true values."""
    torch.manual_seed(0)
    state = {}
    for name, shape in keys["params"].items():
        if name in keys["buffers"] and keys["buffers"][name] == "int64":
            state[name] = relative_position_index((3, 8, 8))
        else:
            state[name] = torch.randn(shape) * 0.02
    return state


@pytest.fixture(scope="module")
def official():
    keys = json.loads((FIXTURES / "official_keys.json").read_text())
    network = build_network()
    return keys, network


@needs_fixtures
def test_official_layout_loads_strictly(official, tmp_path):
    keys, network = official
    assert len(network.state_dict()) == keys["num_state_dict_entries"]
    assert sum(p.numel() for p in network.parameters()) == keys["num_params"]
    state = official_state(keys)
    path = tmp_path / "PSRT_REDS.pth"
    torch.save({"params": state}, path)
    assert load_weights(network, path) == []
    got = network.state_dict()
    assert all(torch.equal(got[k], state[k].to(got[k].dtype)) for k in state)


@needs_fixtures
@pytest.mark.parametrize("fault", ["missing", "extra", "misshaped"])
def test_bad_keys_fail_naming_the_key(official, tmp_path, fault):
    keys, network = official
    state = official_state(keys)
    name = "patch_align.forward_2.layers.1.residual_group.blocks.3.mlp.fc1.weight"
    if fault == "missing":
        del state[name]
    elif fault == "extra":
        name = "patch_align.forward_2.extra.weight"
        state[name] = torch.zeros(3)
    else:
        state[name] = torch.zeros(7, 7)
    path = tmp_path / "PSRT_REDS.pth"
    torch.save({"params": state}, path)
    with pytest.raises(WeightsError, match=name.replace(".", r"\.")):
        load_weights(network, path)


@needs_fixtures
def test_spynet_file_fills_only_spynet_keys(official, tmp_path):
    """The authors' constructor loads SpyNet's own file first; a main checkpoint without
    spynet.* then keeps it, and the loader names what the main file lacked."""
    keys, network = official
    state = official_state(keys)
    spynet = {k[len("spynet."):]: state.pop(k) for k in list(state)
              if k.startswith("spynet.basic_module.")}
    torch.save({"params": state}, tmp_path / "PSRT_REDS.pth")
    torch.save({"params": spynet}, tmp_path / "spynet_sintel_final-3d2a1287.pth")
    lacked = load_weights(network, tmp_path / "PSRT_REDS.pth",
                          tmp_path / "spynet_sintel_final-3d2a1287.pth")
    assert lacked == sorted("spynet." + k for k in spynet)
    assert torch.equal(network.spynet.basic_module[0].basic_module[0].weight,
                       spynet["basic_module.0.basic_module.0.weight"])
    with pytest.raises(WeightsError, match="spynet.basic_module"):
        load_weights(network, tmp_path / "PSRT_REDS.pth")


def test_weights_store_without_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RESTORATION_WEIGHTS", str(tmp_path))
    with pytest.raises(WeightsError, match="PSRT_REDS.pth"):
        create_stage()


# ------------------------------------------------------------------------- stage


@needs_fixtures
def test_stage_streams_in_chunks_and_short_clips(tiny):
    stage = PSRTStage(tiny, "cpu", settings=Settings(chunk=3, overlap=1))
    frames = clip(5)
    pulled = []

    def lazily():
        for frame in frames:
            pulled.append(1)
            yield frame

    info = info_for(frames)
    out_info, out = stage.run(info, lazily())
    first = next(out)
    assert len(pulled) < len(frames), "the first output waited for the whole clip"
    rest = [first, *out]
    assert len(rest) == len(frames) and out_info.width == 256 and out_info.height == 256
    assert all(f.shape == (256, 256, 3) and f.dtype == np.uint8 for f in rest)
    # the same clip, chunked differently through params, gives every frame in order
    again = run_stage(stage, frames, chunk=2, overlap=0)
    assert again.shape == (5, 256, 256, 3)
    assert np.array_equal(again[:2], one_pass(tiny, frames[:2]))
    for count in (1, 2):       # shorter than the chunk, and a single frame
        short = clip(count)
        assert np.array_equal(run_stage(stage, short), one_pass(tiny, short))


@needs_fixtures
def test_small_frames_and_float16(tiny):
    stage = PSRTStage(tiny, "cpu", settings=Settings(chunk=4, overlap=0))
    frames = clip(2, height=40, width=52)
    out = run_stage(stage, frames)
    assert out.shape == (2, 160, 208, 3)
    halves = [(f / 255.0).astype(np.float16) for f in clip(2)]
    info = ClipInfo("f16", width=64, height=64, fps=Fraction(25), pixel_format="rgbf16")
    _, got = stage.run(info, iter(halves))
    got = np.stack(list(got))
    assert got.dtype == np.float16 and got.min() >= 0 and got.max() <= 1
    lq = torch.from_numpy(np.stack(halves).astype(np.float32)).permute(0, 3, 1, 2)[None]
    with torch.inference_mode():
        want = tiny(lq)[0].clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.abs(got.astype(np.float32) - want).max() < 1e-3


def test_tiles_cover_the_frame_once():
    for height, width, tile, overlap in [(240, 360, 128, 16), (66, 64, 64, 8), (100, 300, 96, 10)]:
        cover = np.zeros((height, width), int)
        plan = tile_plan(height, width, tile, overlap)
        assert len({(t.h, t.w) for t in plan}) == 1
        for t in plan:
            assert t.h <= tile and t.w <= tile and t.h >= min(height, 64)
            assert t.y0 <= t.ky0 < t.ky1 <= t.y0 + t.h and t.x0 <= t.kx0 < t.kx1 <= t.x0 + t.w
            cover[t.ky0:t.ky1, t.kx0:t.kx1] += 1
        assert np.all(cover == 1)


@needs_fixtures
def test_tiled_frames_stay_close_to_the_whole_frame(tiny):
    frames = clip(2, height=64, width=136, seed=5)
    whole = one_pass(tiny, frames)
    stage = PSRTStage(tiny, "cpu", settings=Settings(chunk=4, overlap=0, tile=80,
                                                     tile_overlap=24, tile_batch=2))
    tiled = run_stage(stage, frames)
    assert tiled.shape == whole.shape
    assert psnr(tiled, whole) > 25


def test_bad_params_are_stage_errors(tiny):
    stage = PSRTStage(tiny, "cpu")
    frames = clip(1)
    for params in ({"chunk": "0"}, {"overlap": "40"}, {"tile": "abc"}, {"tile": "32"}):
        with pytest.raises(StageError):
            stage.validate(info_for(frames, **params))


@pytest.mark.slow
@needs_fixtures
def test_windowed_against_one_pass_on_three_windows(tiny, capsys):
    """The issue's report: PSNR between the chunked result and the single pass."""
    chunk, overlap = 6, 2
    frames = clip(3 * chunk, seed=9)
    stage = PSRTStage(tiny, "cpu", settings=Settings(chunk=chunk, overlap=overlap))
    value = psnr(run_stage(stage, frames), one_pass(tiny, frames))
    with capsys.disabled():
        print(f"\npsrt: {3 * chunk} frames, chunk {chunk} overlap {overlap}: "
              f"PSNR windowed vs one pass = {value:.2f} dB")
    assert value > 30


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_half_precision_on_cuda_holds_quality():
    torch.manual_seed(0)
    network = build_network()
    for p in network.parameters():
        p.data.normal_(0, 0.02)
    frames = clip(4, height=96, width=128)
    fp32 = run_stage(PSRTStage(network, "cuda", half=False), frames)
    fp16 = run_stage(PSRTStage(network, "cuda", half=True), frames)
    assert psnr(fp16, fp32) > 40


# ----------------------------------------------------------------------- service


@needs_fixtures
def test_service_streams_the_pipeline_case(config):
    from services.stagekit.client import StageClient

    case = next(c for c in config["cases"] if c["kind"] == "pipeline")
    arrays = parity.load_arrays(FIXTURES, case["file"])
    frames = [np.ascontiguousarray(f[..., ::-1]) for f in arrays["frames_in_bgr_u8"]]
    spec = case["outputs"]["frames_out_bgr_u8_s3"]
    with running_service("services.psrt", "--weights", str(FIXTURES / "tiny_state.safetensors"),
                         "--arch", str(FIXTURES / "config.json"), "--device", "cpu") as address:
        with StageClient(address, timeout=300) as client:
            (described,) = client.describe()
            assert (described["task"], described["model"], described["scale"]) == (TASK, MODEL, 4)
            assert described["weights"].startswith("tiny_state.safetensors sha256:")
            out_info, out = client.process(info_for(frames), iter(frames), batch=1)
            got = np.stack(list(out))
    assert (out_info.width, out_info.height) == (4 * frames[0].shape[1], 4 * frames[0].shape[0])
    assert uint8_pm1(got[:, ::3, ::3, ::-1], arrays["frames_out_bgr_u8_s3"]) <= spec["tol"]
