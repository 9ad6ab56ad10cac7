"""RVRT denoise: parity with the authors' code, checkpoint loading, streaming, the service."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from services.stagekit import StageError
from services.stagekit.parity import load_arrays, load_config, rel_l2
from services.stagekit.parity import run as run_parity
from services.stagekit.testing import clip_info, damaged, parity_dir, running_service, shared_dir
from services.stagekit.weights import WeightsError

from services.rvrt import MODEL
from services.rvrt.network import (OFFICIAL_KWARGS, build_network, deform_attn,
                                   window_order, window_partition)
from services.rvrt.parity import run_case
from services.rvrt.stage import SIGMA_FRAMES, RVRTStage, clip_noise, create_stage, load_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURES = parity_dir(MODEL)
needs_fixtures = pytest.mark.skipif(not (FIXTURES / "config.json").is_file(),
                                    reason=f"no parity fixtures at {FIXTURES}")
TINY_KWARGS = {**OFFICIAL_KWARGS, "embed_dims": [24, 24, 24], "num_heads": [2, 2, 2],
               "deformable_groups": 6, "attention_heads": 6}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def random_tiny():
    """A tiny network with PyTorch's default initialisation (another seed than the
    fixtures'): offsets, flows and outputs all differ from theirs."""
    torch.manual_seed(5)
    return build_network(**TINY_KWARGS).eval()


def noisy_clip(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 216, (1, height, width, 3)).astype(np.float64)
    frames = base + rng.normal(0, 10, (count, height, width, 3))
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- (1) parity

@needs_fixtures
def test_parity_command_passes_on_shared_fixtures():
    assert run_parity(FIXTURES, run_case) == 0


@needs_fixtures
def test_parity_intermediates_and_residual():
    """What the harness does not print: flows and features (1e-5) and the network's own
    contribution, out - input (5e-5)."""
    config = load_config(FIXTURES)
    case = next(c for c in config["cases"] if c["kind"] == "forward")
    arrays = load_arrays(FIXTURES, case["file"])
    produced = run_case(config, case, arrays)
    for name, spec in case["debug"].items():
        assert rel_l2(produced[name], arrays[name]) <= spec["tol"], name
    rgb = arrays["lq"][:, :, :3, ::2, ::2]
    residual = rel_l2(produced["out_sub"] - rgb, arrays["out_sub"] - rgb)
    assert residual <= case["outputs"]["out_sub"]["also"][0]["tol"]


def naive_deform_attn(q, kv, offset, heads, groups, clip, kernel=3, padding=1):
    """The CUDA kernel's arithmetic, loop by loop: floor, four taps, zero outside."""
    bt, _, cq, h, w = q.shape
    head, per_group = cq // heads, 2 * cq // groups
    out = np.zeros_like(q)

    def tap(image, y, x):
        if y <= -1 or y >= h or x <= -1 or x >= w:
            return np.zeros(image.shape[0])
        y0, x0 = int(np.floor(y)), int(np.floor(x))
        ly, lx = y - y0, x - x0
        total = np.zeros(image.shape[0])
        for yy, xx, weight in ((y0, x0, (1 - ly) * (1 - lx)), (y0, x0 + 1, (1 - ly) * lx),
                               (y0 + 1, x0, ly * (1 - lx)), (y0 + 1, x0 + 1, ly * lx)):
            if 0 <= yy < h and 0 <= xx < w:
                total += weight * image[:, yy, xx]
        return total

    for b in range(bt):
        batch, j = divmod(b, clip)
        for y in range(h):
            for x in range(w):
                samples = []
                for n in range(clip):
                    frame = kv[batch, (j + n) % clip]
                    for p in range(kernel * kernel):
                        r, s = divmod(p, kernel)
                        vec = np.zeros(2 * cq)
                        for g in range(groups):
                            at = ((n * groups + g) * kernel * kernel + p) * 2
                            dy, dx = offset[b, at, y, x], offset[b, at + 1, y, x]
                            part = slice(g * per_group, (g + 1) * per_group)
                            vec[part] = tap(frame[part], y - padding + r + dy, x - padding + s + dx)
                        samples.append(vec)
                samples = np.stack(samples)
                for a in range(heads):
                    query = q[b, 0, a * head:(a + 1) * head, y, x] * head ** -0.5
                    logits = samples[:, a * head:(a + 1) * head] @ query
                    weights = np.exp(logits - logits.max())
                    weights /= weights.sum()
                    values = samples[:, cq + a * head:cq + (a + 1) * head]
                    out[b, 0, a * head:(a + 1) * head, y, x] = weights @ values
    return out


def test_deform_attn_matches_kernel_arithmetic_at_other_sizes():
    rng = np.random.default_rng(11)
    batch, clip, cq, h, w, heads, groups = 2, 2, 8, 4, 5, 2, 4
    q = rng.normal(size=(batch * clip, 1, cq, h, w)).astype(np.float32)
    kv = rng.normal(size=(batch, clip, 2 * cq, h, w)).astype(np.float32)
    offset = rng.normal(0, 1.5, (batch * clip, clip * groups * 18, h, w)).astype(np.float32)
    ours = deform_attn(torch.from_numpy(q), torch.from_numpy(kv), torch.from_numpy(offset),
                       3, 3, 1, 1, 1, heads, groups, clip).numpy()
    assert rel_l2(ours, naive_deform_attn(q, kv, offset, heads, groups, clip)) < 1e-6


@pytest.mark.parametrize("size, window, shift", [
    ((2, 11, 13), (2, 8, 8), (0, 4, 4)),
    ((3, 9, 17), (2, 8, 8), (1, 4, 4)),
    ((2, 16, 8), (1, 8, 8), (0, 0, 0)),
])
def test_window_order_is_pad_roll_partition(size, window, shift):
    """Our one-gather window split moves the same values as the authors' pad/roll/split."""
    x = torch.randn(2, *size, 3)
    pads = [(wi - s % wi) % wi for s, wi in zip(size, window)]
    padded = torch.nn.functional.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
    rolled = torch.roll(padded, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
    expected = window_partition(rolled, window)
    gather, scatter = window_order(*size, window, shift, x.device)
    flat = torch.cat([x.reshape(2, -1, 3), x.new_zeros(2, 1, 3)], 1)
    windows = flat.index_select(1, gather)
    assert torch.equal(windows.reshape(expected.shape), expected)
    assert torch.equal(windows.index_select(1, scatter).view(x.shape), x)


@torch.inference_mode()
def authors_tiling(net, frames, sigma, tile, overlap):
    """test_video + test_clip as the parity README describes them, on a whole clip."""
    def starts(size, length, lap):
        return list(range(0, size - length, length - lap)) + [max(0, size - length)]

    rgb = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255).unsqueeze(0)
    lq = torch.cat([rgb, torch.full_like(rgb[:, :, :1], sigma / 255)], 2)
    _, t, _, h, w = lq.shape
    total, count = torch.zeros(1, t, 3, h, w), torch.zeros(1, t, 1, 1, 1)
    for d0 in starts(t, tile[0], overlap[0]):
        clip = lq[:, d0:d0 + tile[0]]
        size, lap = tile[1], overlap[1]
        rows, cols = starts(h, size, lap), starts(w, size, lap)
        part, weight = torch.zeros(1, clip.shape[1], 3, h, w), torch.zeros(1, clip.shape[1], 3, h, w)
        for r in rows:
            for c in cols:
                out = net(clip[..., r:r + size, c:c + size])
                mask = torch.ones_like(out)
                for tensor in (out, mask):
                    if r < rows[-1]:
                        tensor[..., -lap // 2:, :] *= 0
                    if c < cols[-1]:
                        tensor[..., :, -lap // 2:] *= 0
                    if r > rows[0]:
                        tensor[..., :lap // 2, :] *= 0
                    if c > cols[0]:
                        tensor[..., :, :lap // 2] *= 0
                part[..., r:r + size, c:c + size] += out
                weight[..., r:r + size, c:c + size] += mask
        total[:, d0:d0 + tile[0]] += part / weight
        count[:, d0:d0 + tile[0]] += 1
    out = (total / count).clamp(0, 1)[0].permute(0, 2, 3, 1)
    return (out * 255).round().to(torch.uint8).numpy()


class Memo(torch.nn.Module):
    """Runs the network once per distinct input, so comparing two tilings of the same
    clip costs one set of forwards."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.clip_size, self.nonblind_denoising = net.clip_size, net.nonblind_denoising
        self.outputs = {}

    def forward(self, lq):
        key = (tuple(lq.shape), lq.numpy().tobytes())
        if key not in self.outputs:
            self.outputs[key] = self.net(lq)
        return self.outputs[key].clone()


def test_stage_tiles_like_the_authors_at_another_size(random_tiny):
    """Odd clip length over several 4-frame tiles, 2x2 patches trimmed and averaged."""
    frames = noisy_clip(7, 150, 190, seed=3)
    memo = Memo(random_tiny)
    stage = RVRTStage(memo, CPU)
    _, out = stage.run(clip_info(frames, sigma=25, tile="4,136,136", tile_overlap="1,16,16"),
                       iter(frames))
    ours = np.stack(list(out))
    assert np.array_equal(ours, authors_tiling(memo, frames, 25, (4, 136), (1, 16)))


# ---------------------------------------------------------------- (2) weights

def official_state(seed: int = 0) -> dict:
    """Random tensors in the layout official_keys.json records for the released file."""
    layout = json.loads((FIXTURES / "official_keys.json").read_text())
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in layout["params"].items():
        if layout["dtypes"].get(name) == "int64":
            state[name] = torch.randint(0, 225, shape, generator=generator)
        else:
            state[name] = torch.randn(shape, generator=generator)
    return state


@needs_fixtures
def test_official_network_has_the_official_layout():
    layout = json.loads((FIXTURES / "official_keys.json").read_text())
    net = build_network()
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == layout["params"]
    assert sum(p.numel() for p in net.parameters()) == layout["num_params"]


@needs_fixtures
@pytest.mark.parametrize("wrapped", [True, False])
def test_official_checkpoint_loads_strictly(tmp_path, wrapped):
    state = official_state()
    path = tmp_path / "006_RVRT_videodenoising_DAVIS_16frames.pth"
    torch.save({"params": state} if wrapped else state, path)
    stage = create_stage(weights=path, device="cpu")
    assert torch.equal(stage.net.state_dict()["conv_last.weight"], state["conv_last.weight"])
    assert "sha256:" in stage.describe()["weights"]


@needs_fixtures
@pytest.mark.parametrize("change, key", [
    ("missing", "deform_align.forward_2.conv_offset.10.bias"),
    ("missing", "backbone.backward_1.main.5.0.residual_group.blocks.1.attn.relative_position_index"),
    ("extra", "deform_align.forward_2.conv_offset.12.weight"),
    ("misshaped", "backbone.forward_1.main.1.weight"),
])
def test_bad_checkpoint_names_the_key(tmp_path, change, key):
    state = damaged(official_state(), change, key)
    path = tmp_path / "bad.pth"
    torch.save({"params": state}, path)
    with pytest.raises(WeightsError, match=key.replace(".", r"\.")):
        load_weights(build_network(), path)


def test_absent_weights_are_a_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        create_stage(weights=tmp_path / "none.pth", device="cpu")


# ---------------------------------------------------------------- (3) stage

def test_stage_streams_with_bounded_buffering(random_tiny):
    """Outputs come while input is still being read, never more than a tile behind, one
    per input frame."""
    frames = noisy_clip(9, 136, 136, seed=4)
    read = []

    def source():
        for i, frame in enumerate(frames):
            read.append(i)
            yield frame

    stage = RVRTStage(random_tiny, CPU)
    info = clip_info(frames, tile="4,136,136", tile_overlap="2,0,0")
    _, out = stage.run(info, source())
    lags = []
    outputs = []
    for frame in out:
        outputs.append(frame)
        lags.append(len(read) - len(outputs))
    assert len(outputs) == len(frames)
    assert all(o.shape == frames[0].shape and o.dtype == np.uint8 for o in outputs)
    assert max(lags) <= 4 + 1 and lags[0] < len(frames) - 1


@pytest.mark.parametrize("count", [1, 3])
def test_short_clips_and_small_frames_are_padded(random_tiny, count):
    """Fewer frames than a tile (odd counts too) and frames under 132 px: the clip's last
    frame is repeated and the frame mirrored out to 132 px, then both are cropped."""
    frames = noisy_clip(count, 60, 50, seed=count)
    stage = RVRTStage(random_tiny, CPU)
    _, out = stage.run(clip_info(frames, sigma=10), iter(frames))
    ours = np.stack(list(out))
    assert ours.shape == frames.shape

    padded = np.pad(frames, ((0, count % 2), (0, 72), (0, 82), (0, 0)), mode="symmetric")
    padded[count:] = padded[count - 1]
    rgb = torch.from_numpy(padded).permute(0, 3, 1, 2).float().div(255).unsqueeze(0)
    lq = torch.cat([rgb, torch.full_like(rgb[:, :, :1], 10 / 255)], 2)
    with torch.inference_mode():
        expected = random_tiny(lq)[0, :count, :, :60, :50].clamp(0, 1)
    expected = (expected * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(ours, expected)


def test_float16_frames_in_and_out(random_tiny):
    frames = noisy_clip(2, 132, 132, seed=9)
    stage = RVRTStage(random_tiny, CPU)
    _, out8 = stage.run(clip_info(frames), iter(frames))
    halves = (frames / 255).astype(np.float16)
    _, out16 = stage.run(clip_info(halves), iter(halves))
    out8, out16 = np.stack(list(out8)), np.stack(list(out16))
    assert out16.dtype == np.float16 and 0 <= out16.min() and out16.max() <= 1
    assert np.abs(out16.astype(np.float32) * 255 - out8).max() <= 1.5


def footage_frames(count: int, start: int = 120) -> np.ndarray:
    """Frames of the clean cockatoo footage (a stretch no other test tunes on) at the
    pipeline's working size."""
    import av
    import cv2
    path = shared_dir() / "footage" / "cockatoo_clean.mp4"
    if not path.is_file():
        pytest.skip(f"no footage at {path}")
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for _, f in
                  zip(range(start + count), container.decode(video=0))][start:]
    return np.stack([cv2.resize(f[:, 160:1120], (360, 240), interpolation=cv2.INTER_AREA)
                     for f in frames])


@pytest.mark.parametrize("sigma", [5.0, 15.0, 30.0])
def test_sigma_is_the_clips_measured_noise_level(sigma):
    """No sigma given: the network is told the clip's own noise level, measured on its first
    frames (within 30 % of the Gaussian noise added to clean footage)."""
    clean = footage_frames(SIGMA_FRAMES).astype(np.float64)
    rng = np.random.default_rng(int(sigma))
    noisy = np.clip(np.round(clean + rng.normal(0, sigma, clean.shape)), 0, 255).astype(np.uint8)
    info = clip_info(noisy)
    measured = clip_noise(info, list(noisy))
    assert abs(measured / sigma - 1) < 0.30, measured


def test_sigma_from_the_analysis_or_the_user_wins_over_measuring(random_tiny):
    seen = []
    stage = RVRTStage(random_tiny, CPU)
    hook = random_tiny.register_forward_pre_hook(lambda m, args: seen.append(float(args[0][0, 0, 3, 0, 0])))
    frames = noisy_clip(2, 132, 132, seed=3)
    try:
        list(stage.run(clip_info(frames).replace(analysis={"noise_sigma": b"7.5"}), iter(frames))[1])
        list(stage.run(clip_info(frames, sigma=20).replace(analysis={"noise_sigma": b"7.5"}),
                       iter(frames))[1])
    finally:
        hook.remove()
    assert seen == pytest.approx([7.5 / 255, 20 / 255])


@pytest.mark.parametrize("params, message", [
    ({"sigma": "loud"}, "sigma"),
    ({"sigma": "300"}, "sigma"),
    ({"tile": "3,136,136"}, "even"),
    ({"tile": "16,100"}, "multiple of 8"),
    ({"tile": "16,160,128"}, "square"),
    ({"tile_overlap": "16,20,20"}, "tile_overlap"),
])
def test_bad_parameters_are_refused(random_tiny, params, message):
    frames = noisy_clip(2, 132, 132)
    with pytest.raises(StageError, match=message):
        RVRTStage(random_tiny, CPU).run(clip_info(frames, **params), iter(frames))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_half_precision_holds_on_cuda(random_tiny):
    frames = noisy_clip(6, 200, 240, seed=8)
    info = clip_info(frames, tile="4,160,160")
    outs = []
    for half in (False, True):
        stage = RVRTStage(random_tiny, torch.device("cuda"), half=half)
        outs.append(np.stack(list(stage.run(info, iter(frames))[1])).astype(np.int16))
        random_tiny.cpu()
    difference = np.abs(outs[0] - outs[1])
    assert difference.max() <= 3 and difference.mean() < 0.25


# ---------------------------------------------------------------- (4) the service

@needs_fixtures
def test_service_streams_the_pipeline_case():
    from services.stagekit.client import StageClient

    config = load_config(FIXTURES)
    case = next(c for c in config["cases"] if c["kind"] == "pipeline")
    arrays = load_arrays(FIXTURES, case["file"])
    frames = arrays["frames_in"]
    info = clip_info(frames, sigma=float(arrays["sigma"]),
                     tile=",".join(str(int(v)) for v in arrays["tile"]),
                     tile_overlap=",".join(str(int(v)) for v in arrays["tile_overlap"]))
    with running_service("services.rvrt", "--weights", str(FIXTURES / config["state"]["file"]),
                         "--arch", str(FIXTURES / "config.json"), "--device", "cpu",
                         env={"OMP_NUM_THREADS": "1"}) as address:
        with StageClient(address) as client:
            [described] = client.describe()
            assert (described["task"], described["model"]) == ("denoise", "rvrt")
            assert "tiny_state.safetensors sha256:" in described["weights"]
            assert (described["window_past"], described["scale"], described["fps_factor"]) == (15, 1, 1)
            with pytest.raises(StageError, match="sigma"):
                list(client.process(clip_info(frames, sigma="x"), iter(frames), batch=1)[1])
            out_info, out = client.process(info, iter(frames), batch=1)
            ours = np.stack(list(out))
    assert (out_info.width, out_info.height) == (frames.shape[2], frames.shape[1])
    expected = arrays["frames_out"]
    difference = np.abs(ours.astype(np.int16) - expected)
    tolerance = case["outputs"]["frames_out"]["tol"]
    assert difference.max() <= 1 and (difference > 0).mean() <= tolerance
