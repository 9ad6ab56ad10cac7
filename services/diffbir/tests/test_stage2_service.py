"""DiffBIR stage 2 as the service runs it: the tiny fixture networks saved as the authors'
release files, found beside the stage-1 file, make stage 2 the default; frames of a clip
share their noise; the parameters reach the sampler; bad ones are refused."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from services.diffbir import MODEL
from services.diffbir.stage import STAGE2_FILES, create_stage, verify_checkpoint
from services.diffbir.stage2 import Condition, Sampling, tiled_model
from services.stagekit import parity
from services.stagekit.stage import StageError
from services.stagekit.testing import clip_info, parity_dir, running_service

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURES = parity_dir(MODEL)
CONFIG = FIXTURES / "config.json"
needs_fixtures = pytest.mark.skipif(not CONFIG.is_file(), reason=f"no fixtures in {FIXTURES}")
FAST = {"steps": 3, "seed": 7}     # few steps keep it quick; the path is the same


def release_folder(folder: Path, stage2: bool = True) -> Path:
    """The tiny weights under the release names and wrappings: the SwinIR and ControlNet
    as plain state dicts, the SD file as a Lightning checkpoint (under 'state_dict')."""
    torch.save(load_file(str(FIXTURES / "tiny_state.safetensors")),
               folder / "realesrgan_s4_swinir_100k.pth")
    if stage2:
        sd_name, control_name = STAGE2_FILES["v2.1"]
        torch.save({"state_dict": load_file(str(FIXTURES / "stage2_tiny_sd.safetensors"))},
                   folder / sd_name)
        torch.save(load_file(str(FIXTURES / "stage2_tiny_controlnet.safetensors")),
                   folder / control_name)
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return release_folder(tmp_path_factory.mktemp("diffbir"))


def still_clip(count: int = 2) -> np.ndarray:
    """A still scene: the same 16x16 frame ``count`` times (64x64 upscaled, 512x512 at
    stage 2, the authors' smallest condition)."""
    lq = parity.load_arrays(FIXTURES, "tiny_pipeline_case.npz")["lq_uint8"][0, :16, :16]
    return np.stack([lq] * count)


@needs_fixtures
def test_service_runs_stage_2_by_default(weights):
    from services.stagekit.client import StageClient
    clip = still_clip(1)
    with running_service("services.diffbir", "--weights", str(weights), "--arch", str(CONFIG),
                         "--device", "cpu", env={"OMP_NUM_THREADS": "2"}) as address:
        with StageClient(address, timeout=120) as client:
            out = np.stack(list(client.process(clip_info(clip, steps=1), iter(clip))[1]))
            stage1 = np.stack(list(client.process(clip_info(clip, stage=1), iter(clip))[1]))
            with pytest.raises(StageError, match="sampler"):
                list(client.process(clip_info(clip, sampler="ddim"), iter(clip))[1])
    assert out.shape == (1, 64, 64, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - stage1).mean() > 1     # stage 2 did something


@needs_fixtures
@pytest.mark.slow
def test_service_gives_the_embedded_frames_in_any_batch_and_a_still_scene_does_not_flicker(weights):
    from services.stagekit.client import StageClient
    lq = parity.load_arrays(FIXTURES, "tiny_pipeline_case.npz")["lq_uint8"]
    clip = np.stack([lq[0], lq[1], lq[0]])
    _, expected = create_stage(weights, "cpu", CONFIG).run(clip_info(clip, **FAST), iter(clip))
    with running_service("services.diffbir", "--weights", str(weights), "--arch", str(CONFIG),
                         "--device", "cpu") as address:
        with StageClient(address, timeout=300) as client:
            out = np.stack(list(client.process(clip_info(clip, **FAST), iter(clip), batch=2)[1]))
    assert np.array_equal(out, np.stack(list(expected)))
    assert np.array_equal(out[0], out[2])       # shared seed: the same frame gets the same


@pytest.fixture(scope="module")
def stage2(weights):
    return create_stage(weights, "cpu", CONFIG).stage2


@needs_fixtures
def test_every_parameter_reaches_the_path(stage2):
    """On a small condition (the path itself has no size floor): each parameter changes
    the sample; tiled diffusion blends tiles close to the whole-latent sample."""
    cond = torch.from_numpy(parity.load_arrays(
        FIXTURES, "stage2_sampler_spaced4_case.npz")["cond_img"]).repeat(1, 1, 1, 2)

    def run(**changes) -> torch.Tensor:
        return stage2.sample(cond, replace(Sampling(steps=3, seed=7), **changes))

    base = run()
    assert base.shape == cond.shape and torch.isfinite(base).all()
    assert torch.equal(run(), base)
    for changes in ({"sampler": "spaced"}, {"strength": 0.5}, {"cfg": 1.0}, {"seed": 8},
                    {"prompt": "a cat"}, {"negative_prompt": ""}, {"steps": 4}):
        assert (run(**changes) - base).abs().mean() > 1e-3, changes
    # One tile covering the whole latent is the untiled path (up to the blend's rounding).
    square = cond[..., :64]
    whole = stage2.sample(square, Sampling(steps=3, seed=7))
    one_tile = stage2.sample(square, Sampling(steps=3, seed=7, tiled=True, tile_size=64))
    assert (one_tile - whole).abs().max() < 1e-4



@needs_fixtures
def test_vae_tiling_reaches_the_tiled_vae_with_the_authors_tile_sizes(stage2, monkeypatch):
    from services.diffbir import stage2 as path
    asked = []
    for name in ("tiled_encode_condition", "tiled_decode_latent"):
        real = getattr(path, name)
        monkeypatch.setattr(path, name, lambda vae, x, tile, real=real, name=name: (
            asked.append((name, tuple(x.shape[-2:]), tile)) or real(vae, x, tile)))
    cond = torch.rand(1, 3, 60, 100)      # padded to multiples of 8, not of 64, when tiled
    out = stage2.sample(cond, Sampling(steps=1, vae_tiled=True, vae_encoder_tile_size=64,
                                       vae_decoder_tile_size=64))
    assert out.shape == cond.shape
    assert asked == [("tiled_encode_condition", (64, 104), 64),
                     ("tiled_decode_latent", (8, 13), 64)]


def test_tiled_diffusion_gives_each_tile_its_window_of_the_image_latent():
    """A pointwise 'network' is the same tiled or not, if and only if every tile is handed
    the image latent under it."""
    x, c_img = torch.randn(1, 4, 24, 40), torch.randn(1, 4, 24, 40)
    cond = Condition(torch.zeros(1, 77, 8), c_img)
    tiled = tiled_model(lambda x, t, cond: x * cond.c_img, 8, 4)
    assert torch.allclose(tiled(x, torch.zeros(1), cond), x * c_img, atol=1e-5)


@needs_fixtures
def test_describe_tells_stage_2_and_its_sampling(weights):
    described = create_stage(weights, "cpu", CONFIG).describe()
    assert (described["stage"], described["version"]) == (2, "v2.1")
    assert (described["sampler"], described["steps"], described["cfg"]) == ("edm_dpm++_3m_sde", 10, 6.0)


@needs_fixtures
@pytest.mark.parametrize("params, message", [
    ({"stage": 3}, "stage"), ({"steps": 0}, "steps"), ({"cfg": "x"}, "cfg"),
    ({"strength": "nan"}, "strength"), ({"seed": -1}, "seed"),
    ({"diffusion_tiled": 1, "diffusion_tile_size": 100}, "diffusion_tile_size"),
    ({"vae_tiled": 1, "vae_decoder_tile_size": 60}, "vae_decoder_tile_size")])
def test_bad_stage_2_params_are_refused(weights, params, message):
    stage = create_stage(weights, "cpu", CONFIG)
    with pytest.raises(StageError, match=message):
        stage.validate(clip_info(still_clip(), **params))


@needs_fixtures
def test_without_stage_2_weights_stage_1_is_the_default_and_stage_2_is_refused(tmp_path):
    stage = create_stage(release_folder(tmp_path, stage2=False), "cpu", CONFIG)
    assert stage.describe()["stage"] == 1
    with pytest.raises(StageError, match="stage 2 needs"):
        stage.validate(clip_info(still_clip(), stage=2))


@needs_fixtures
def test_weights_add_verifies_each_stage_2_file_strictly(weights, tmp_path):
    sd_name, control_name = STAGE2_FILES["v2.1"]
    verify_checkpoint(sd_name, weights / sd_name, CONFIG)
    verify_checkpoint(control_name, weights / control_name, CONFIG)
    broken = torch.load(weights / control_name)
    broken.pop(next(iter(broken)))
    torch.save(broken, tmp_path / control_name)
    with pytest.raises(Exception, match="missing key"):
        verify_checkpoint(control_name, tmp_path / control_name, CONFIG)
