"""MAT: parity with the authors' outputs, strict weights from their pickle, the stage, the service."""
from __future__ import annotations

import collections
import contextlib
import io
import json
import pickle
import subprocess
import sys
import types
from fractions import Fraction

import numpy as np
import pytest
import torch

from services.mat import MODEL, TASK
from services.mat.network import (OFFICIAL, WIDTHS, Draws, StyleConv, build_network, keep_shapes,
                                  load_arch, shifted_window_mask)
from services.mat.parity import run_case
from services.mat.stage import Layout, MatStage, create_stage, parse_bands
from services.stagekit import parity
from services.stagekit.bands import Bands, bands_entry
from services.stagekit.parity import uint8_pm1
from services.stagekit.stage import ClipInfo, StageError
from services.stagekit.testing import REPO, check_cpu_precisions, parity_dir, running_service
from services.stagekit.weights import WeightsError, load_checkpoint, sha256_file

FIXTURES = parity_dir(MODEL)
CONFIG = FIXTURES / "config.json"
TINY_STATE = FIXTURES / "tiny_state.safetensors"
PIPELINE = FIXTURES / "tiny_pipeline_case.npz"

pytestmark = [pytest.mark.skipif(not CONFIG.is_file(), reason=f"no fixtures in {FIXTURES}"),
              pytest.mark.usefixtures("one_torch_thread")]


def tiny_stage(**kwargs) -> MatStage:
    return create_stage(TINY_STATE, "cpu", CONFIG, **kwargs)


def random_tiny(seed: int):
    """The tiny architecture with fresh weights scaled like the fixtures' (README)."""
    torch.manual_seed(seed)
    network = build_network(**load_arch(CONFIG))
    with torch.no_grad():
        for name, value in network.named_parameters():
            if name.endswith("noise_strength"):
                value.normal_(0, 0.1)
            elif name.endswith("affine.bias"):
                value.normal_(1, 0.1)
            elif value.dim() == 1 and not name.startswith("mapping."):
                value.normal_(0, 0.05)
    return network.eval()


def clip(frames, fmt: str = "rgb24", **params) -> ClipInfo:
    height, width = frames[0].shape[:2]
    return ClipInfo("clip", width=width, height=height, fps=Fraction(30000, 1001),
                    pixel_format=fmt, params={k: str(v) for k, v in params.items()},
                    frame_count=len(frames))


def inpaint(stage: MatStage, frames, **params) -> np.ndarray:
    _, out = stage.run(clip(frames, **params), iter(frames))
    return np.stack(list(out))


def smooth_frames(count: int, height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (count, height // 8 + 1, width // 8 + 1, 3)).astype(np.float32)
    frames = coarse.repeat(8, axis=1).repeat(8, axis=2)[:, :height, :width]
    return frames.astype(np.uint8)


# --- (1) parity --------------------------------------------------------------------------

def test_parity_command_passes_on_the_shared_fixtures():
    printed = io.StringIO()
    assert parity.run(FIXTURES, run_case, out=printed) == 0, printed.getvalue()


def recorded_for(network, count: int, height: int, width: int, seed: int) -> dict:
    """Random draws in the fixtures' layout (row i for frame i) for padded inputs."""
    rng = np.random.default_rng(seed)
    layout = Layout.of(height, width, network.img_resolution)
    shapes = keep_shapes(network, layout.padded_height, layout.padded_width, count)
    arrays = {f"drop_mask_{name}": (rng.random(shape) < 0.5).astype(np.float32)
              for name, shape in shapes.items()}
    arrays["z"] = rng.standard_normal((count, network.z_dim))
    scale = layout.padded_height // network.img_resolution, layout.padded_width // network.img_resolution
    for path, module in network.named_modules():
        if isinstance(module, StyleConv) and module.use_noise:
            shape = (count, 1, module.resolution * scale[0], module.resolution * scale[1])
            arrays[f"noise__{path}"] = rng.standard_normal(shape).astype(np.float32)
    return arrays


def test_padded_frames_match_the_plain_forward_for_another_seed_and_size():
    """The stage (centred padding, band + padding as hole, 'random' noise off the native
    size, crop, rounding) against the network called directly on a hand-padded image."""
    network = random_tiny(seed=7)
    frames = smooth_frames(2, 90, 200, seed=7)          # pads to 128x256
    recorded = recorded_for(network, 2, 90, 200, seed=7)
    out = inpaint(MatStage(network, "cpu", recorded=recorded), frames, band=12)
    top, left = (128 - 90) // 2, (256 - 200) // 2
    image = np.zeros((2, 3, 128, 256), np.float32)
    image[:, :, top:top + 90, left:left + 200] = frames.transpose(0, 3, 1, 2) / 127.5 - 1
    mask = np.zeros((2, 1, 128, 256), np.float32)
    mask[:, :, top + 12:top + 78, left + 12:left + 188] = 1
    draws = Draws({k: torch.from_numpy(recorded[f"drop_mask_{k}"]) for k in ("stg1", "stg2")},
                  {k[7:]: torch.from_numpy(v) for k, v in recorded.items() if k.startswith("noise__")})
    with torch.inference_mode():
        plain = network(torch.from_numpy(image), torch.from_numpy(mask), torch.from_numpy(recorded["z"]),
                        noise_mode="random", draws=draws)
    plain = (plain * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    expected = plain[:, top:top + 90, left:left + 200]
    assert uint8_pm1(out, expected) <= 1e-3
    assert np.array_equal(out[:, 12:78, 12:188], frames[:, 12:78, 12:188])
    assert np.abs(out[:, :12].astype(int) - frames[:, :12]).mean() > 5   # the band was refilled


def test_float32_is_stable_against_float64_on_another_size():
    network = random_tiny(seed=11)
    gen = torch.Generator().manual_seed(11)
    image = torch.rand(1, 3, 128, 384, generator=gen) * 2 - 1
    mask = torch.ones(1, 1, 128, 384)
    mask[..., :20, :] = 0
    mask[..., 50:90, 100:300] = 0
    z = torch.randn(1, network.z_dim, generator=gen)
    with torch.inference_mode():
        single = network(image, mask, z, noise_mode="random", draws=Draws(generator=torch.Generator().manual_seed(3)))
        double = network.double()(image.double(), mask.double(), z.double(), noise_mode="random",
                                  draws=Draws(generator=torch.Generator().manual_seed(3)))
    assert single.shape == (1, 3, 128, 384)
    assert parity.rel_l2(single, double) <= 1e-5


def test_shifted_window_mask_keeps_attention_inside_contiguous_regions():
    mask = shifted_window_mask(16, 16, 8, 4)
    assert mask.shape == (4, 64, 64)
    assert torch.all(mask[0] == 0)                          # top-left window: one region
    region = torch.zeros(16, 16, dtype=torch.long)          # the regions, by brute force
    for i, rows in enumerate((slice(0, 8), slice(8, 12), slice(12, 16))):
        for j, cols in enumerate((slice(0, 8), slice(8, 12), slice(12, 16))):
            region[rows, cols] = 3 * i + j
    last = region[8:, 8:].reshape(-1)
    expected = torch.where(last[:, None] == last[None, :], 0.0, -100.0)
    assert torch.equal(mask[3], expected)


# --- (2) weights -------------------------------------------------------------------------

@contextlib.contextmanager
def authors_persistence():
    """A stand-in for the authors' torch_utils.persistence while writing a pickle, so that it
    names their reconstructor exactly as their files do."""
    package, module = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("only written here, never read")

    _reconstruct_persistent_obj.__module__ = module.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    module._reconstruct_persistent_obj = _reconstruct_persistent_obj
    package.persistence = module
    saved = {name: sys.modules.get(name) for name in (package.__name__, module.__name__)}
    sys.modules.update({package.__name__: package, module.__name__: module})
    try:
        yield module
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


class PersistentModule:
    """Pickles like a torch_utils.persistence object: the reconstructor, the module's
    source (here a line that would stop the process if anyone ran it) and its __dict__."""

    def __init__(self, reconstruct, class_name: str, state: dict):
        self.reconstruct, self.class_name, self.state = reconstruct, class_name, state

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src="raise SystemExit('the authors code ran')",
                    class_name=self.class_name, state=self.state)
        return self.reconstruct, (meta,)


def authors_pickle(path, state: dict, buffers: set, reconstruct) -> None:
    """The authors' file layout: {'G', 'D', 'G_ema', ...}, networks as nested persistent
    modules, index-named children in plain nn.ModuleList containers."""
    tree = lambda: {"_parameters": collections.OrderedDict(), "_buffers": collections.OrderedDict(),
                    "_modules": collections.OrderedDict()}
    root = tree()
    for name, value in state.items():
        node = root
        *parents, leaf = name.split(".")
        for part in parents:
            node = node["_modules"].setdefault(part, tree())
        node["_buffers" if name in buffers else "_parameters"][leaf] = (
            value if name in buffers else torch.nn.Parameter(value, requires_grad=False))

    def wrap(node, class_name):
        children = collections.OrderedDict((k, wrap(v, k)) for k, v in node["_modules"].items())
        if children and all(k.isdigit() for k in children):
            container = torch.nn.ModuleList()
            container._modules = children
            return container
        state = {"training": False, "_parameters": node["_parameters"], "_buffers": node["_buffers"],
                 "_non_persistent_buffers_set": set(), "_modules": children,
                 "weight_gain": np.float64(0.5), "_init_kwargs": {"z_dim": 512}}
        return PersistentModule(reconstruct, class_name, state)

    data = {"G": wrap(root, "Generator"), "D": wrap(tree(), "Discriminator"),
            "G_ema": wrap(root, "Generator"), "augment_pipe": None,
            "training_set_kwargs": {"resolution": 512}}
    with open(path, "wb") as fh:
        pickle.dump(data, fh, protocol=4)


def official_state(seed: int = 0) -> tuple[dict, set]:
    keys = json.loads((FIXTURES / "official_keys.json").read_text())
    gen = torch.Generator().manual_seed(seed)
    state = {name: torch.randn(shape, generator=gen) for name, shape in keys["params"].items()}
    return state, set(keys["buffers"])


def convert_in_its_own_process(path):
    done = subprocess.run([sys.executable, "-m", "services.mat.convert", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return path.with_suffix(".safetensors")


def test_official_layout_from_the_authors_pickle_loads_strictly(tmp_path):
    state, buffers = official_state()
    with authors_persistence() as persistence:
        authors_pickle(tmp_path / "Places_512_FullData.pkl", state, buffers,
                       persistence._reconstruct_persistent_obj)
    converted = convert_in_its_own_process(tmp_path / "Places_512_FullData.pkl")
    stage = create_stage(tmp_path, "cpu")      # a folder: the manifest's file, converted
    loaded = stage.network.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[name], value) for name, value in state.items())
    assert sum(p.numel() for p in stage.network.parameters()) == 61_562_518
    assert stage.weights_identity() == sha256_file(converted)


def test_the_authors_pickle_itself_is_refused_naming_the_converter(tmp_path):
    pkl = tmp_path / "Places_512_FullData.pkl"
    pkl.write_bytes(b"not read")
    with pytest.raises(WeightsError, match="services.mat.convert"):
        create_stage(pkl, "cpu", CONFIG)
    with pytest.raises(WeightsError, match="not converted"):
        create_stage(tmp_path, "cpu", CONFIG)


@pytest.mark.parametrize("damage, named", [
    ("missing", "synthesis.dec.Dec_32x32.conv0.noise_strength"),
    ("extra", "synthesis.first_stage.tran.0.blocks.0.attn.extra"),
    ("misshaped", "synthesis.first_stage.tran.2.blocks.1.attn.q.weight"),
])
def test_a_bad_key_fails_naming_it(tmp_path, damage, named):
    from safetensors.torch import save_file
    state = dict(load_checkpoint(TINY_STATE))
    if damage == "missing":
        del state[named]
    elif damage == "extra":
        state[named] = torch.zeros(1)
    else:
        state[named] = state[named][:, :-1].contiguous()
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsError, match=named.replace(".", r"\.")):
        create_stage(tmp_path / "bad.safetensors", "cpu", CONFIG)


def test_the_converter_writes_g_ema_only_and_runs_none_of_the_pickled_code(tmp_path):
    state = dict(load_checkpoint(TINY_STATE))
    buffers = {k for k in state if k.endswith(("noise_const", "w_avg", "resample_filter"))}
    with authors_persistence() as persistence:
        authors_pickle(tmp_path / "tiny.pkl", state, buffers, persistence._reconstruct_persistent_obj)
    converted = load_checkpoint(convert_in_its_own_process(tmp_path / "tiny.pkl"))
    assert set(converted) == set(state)
    assert all(torch.equal(converted[k], v) for k, v in state.items())
    stage = create_stage(tmp_path / "tiny.safetensors", "cpu", CONFIG)
    assert stage.network.img_resolution == 128


def test_official_kwargs_are_the_default():
    assert load_arch(None) == {**OFFICIAL, **WIDTHS}
    assert load_arch(CONFIG) == {"z_dim": 16, "c_dim": 0, "w_dim": 16, "img_resolution": 128,
                                 "img_channels": 3, "nf_base": 1024, "nf_max": 16, "first_stage_dim": 12}


# --- (3) the stage -----------------------------------------------------------------------

def test_small_and_large_batches_give_the_same_frames():
    frames = smooth_frames(5, 100, 120, seed=3)
    for draws in ("clip", "frame"):
        small, large = tiny_stage(), tiny_stage()
        small.max_batch, large.max_batch = 1, 3
        one_by_one = inpaint(small, frames, draws=draws)
        assert uint8_pm1(one_by_one, inpaint(large, frames, draws=draws)) <= 1e-3
        assert np.array_equal(one_by_one, inpaint(small, frames, draws=draws))   # reproducible
    same = inpaint(tiny_stage(), np.stack([frames[0]] * 2))
    assert np.array_equal(same[0], same[1])      # draws=clip: one fill for one picture


def test_every_frame_comes_out_with_its_known_pixels_untouched():
    frames = smooth_frames(3, 64, 80, seed=5)
    out = inpaint(tiny_stage(), frames, band="left=7,bottom=5")
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert np.array_equal(out[:, :59, 7:], frames[:, :59, 7:])
    assert not np.array_equal(out[:, :, :7], frames[:, :, :7])
    assert np.array_equal(inpaint(tiny_stage(), frames, band="none"), frames)


def test_the_analysis_bands_in_the_header_are_the_default_hole():
    frames = smooth_frames(3, 64, 80, seed=7)
    found = bands_entry(Bands(left=6))                   # what the orchestrator's analysis found
    out_info, out = tiny_stage().run(clip(frames).replace(analysis=found), iter(frames))
    out = np.stack(list(out))
    assert np.array_equal(out[:, :, 6:], frames[:, :, 6:])   # not 20 px on every side
    assert not np.array_equal(out[:, :, :6], frames[:, :, :6])
    # Rebuilt: a stage after it is told there are none left.
    assert json.loads(out_info.analysis["bands"]) == {e: 0 for e in ("left", "right", "top", "bottom")}
    forced = clip(frames, band="none").replace(analysis=found)   # a parameter beats the header
    assert np.array_equal(np.stack(list(tiny_stage().run(forced, iter(frames))[1])), frames)


@pytest.mark.parametrize("count", [0, 1])
def test_clips_shorter_than_a_batch(count):
    frames = smooth_frames(2, 48, 48, seed=1)[:count]
    stage = tiny_stage()
    stage.max_batch = 4
    info = clip(smooth_frames(1, 48, 48, seed=1)).replace(frame_count=count)
    assert len(list(stage.run(info, iter(frames))[1])) == count


def test_streams_with_memory_bounded_by_the_batch():
    frames = smooth_frames(4, 56, 56, seed=2)
    stage = tiny_stage()
    pulled = 0

    def source():
        nonlocal pulled
        for frame in frames:
            pulled += 1
            yield frame

    for n, _ in enumerate(stage.run(clip(frames), source())[1]):
        assert pulled - n <= stage.max_batch
    assert pulled == len(frames)


def test_precision_is_taken_as_the_video_models_take_it():
    frames = smooth_frames(2, 48, 64, seed=11)
    check_cpu_precisions(create_stage, lambda stage: inpaint(stage, frames, band="left=9"),
                         mean_levels=1, weights=TINY_STATE, device="cpu", arch=CONFIG)


def test_float16_frames_in_float16_frames_out():
    frames = (smooth_frames(2, 48, 64, seed=4) / 255).astype(np.float16)
    out = inpaint(tiny_stage(), frames, fmt="rgbf16")
    assert out.dtype == np.float16 and 0 <= out.min() and out.max() <= 1
    assert np.array_equal(out[:, 20:28, 20:44], frames[:, 20:28, 20:44])


@pytest.mark.parametrize("params, message", [
    ({"band": "30"}, "leaves nothing"), ({"band": "top=3,top=4"}, "band"),
    ({"draws": "sometimes"}, "draws"), ({"seed": "-1"}, "seed"), ({"radius": "3"}, "unknown")])
def test_bad_parameters_are_refused(params, message):
    with pytest.raises(StageError, match=message):
        tiny_stage().validate(clip(smooth_frames(1, 48, 48, seed=0), **params))


def test_layout_centres_the_frame_in_multiples_of_the_resolution():
    layout = Layout.of(240, 360, 512)
    assert (layout.padded_height, layout.padded_width, layout.top, layout.left) == (512, 512, 136, 76)
    mask = layout.mask(parse_bands("20", 360, 240))
    assert mask.sum() == (240 - 40) * (360 - 40) and mask[136 + 20, 76 + 20] == 1 and mask[136, 76] == 0
    assert (Layout.of(480, 720, 512).padded_height, Layout.of(480, 720, 512).padded_width) == (512, 1024)


def test_describe_tells_task_window_and_weights():
    described = tiny_stage().describe()
    assert (described["task"], described["model"]) == (TASK, MODEL)
    assert (described["window_past"], described["window_future"], described["scale"],
            described["fps_factor"]) == (0, 0, 1, 1)
    assert described["weights"] == sha256_file(TINY_STATE)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_half_precision_on_cuda_holds_quality():
    frames = smooth_frames(4, 240, 360, seed=9)
    cpu = inpaint(tiny_stage(), frames)
    full = inpaint(create_stage(TINY_STATE, "cuda", CONFIG, half=False), frames)
    half = inpaint(create_stage(TINY_STATE, "cuda", CONFIG, half=True), frames)
    # CUDA's float32 matmuls may use TF32, so compare by PSNR.
    assert psnr(full, cpu) >= 40
    assert psnr(half, full) >= 35


def psnr(ours: np.ndarray, reference: np.ndarray) -> float:
    mse = np.mean((ours.astype(np.float64) - reference) ** 2)
    return float(10 * np.log10(255 ** 2 / max(mse, 1e-12)))


# --- (4) the real service ----------------------------------------------------------------

def test_service_streams_the_pipeline_clip_like_the_authors(tmp_path):
    """The authors' image three times as a clip, streamed a frame per message; the service
    replays their recorded draws (dropout ran with unseeded draws upstream)."""
    from services.stagekit.client import StageClient
    arrays = parity.load_arrays(FIXTURES, PIPELINE.name)
    repeat = 3
    recorded = {k: np.repeat(v, repeat, axis=0) for k, v in arrays.items()
                if k in ("z", "drop_mask_stg1", "drop_mask_stg2")}
    np.savez(tmp_path / "draws.npz", **recorded)
    frames = np.repeat(arrays["image"], repeat, axis=0)
    expected = np.repeat(arrays["out"], repeat, axis=0)
    case = next(c for c in parity.load_config(FIXTURES)["cases"] if c["kind"] == "pipeline")
    with running_service("services.mat", "--weights", str(TINY_STATE), "--arch", str(CONFIG),
                         "--device", "cpu", env={"OMP_NUM_THREADS": "1",
                                                 "RESTORATION_MAT_DRAWS": str(tmp_path / "draws.npz")}
                         ) as address:
        with StageClient(address, timeout=120) as client:
            described = client.describe()[0]
            assert (described["task"], described["model"]) == (TASK, MODEL)
            assert described["weights"] == sha256_file(TINY_STATE)
            info, out = client.process(clip(frames, band=20), iter(frames), batch=1)
            out = np.stack(list(out))
            assert info.frame_count == repeat and out.shape == frames.shape
            assert uint8_pm1(out, expected) <= case["outputs"]["out"]["tol"]
            with pytest.raises(StageError, match="leaves nothing"):
                list(client.process(clip(frames, band=64), iter(frames))[1])
            assert client.describe()[0]["model"] == MODEL   # still serving
