"""DDColor: parity with the authors' outputs, strict weights, streaming, the real service."""
from __future__ import annotations

import io
import json
import logging
import math
from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from services.ddcolor import MODEL, TASK
from services.ddcolor.network import SpectralConv2d, SinePosition, build_ddcolor, check_size
from services.ddcolor.parity import forward_trace, run_case, tiny_network
from services.ddcolor.stage import (UNUSED_KEYS, DDColorStage, checkpoint_state, create_stage,
                                    load_ddcolor, network_from_state, read_arch)
from services.stagekit import parity
from services.stagekit.monochrome import is_monochrome
from services.stagekit.parity import uint8_pm1
from services.stagekit.stage import ClipInfo, StageError
from services.stagekit.testing import check_cpu_precisions, clip_info, parity_dir, running_service
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


def colorize(stage: DDColorStage, frames, fmt: str = "rgb24", **params) -> np.ndarray:
    _, out = stage.run(clip_info(frames, fmt, **params), iter(frames))
    return np.stack(list(out))


def random_tiny(seed: int) -> torch.nn.Module:
    """The tiny architecture with fresh weights scaled as the fixtures' README describes:
    layer scales and BatchNorm statistics away from their trivial values, spectral vectors
    after one power iteration (not converged), ab of realistic size."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():  # the weights not set below come from the global RNG
        torch.manual_seed(seed)
        network = build_ddcolor(**read_arch(CONFIG))

    def noise(tensor, std=1.0, mean=0.0):
        return mean + std * torch.randn(tensor.shape, generator=generator)

    with torch.no_grad():
        for name, param in network.named_parameters():
            if name.endswith("gamma"):
                param.copy_(noise(param, 0.5))
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(noise(module.running_mean, 0.1))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape,
                                                          generator=generator))
            if isinstance(module, SpectralConv2d):
                matrix = module.weight_orig.flatten(1)
                v = F.normalize(matrix.t() @ F.normalize(noise(module.weight_u), dim=0), dim=0)
                module.weight_u.copy_(F.normalize(matrix @ v, dim=0))
                module.weight_v.copy_(v)
        last = network.decoder.color_decoder.color_embed.layers[-1]
        last.weight.copy_(noise(last.weight, 150 / math.sqrt(last.weight.shape[1])))
        last.bias.copy_(noise(last.bias, 7.5))
    return network.eval()


def smooth_scene(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random RGB image in [0.05, 0.95], float32."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0.05, 0.95, (height // 8 + 2, width // 8 + 2, 3)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).clip(0.05, 0.95)


def authors_pipeline(network, bgr_u8: np.ndarray, size: int) -> np.ndarray:
    """ColorizationPipeline.process as the parity README describes it, BGR uint8 in and out."""
    height, width = bgr_u8.shape[:2]
    image = (bgr_u8 / 255.0).astype(np.float32)
    orig_l = cv2.cvtColor(image, cv2.COLOR_BGR2Lab)[:, :, :1]
    small_l = cv2.cvtColor(cv2.resize(image, (size, size)), cv2.COLOR_BGR2Lab)[:, :, :1]
    grey = cv2.cvtColor(np.concatenate([small_l, 0 * small_l, 0 * small_l], -1),
                        cv2.COLOR_LAB2RGB)
    with torch.inference_mode():
        ab = network(torch.from_numpy(grey.transpose(2, 0, 1)).float()[None])
    ab = F.interpolate(ab, size=(height, width))[0].numpy().transpose(1, 2, 0)
    bgr = cv2.cvtColor(np.concatenate([orig_l, ab], -1), cv2.COLOR_LAB2BGR)
    return (bgr * 255.0).round().astype(np.uint8)


# --- (1) parity -------------------------------------------------------------------------

def test_parity_command_passes_on_the_shared_fixtures():
    out = io.StringIO()
    assert parity.run(FIXTURES, run_case, out=out) == 0, out.getvalue()


def test_intermediates_match_the_authors():
    """Both cases' debug arrays: encoder skips, pixel decoder, query maps; the pipeline's
    resize, L channels and network input."""
    config = fixture_config()
    for case in config["cases"]:
        arrays = parity.load_arrays(FIXTURES, case["file"])
        produced = run_case(config, case, arrays)
        for name, spec in case["debug"].items():
            value = parity.METRICS[spec["metric"]](produced[name], arrays[name])
            assert value <= spec["tol"], (case["file"], name, value)


@pytest.mark.parametrize("seed,batch,height,width", [(1, 3, 32, 32), (2, 2, 96, 64),
                                                     (3, 1, 64, 160)])
def test_other_seeds_and_sizes_batched_float32_equals_float64(seed, batch, height, width):
    """Other weights and sizes (the smallest, tall, wide): float32 in a batch equals each
    image alone in float64, so nothing depends on the fixture's batch, size or rounding."""
    network = random_tiny(seed)
    x = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))
    ours = forward_trace(network, x)["out"]
    wide = network.double()
    reference = np.concatenate([forward_trace(wide, x[i:i + 1].double())["out"]
                                for i in range(batch)])
    assert 1.0 < np.abs(reference).mean() and parity.rel_l2(ours, reference) <= 1e-5


def test_spectral_norm_uses_the_stored_vectors_as_torch_does():
    """Against torch.nn.utils.spectral_norm in eval mode: sigma from the stored u, v."""
    ours = SpectralConv2d(6, 4, 3, bias=True)
    theirs = torch.nn.utils.spectral_norm(torch.nn.Conv2d(6, 4, 3, padding=1)).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 6, 9, 7)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-6)


def test_position_encoding_is_detrs_for_any_size():
    """Against DETR's cumsum formulation on a (1, H, W) mask, for a non-square size."""
    height, width, feats = 5, 7, 8
    ones = torch.ones(1, height, width)
    ys = ones.cumsum(1) / (ones.cumsum(1)[:, -1:, :] + 1e-6) * 2 * math.pi
    xs = ones.cumsum(2) / (ones.cumsum(2)[:, :, -1:] + 1e-6) * 2 * math.pi
    dim_t = 10000 ** (2 * (torch.arange(feats) // 2) / feats)
    parts = []
    for embed in (ys, xs):
        angles = embed[..., None] / dim_t
        parts.append(torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), 4).flatten(3))
    expected = torch.cat(parts, 3).permute(0, 3, 1, 2).flatten(2).permute(2, 0, 1)
    assert torch.allclose(SinePosition(feats)(height, width, "cpu"), expected, atol=1e-6)


@pytest.mark.parametrize("seed,height,width,size", [(4, 37, 53, 64), (5, 120, 90, 96)])
def test_stage_follows_the_authors_pipeline_for_other_weights_and_sizes(seed, height, width,
                                                                       size):
    """Odd frame sizes, another working size: the streamed stage gives the authors' frames."""
    network = random_tiny(seed)
    frames = [(smooth_scene(height, width, seed + i) * 255).astype(np.uint8) for i in range(3)]
    out = colorize(DDColorStage(network), frames, scenes="all", input_size=str(size))
    expected = np.stack([authors_pipeline(network, f[..., ::-1], size)[..., ::-1]
                         for f in frames])
    assert uint8_pm1(out, expected) <= 0.001


def test_half_precision_autocast_keeps_the_output():
    """What CUDA runs (float16 autocast), tried on the CPU: no dtype clash anywhere, sigma
    and the LayerNorms kept in float32, the output within 1 % (0.1 % measured)."""
    network = tiny_network(fixture_config())
    x = torch.from_numpy(parity.load_arrays(FIXTURES, "tiny_case.npz")["x"])
    with torch.inference_mode():
        reference = network(x)
        with torch.autocast("cpu", dtype=torch.float16):
            half = network(x).float()
    assert parity.rel_l2(half, reference) <= 1e-2


def test_the_network_refuses_sizes_it_cannot_take():
    with pytest.raises(ValueError, match="multiples of 32"):
        check_size(48, 64)


# --- (2) weights ------------------------------------------------------------------------

def official_keys(name: str = "official_keys.json") -> dict:
    return json.loads((FIXTURES / name).read_text())


@pytest.mark.parametrize("name,encoder", [("official_keys.json", "convnext-l"),
                                          ("official_keys_tiny.json", "convnext-t")])
def test_official_layouts_are_the_authors(name, encoder):
    """Every key and shape of both released layouts, in the authors' order (built on the
    meta device: no memory)."""
    keys = official_keys(name)
    network = build_ddcolor(device="meta", encoder_name=encoder)
    assert [(k, list(v.shape)) for k, v in network.state_dict().items()] == \
        [(k, v) for k, v in keys["params"].items()]
    assert sum(p.numel() for p in network.parameters()) == keys["num_params"]


def official_state(name: str, seed: int = 0) -> dict:
    keys = official_keys(name)
    generator = torch.Generator().manual_seed(seed)
    return {key: (torch.zeros(shape, dtype=torch.int64) if keys["buffers"].get(key) == "int64"
                  else torch.randn(shape, generator=generator))
            for key, shape in keys["params"].items()}


def authors_file(tmp_path, state: dict, head: bool = True):
    """A checkpoint as the authors ship it: BasicSR's {'params': ...}, with the deleted
    classification head's keys still inside."""
    state = dict(state)
    if head:
        width = state["encoder.arch.norm.weight"].shape[0]
        state[UNUSED_KEYS[0]] = torch.randn(4, width)
        state[UNUSED_KEYS[1]] = torch.randn(4)
    path = tmp_path / "ddcolor.pth"
    torch.save({"params": state}, path)
    return path


def test_official_tiny_checkpoint_loads_strictly(tmp_path):
    """DDColor-T (55 M values), as a released .pth: recognised from the file, every value
    in place."""
    state = official_state("official_keys_tiny.json")
    network = load_ddcolor(authors_file(tmp_path, state))
    loaded = network.state_dict()
    assert network.encoder.arch.stages[2].__len__() == 9
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


@pytest.mark.slow
def test_official_large_checkpoint_loads_strictly(tmp_path):
    state = official_state("official_keys.json")
    network = load_ddcolor(authors_file(tmp_path, state))
    loaded = network.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_bare_state_dict_as_on_hugging_face_loads(tmp_path):
    """piddnad/ddcolor_* pytorch_model.bin: the state dict itself, no 'params'."""
    state = tiny_network(fixture_config()).state_dict()
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, path)
    network = load_ddcolor(path, **read_arch(CONFIG))
    assert torch.equal(network.state_dict()["refine_net.0.0.weight_u"],
                       state["refine_net.0.0.weight_u"])


@pytest.fixture(scope="module")
def official_layout():
    """The DDColor-L layout as meta tensors: shapes without memory (the checks that fail
    stop before any value is read)."""
    keys = official_keys()
    return {k: torch.empty(shape, device="meta") for k, shape in keys["params"].items()}


@pytest.mark.parametrize("damage,named", [
    ("missing", "decoder.layers.1.conv.0.weight_v"),
    ("missing", "encoder.arch.stages.2.26.gamma"),
    ("extra", "encoder.arch.head_cls.weight_orig"),
    ("extra", "decoder.color_decoder.transformer_ffn_layers.9.norm.bias"),
    ("misshaped", "decoder.color_decoder.query_feat.weight"),
    ("misshaped", "refine_net.0.0.weight_orig"),
])
def test_bad_checkpoint_names_the_key(official_layout, damage, named):
    state = dict(official_layout)
    if damage == "missing":
        del state[named]
    elif damage == "extra":
        state[named] = torch.empty(4, device="meta")
    else:
        state[named] = torch.empty(7, *state[named].shape[1:], device="meta")
    with pytest.raises(WeightsError, match=named.replace(".", r"\.")):
        network_from_state(checkpoint_state({"params": state}))


def test_only_the_deleted_heads_keys_are_dropped(official_layout):
    state = {**official_layout, UNUSED_KEYS[0]: torch.empty(4, 1536, device="meta"),
             UNUSED_KEYS[1]: torch.empty(4, device="meta")}
    assert set(checkpoint_state({"params": state})) == set(official_layout)


def test_an_encoder_of_unknown_width_is_named(official_layout):
    state = {**official_layout,
             "encoder.arch.downsample_layers.0.0.weight": torch.empty(128, 3, 4, 4, device="meta")}
    with pytest.raises(WeightsError, match=r"encoder\.arch\.downsample_layers\.0\.0\.weight"):
        network_from_state(state)


def test_create_stage_loads_the_tiny_weights_and_names_them():
    stage = create_stage(TINY_STATE, "cpu", CONFIG)
    described = stage.describe()
    assert described["weights"] == f"{TINY_STATE.name} sha256:{sha256_file(TINY_STATE)}"
    assert (stage.task, stage.model, stage.window, stage.scale) == (TASK, MODEL, (0, 0), 1)
    assert stage.working_size() == (64, 64)
    with pytest.raises(WeightsError, match="not found"):
        create_stage(FIXTURES / "absent.pth", "cpu", CONFIG)


# --- (3) the stage ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_stage():
    return create_stage(TINY_STATE, "cpu", CONFIG)


def grey_clip(count: int, height: int = 40, width: int = 56, seed: int = 0,
              step: tuple[int, int] = (1, 2)) -> np.ndarray:
    """A black-and-white scene panning ``step`` (dy, dx) pixels per frame, uint8 RGB."""
    dy, dx = step
    scene = smooth_scene(height + dy * count, width + dx * count, seed)
    grey = cv2.cvtColor((scene * 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)
    frames = [grey[dy * t:dy * t + height, dx * t:dx * t + width] for t in range(count)]
    return np.stack([np.dstack([f, f, f]) for f in frames])


def test_precision_is_taken_as_the_video_models_take_it():
    frames = grey_clip(2, seed=13)
    check_cpu_precisions(create_stage, lambda stage: colorize(stage, frames), mean_levels=1,
                         weights=TINY_STATE, device="cpu", arch=CONFIG)


def test_streaming_is_lazy_and_independent_of_the_callers_batches(tiny_stage):
    """Frames fed one at a time: each output comes out before the next input is read, and
    the result equals the clip handed over as one list."""
    frames = grey_clip(9)
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
    assert max(lag) <= tiny_stage.batch + 1
    np.testing.assert_array_equal(np.stack(streamed), colorize(tiny_stage, list(frames)))


def test_network_batches_give_the_frames_of_one_at_a_time(tiny_stage):
    frames = grey_clip(7)
    grouped = DDColorStage(tiny_stage.network, batch=3)
    assert uint8_pm1(colorize(grouped, frames), colorize(tiny_stage, frames)) <= 0.001


@pytest.mark.parametrize("count", [0, 1, 2, 5])
def test_every_frame_comes_out_of_any_clip(tiny_stage, count):
    frames = grey_clip(max(count, 1))[:count]
    info = ClipInfo("clip", width=56, height=40, fps=Fraction(25), frame_count=count)
    _, out = tiny_stage.run(info, iter(frames))
    out = list(out)
    assert len(out) == count and all(f.shape == (40, 56, 3) and f.dtype == np.uint8 for f in out)


def test_only_black_and_white_clips_are_coloured_unless_asked(tiny_stage):
    arrays = pipeline_arrays()
    colour = np.stack([np.ascontiguousarray(arrays["img_in_bgr_u8"][..., ::-1])] * 2)
    grey = grey_clip(2)
    assert not is_monochrome(colour[0]) and is_monochrome(grey[0])
    np.testing.assert_array_equal(colorize(tiny_stage, colour), colour)
    coloured = colorize(tiny_stage, grey)
    assert np.abs(coloured.astype(int) - grey).max() > 20
    everything = colorize(tiny_stage, colour, scenes="all")
    assert uint8_pm1(everything[0], arrays["img_out_bgr_u8"][..., ::-1]) <= 0.01


def test_the_output_keeps_the_frames_lightness(tiny_stage):
    frames = grey_clip(2)
    out = colorize(tiny_stage, frames)
    for before, after in zip(frames, out):
        lightness = [cv2.cvtColor(f, cv2.COLOR_RGB2Lab)[..., 0].astype(int) for f in (before, after)]
        assert np.abs(lightness[0] - lightness[1]).mean() < 1.5


def test_float16_frames_round_trip_without_quantisation(tiny_stage):
    frames = grey_clip(3)
    as_uint8 = colorize(tiny_stage, frames).astype(np.float32)
    as_float = colorize(tiny_stage, (frames / 255.0).astype(np.float16), fmt="rgbf16")
    assert as_float.dtype == np.float16
    scaled = as_float.astype(np.float32) * 255
    # float16 input moves L by ~1e-3, which this tiny network's steep ab follow here and there.
    error = np.abs(scaled - as_uint8)
    assert error.mean() <= 0.5 and np.percentile(error, 99) <= 1.5
    assert (np.abs(scaled - scaled.round()) > 0.05).mean() > 0.5   # not rounded to 8 bits


@pytest.mark.parametrize("params,message", [
    ({"scenes": "some"}, "scenes"), ({"smooth": "1.5"}, "smooth"), ({"smooth": "x"}, "smooth"),
    ({"input_size": "100"}, "multiples of 32"), ({"strength": "1"}, "unknown parameter"),
])
def test_bad_parameters_are_refused_before_any_frame(tiny_stage, params, message):
    with pytest.raises(StageError, match=message):
        tiny_stage.validate(clip_info(grey_clip(1), **params))


def flicker_along_the_pan(frames: np.ndarray, step: tuple[int, int]) -> float:
    """Mean |ab change| between consecutive output frames at the same scene point (the
    pan is known exactly), away from the borders, in OpenCV Lab units."""
    dy, dx = step
    ab = [cv2.cvtColor((f / 255.0).astype(np.float32), cv2.COLOR_RGB2Lab)[..., 1:] for f in frames]
    height, width = ab[0].shape[:2]
    inner = (slice(4, height - 4 - dy), slice(4, width - 4 - dx))
    moved = (slice(4 + dy, height - 4), slice(4 + dx, width - 4))
    return float(np.mean([np.abs(ab[t][inner] - ab[t - 1][moved]).mean()
                          for t in range(1, len(ab))]))


def test_smoothing_along_the_flow_removes_flicker(tiny_stage, caplog):
    """A panning black-and-white shot: per-frame colours flicker; smoothing (off by
    default) takes out most of it, measured at the true motion, and logs its own measure."""
    step = (1, 2)
    frames = grey_clip(10, 64, 96, seed=3, step=step)
    plain = colorize(tiny_stage, frames)
    with caplog.at_level(logging.INFO, logger="restoration.ddcolor"):
        smoothed = colorize(tiny_stage, frames, smooth="0.8")
    before, after = flicker_along_the_pan(plain, step), flicker_along_the_pan(smoothed, step)
    assert before > 1.0 and after < 0.5 * before, (before, after)
    assert "chroma flicker along the motion" in caplog.text
    np.testing.assert_array_equal(colorize(tiny_stage, frames, smooth="0"), plain)


# --- (4) the service --------------------------------------------------------------------

def test_service_streams_the_pipeline_case_as_the_authors():
    from services.stagekit.client import StageClient
    arrays = pipeline_arrays()
    case = next(c for c in fixture_config()["cases"] if c["kind"] == "pipeline")
    frames = np.stack([np.ascontiguousarray(arrays["img_in_bgr_u8"][..., ::-1])] * 5)
    expected = arrays["img_out_bgr_u8"][..., ::-1]
    info = clip_info(frames, scenes="all", input_size=str(int(arrays["input_size"])))
    with running_service("services.ddcolor", "--weights", str(TINY_STATE), "--arch", str(CONFIG),
                         "--device", "cpu", env={"OMP_NUM_THREADS": "1"}) as address, \
            StageClient(address) as client:
        described = client.describe()[0]
        out_info, out = client.process(info, iter(frames), batch=2)
        out = np.stack(list(out))
    assert (described["task"], described["model"]) == (TASK, MODEL)
    assert (described["window_past"], described["window_future"]) == (0, 0)
    assert (described["scale"], described["fps_factor"]) == (1, 1)
    assert described["weights"].endswith(sha256_file(TINY_STATE))
    assert out.shape == frames.shape and out_info.frame_count == len(frames)
    tolerance = case["outputs"]["img_out_bgr_u8"]["tol"]
    assert all(parity.max_abs(frame, expected) <= tolerance for frame in out)


# --- CUDA -------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_half_precision_on_cuda_holds_quality(monkeypatch):
    """float16 autocast against float32 on the GPU and against the CPU, on the tiny weights
    and on another seed's."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    frames = grey_clip(6, 96, 128, seed=9)
    for network in (tiny_network(fixture_config()), random_tiny(6)):
        cpu = colorize(DDColorStage(network), frames).astype(np.int16)
        fp32 = colorize(DDColorStage(network, "cuda", torch.float32), frames)
        fp16 = colorize(DDColorStage(network, "cuda", torch.float16), frames)
        error32 = np.abs(fp32.astype(np.int16) - cpu)
        assert error32.mean() <= 0.02 and error32.max() <= 2
        # float16 autocast on the CPU gives a mean error of 0.03 levels (max 2) on this clip.
        error = np.abs(fp16.astype(np.int16) - cpu)
        assert error.mean() <= 0.5 and error.max() <= 6
    assert create_stage(TINY_STATE, "cuda", CONFIG, precision="fp16").dtype == torch.float16
