"""MMP-RNN: parity with the authors' outputs, strict weights, streaming, the real service."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch

from services.mmprnn import MODEL, TASK
from services.mmprnn.network import build_mmprnn, check_size
from services.mmprnn.parity import run_case, tiny_network
from services.stagekit.parity import uint8_pm1
from services.mmprnn.stage import (MMPRNNStage, create_stage, load_mmpnet, load_mmprnn,
                                   read_arch)
from services.stagekit import parity
from services.stagekit.testing import clip_info, parity_dir, running_service
from services.stagekit.weights import WeightsError, sha256_file

FIXTURES = parity_dir(MODEL)
CONFIG = FIXTURES / "config.json"
TINY_STATE = FIXTURES / "tiny_state.safetensors"

pytestmark = [pytest.mark.skipif(not CONFIG.is_file(), reason=f"no fixtures in {FIXTURES}"),
              pytest.mark.usefixtures("one_torch_thread")]


def fixture_config() -> dict:
    return parity.load_config(FIXTURES)


def pipeline_arrays() -> dict:
    return parity.load_arrays(FIXTURES, "tiny_pipeline_case.npz")


def deblur(stage: MMPRNNStage, frames, fmt: str = "rgb24") -> np.ndarray:
    _, out = stage.run(clip_info(frames, fmt), iter(frames))
    return np.stack(list(out))


def random_tiny(seed: int) -> torch.nn.Module:
    """The tiny architecture with fresh weights scaled as the fixtures' README describes
    (so that the prior varies and matters, and BatchNorm statistics are not 0/1)."""
    generator = torch.Generator().manual_seed(seed)
    network = build_mmprnn(**read_arch(CONFIG))

    def noise(tensor):
        return torch.randn(tensor.shape, generator=generator)

    with torch.no_grad():
        for name, module in network.named_modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(1 + 0.1 * noise(module.weight))
                module.bias.copy_(0.05 * noise(module.bias))
                module.running_mean.copy_(0.1 * noise(module.running_mean))
                module.running_var.copy_(1 + 0.25 * torch.tanh(noise(module.running_var)))
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                fan_in = module.weight[0].numel()
                if isinstance(module, torch.nn.ConvTranspose2d):
                    fan_in = module.weight.shape[0] * module.weight[0, 0].numel() / 4
                gain = 1.6 if "prior" in name else 3.0 if "MMAM1" in name else 1.0
                module.weight.copy_(gain * noise(module.weight) / math.sqrt(fan_in))
                module.bias.copy_(0.05 * noise(module.bias))
    return network.eval()


def moving_clip(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random scene panning (2, 1) px per frame, as uint8 RGB frames."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0.1, 0.9, (1, 3, height // 4 + 2 * count,
                                                     width // 4 + count)))
    scene = torch.nn.functional.interpolate(coarse, scale_factor=4, mode="bicubic")[0]
    frames = [scene[:, 2 * t:2 * t + height, t:t + width].permute(1, 2, 0) for t in range(count)]
    return (torch.stack(frames).clamp(0, 1) * 255).to(torch.uint8).numpy()


def upstream_loop(network, frames: np.ndarray, test_frames: int = 20) -> dict[int, np.ndarray]:
    """The authors' _test_lmdb loop, mirrored: chunk geometry, state reset per chunk, later
    chunks overwriting, truncation. Returns {frame index: uint8 frame}."""
    count = len(frames)
    start, end, written = 0, test_frames, {}
    while True:
        x = (torch.from_numpy(frames[start:end]).permute(0, 3, 1, 2).float() - 127.5) / 255
        with torch.inference_mode():
            y = network(x[None])[0] * 255 + 127.5
        for k, value in enumerate(y):
            written[start + 2 + k] = value.clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        if end == count:
            return written
        start, end = end - 4, end + 16
        if end > count:
            start, end = count - test_frames, count


def plain_forward(network, x: torch.Tensor) -> torch.Tensor:
    """Upstream's Model.forward step by step (one frame at a time, one centre at a time),
    built from our modules: the reference for our batched reorganisation."""
    cell, batch, frames, _, height, width = network.cell, *x.shape
    s = x.new_zeros(batch, network.n_feats, height // 4, width // 4)
    mid = x.new_zeros(batch, 2 * network.n_feats, height // 4, width // 4)
    hs = []
    for t in range(frames):
        feat = cell.MMAM1(cell.F_B0(x[:, t]), cell.prior(x[:, t]))
        feat = cell.F_B2(cell.F_B1(feat))
        h = cell.F_R(torch.cat([feat, mid, s], 1))
        s, mid = cell.F_h(h), feat
        hs.append(h)
    outs = [network.recons(network.fusion(torch.cat(hs[i - 2:i + 3], 1))) + network.skip(x[:, i])
            for i in range(2, frames - 2)]
    return torch.stack(outs, 1)


# --- (1) parity -------------------------------------------------------------------------

def test_parity_command_passes_on_the_shared_fixtures():
    out = io.StringIO()
    assert parity.run(FIXTURES, run_case, out=out) == 0, out.getvalue()


def test_intermediates_match_the_authors():
    """The forward case's debug arrays (MMP-Net output, h, s, mid per frame)."""
    config = fixture_config()
    case = next(c for c in config["cases"] if c["kind"] == "forward")
    arrays = parity.load_arrays(FIXTURES, case["file"])
    produced = run_case(config, case, arrays)
    for name, spec in case["debug"].items():
        assert parity.rel_l2(produced[name], arrays[name]) <= spec["tol"], name


@pytest.mark.parametrize("seed,batch,frames,height,width", [(1, 2, 7, 20, 28), (2, 1, 6, 32, 16)])
def test_batched_forward_equals_upstream_order(seed, batch, frames, height, width):
    """Other seeds and sizes: our frame-batched forward equals the frame-by-frame one."""
    network = random_tiny(seed)
    network.group = 3
    x = torch.rand(batch, frames, 3, height, width, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        ours, reference = network(x - 0.5), plain_forward(network, x - 0.5)
    assert parity.rel_l2(ours, reference) <= 1e-5


def test_stage_follows_the_authors_loop_on_a_longer_clip():
    """41 frames at 20x24 with other weights: chunks [0,20) [16,36) [21,41), the last one
    overwriting; every frame the authors write matches."""
    network = random_tiny(3)
    frames = moving_clip(41, 20, 24, seed=3)
    expected = upstream_loop(network, frames)
    ours = deblur(MMPRNNStage(network), frames)
    assert sorted(expected) == list(range(2, 39))
    assert uint8_pm1(ours[2:39], np.stack([expected[i] for i in range(2, 39)])) <= 0.005


def test_border_frames_come_from_the_mirrored_clip():
    """Frames 0, 1 from x2 x1 x0 x1 x2 x3; frames N-2, N-1 from the last chunk run on over
    x(N-2) x(N-3)."""
    network = tiny_network(fixture_config())
    frames = pipeline_arrays()["frames"][:9]
    ours = deblur(MMPRNNStage(network), frames)
    head = upstream_loop(network, frames[[2, 1, 0, 1, 2, 3]], test_frames=6)
    tail = upstream_loop(network, frames[[*range(9), 7, 6]], test_frames=11)
    assert uint8_pm1(ours[:2], np.stack([head[2], head[3]])) <= 0.005
    assert uint8_pm1(ours[2:], np.stack([tail[i] for i in range(2, 9)])) <= 0.005


# --- (2) weights ------------------------------------------------------------------------

def official_state(name: str) -> dict:
    keys = next(e for e in json.loads((FIXTURES / "official_keys.json").read_text())
                if e["name"] == name)
    generator = torch.Generator().manual_seed(0)
    return {key: (torch.zeros(shape, dtype=torch.int64) if key.endswith("num_batches_tracked")
                  else torch.randn(shape, generator=generator))
            for key, shape in keys["params"].items()}


def authors_file(tmp_path, state: dict, prefix: str = "module.model.", model="MMPRNN"):
    """A checkpoint wrapped as the authors' train/trainer saves it."""
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 500, "model": model, "register_dict": {"best_psnr": 31.6},
                "state_dict": {prefix + k: v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": []}, "scheduler": {"last_epoch": 500}},
               path)
    return path


@pytest.fixture(scope="module")
def official():
    return official_state("mmprnn")


def test_official_checkpoint_loads_strictly(tmp_path, official):
    network = load_mmprnn(authors_file(tmp_path, official))
    loaded = network.state_dict()
    assert sum(p.numel() for p in network.parameters()) == 4_079_940
    assert all(torch.equal(loaded[k], v) for k, v in official.items())


def test_official_mmpnet_file_loads_strictly(tmp_path):
    state = official_state("mmpnet")
    network = load_mmpnet(authors_file(tmp_path, state, prefix="", model="MMP-Net"))
    assert torch.equal(network.state_dict()["outc.conv.weight"], state["outc.conv.weight"])


@pytest.mark.parametrize("damage,named", [
    ("missing", "cell.prior.up2.conv.double_conv.4.running_var"),
    ("extra", "cell.F_B1.rdb.ca.conv_du.0.weight"),
    ("misshaped", "fusion.ca.conv_du.0.weight"),
    ("unprefixed", "recons.model.2.bias"),
])
def test_bad_checkpoint_names_the_key(tmp_path, official, damage, named):
    state = dict(official)
    if damage == "missing":
        del state[named]
    elif damage == "extra":
        state[named] = torch.zeros(1)
    elif damage == "misshaped":
        state[named] = torch.zeros(29, 450, 1, 1)
    path = authors_file(tmp_path, state)
    if damage == "unprefixed":
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["state_dict"][named] = checkpoint["state_dict"].pop("module.model." + named)
        torch.save(checkpoint, path)
    with pytest.raises(WeightsError, match=named.replace(".", r"\.")):
        load_mmprnn(path)


def test_create_stage_loads_the_tiny_weights_and_names_them():
    stage = create_stage(TINY_STATE, "cpu", CONFIG)
    assert stage.describe()["weights"] == f"{TINY_STATE.name} sha256:{sha256_file(TINY_STATE)}"
    assert (stage.task, stage.model, stage.window) == (TASK, MODEL, (2, 2))
    with pytest.raises(WeightsError, match="not found"):
        create_stage(FIXTURES / "absent.pth", "cpu", CONFIG)


# --- (3) the stage ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_stage():
    return create_stage(TINY_STATE, "cpu", CONFIG)


def test_streaming_is_lazy_and_bounded(tiny_stage):
    """A 60-frame clip fed one frame at a time: outputs start before the clip ends, the
    stage never holds more than two chunks' worth of input, and the result equals the
    whole clip handed over at once."""
    frames = moving_clip(60, 16, 16, seed=5)
    consumed, lag = [0], []

    def feed():
        for frame in frames:
            consumed[0] += 1
            yield frame

    _, out = tiny_stage.run(clip_info(frames), feed())
    streamed = []
    for frame in out:
        lag.append(consumed[0] - len(streamed))
        streamed.append(frame)
    assert max(lag) <= 37 and lag[0] < len(frames)
    np.testing.assert_array_equal(np.stack(streamed), deblur(tiny_stage, list(frames)))


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 19, 20, 21])
def test_every_frame_comes_out_of_any_clip(tiny_stage, count):
    frames = pipeline_arrays()["frames"][:count]
    out = deblur(tiny_stage, frames)
    assert out.shape == frames.shape and out.dtype == np.uint8


def test_clip_of_20_or_more_keeps_the_authors_frames(tiny_stage):
    arrays = pipeline_arrays()
    out = deblur(tiny_stage, arrays["frames"])
    assert uint8_pm1(out[2:-2], arrays["out"]) <= 0.005


@pytest.mark.parametrize("height,width", [(18, 22), (10, 12), (16, 20)])
def test_any_frame_size_is_padded_and_cropped(tiny_stage, height, width):
    frames = moving_clip(6, height, width, seed=7)
    out = deblur(tiny_stage, frames)
    assert out.shape == frames.shape


def test_the_network_itself_refuses_sizes_it_cannot_take():
    with pytest.raises(ValueError, match="multiples of 4"):
        check_size(18, 20)


def test_float16_frames_round_trip_without_quantisation(tiny_stage):
    frames = pipeline_arrays()["frames"][:8]
    as_uint8 = deblur(tiny_stage, frames).astype(np.float32)
    as_float = deblur(tiny_stage, (frames / 255.0).astype(np.float16), fmt="rgbf16")
    assert as_float.dtype == np.float16
    assert np.abs(as_float.astype(np.float32) * 255 - as_uint8).max() <= 1.2


# --- (4) the service --------------------------------------------------------------------

def test_service_streams_the_pipeline_case_as_the_authors():
    from services.stagekit.client import StageClient
    arrays = pipeline_arrays()
    frames = arrays["frames"]
    case = next(c for c in fixture_config()["cases"] if c["kind"] == "pipeline")
    with running_service("services.mmprnn", "--weights", str(TINY_STATE), "--arch", str(CONFIG),
                         "--device", "cpu", env={"OMP_NUM_THREADS": "1"}) as address, StageClient(address) as client:
        described = client.describe()[0]
        out_info, out = client.process(clip_info(frames), iter(frames), batch=3)
        out = np.stack(list(out))
    assert (described["task"], described["model"]) == (TASK, MODEL)
    assert (described["window_past"], described["window_future"]) == (2, 2)
    assert described["weights"].endswith(sha256_file(TINY_STATE))
    assert out.shape == frames.shape and out_info.frame_count == len(frames)
    assert uint8_pm1(out[2:-2], arrays["out"]) <= case["outputs"]["out"]["tol"]


# --- CUDA -------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_half_precision_on_cuda_holds_quality(monkeypatch):
    frames = pipeline_arrays()["frames"]
    cpu = deblur(create_stage(TINY_STATE, "cpu", CONFIG), frames).astype(np.int16)
    # TF32 convolutions would blur the fp32 reference itself.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    fp32 = MMPRNNStage(tiny_network(fixture_config()), "cuda", torch.float32)
    fp16 = create_stage(TINY_STATE, "cuda", CONFIG)
    assert fp16.dtype == torch.float16
    assert uint8_pm1(deblur(fp32, frames), cpu) <= 0.005
    # float16 on the CPU gives a mean error of 0.07 grey levels (max 1) on this clip.
    error = np.abs(deblur(fp16, frames).astype(np.int16) - cpu)
    assert error.mean() <= 0.5 and error.max() <= 8
