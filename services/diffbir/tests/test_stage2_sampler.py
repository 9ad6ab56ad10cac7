"""DiffBIR stage 2 without its networks: the samplers, fed the authors' recorded network
outputs and noise draws, must retrace their steps; the colour fix and the resize must give
their frames; the product's seeded noise must be the authors' noise process."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from services.diffbir import MODEL, sampler, schedule
from services.diffbir.pipeline import quantise, resize_to, wavelet_reconstruction
from services.stagekit import parity
from services.stagekit.testing import parity_dir

FIXTURES = parity_dir(MODEL)
CONFIG = FIXTURES / "config.json"
needs_fixtures = pytest.mark.skipif(not CONFIG.is_file(), reason=f"no fixtures in {FIXTURES}")
SAMPLER_CASES = ["spaced4", "spaced10", "spaced_eps6", "edm10"]


def case(name: str) -> tuple[dict, dict]:
    config = json.loads(CONFIG.read_text())["stage2"]
    spec = next(c for c in config["cases"] if c["file"] == f"stage2_sampler_{name}_case.npz")
    return spec, parity.load_arrays(FIXTURES, spec["file"])


def replayed(spec: dict, arrays: dict) -> dict[str, np.ndarray]:
    """Run the case's sampler with a 'network' that hands back the recorded outputs in the
    order the authors' sampler asked for them; return what the sampler traced."""
    calls = {"cond": 0, "uncond": 0}

    def model(x, t, which):
        calls[which] += 1
        return torch.from_numpy(arrays[f"model_{which}"][calls[which] - 1])

    traced: dict[str, list] = {}
    params = spec["params"]
    edm = params["sampler"] != "spaced"
    noise = sampler.RecordedNoise(torch.from_numpy(arrays["x_T"]),
                                  torch.from_numpy(arrays["brownian_noise" if edm else "step_noise"]))
    sampler.sample(params["sampler"], model, "cond", "uncond", params["cfg_scale"],
                   schedule.betas(params["version"]), params["parameterization"],
                   params["steps"], arrays["x_T"].shape, noise,
                   trace=lambda name, value: traced.setdefault(name, []).append(value.clone()))
    out = {name: torch.stack(values).numpy() for name, values in traced.items()}
    out["x_steps"], out["model_t"] = out.pop("x"), out["model_t"][:, 0]
    out["schedule_timesteps"] = out["schedule_timesteps"][0]
    if edm:
        out["x_in0"], out["sigmas"] = out["x_in0"][0], out["sigmas"][0]
    return out


@needs_fixtures
@pytest.mark.parametrize("name", SAMPLER_CASES)
def test_sampler_retraces_the_authors_steps(name):
    spec, arrays = case(name)
    out = replayed(spec, arrays)
    for key in ("x_steps", "model_t", "schedule_timesteps") + (
            ("denoised", "x_in0", "sigmas") if "denoised" in out else ()):
        check = {**spec["outputs"], **spec["debug"]}[key]
        value = parity.METRICS[check["metric"]](out[key], arrays[key])
        assert value <= check["tol"], (key, value)


@needs_fixtures
@pytest.mark.parametrize("name", SAMPLER_CASES)
def test_colour_fix_and_resize_give_the_authors_frames(name):
    spec, arrays = case(name)
    fixed = wavelet_reconstruction((torch.from_numpy(arrays["x_decoded"]) + 1) / 2,
                                   torch.from_numpy(arrays["cond_img"]))
    out = resize_to(fixed, tuple(int(n) for n in arrays["output_size"]))
    frames = quantise(out).permute(0, 2, 3, 1).numpy()
    assert parity.rel_l2(fixed, arrays["wavelet_out"]) <= spec["debug"]["wavelet_out"]["tol"]
    assert parity.rel_l2(out, arrays["out_float"]) <= spec["outputs"]["out_float"]["tol"]
    assert parity.uint8_pm1(frames, arrays["out_uint8"]) <= spec["outputs"]["out_uint8"]["tol"]


@needs_fixtures
def test_brownian_tree_with_the_authors_seed_gives_their_draws():
    _, arrays = case("edm10")
    sigmas = torch.from_numpy(arrays["sigmas"])
    noise = sampler.SeededNoise(0)
    noise.tree = sampler.brownian_tree(arrays["x_T"].shape, sigmas, seed=int(arrays["brownian_seed"]))
    like = torch.zeros(arrays["x_T"].shape)
    draws = torch.stack([noise.step(i, like, sigmas) for i in range(len(sigmas) - 2)])
    assert torch.equal(draws, torch.from_numpy(arrays["brownian_noise"]))


@pytest.mark.parametrize("name", sampler.SAMPLERS)
def test_one_seed_gives_every_frame_the_same_noise(name):
    """Frames of a clip share start and step noise, whatever the batch; seeds differ."""
    def run(seed: int, batch: int) -> torch.Tensor:
        def model(x, t, cond):   # a smooth stand-in network: what matters is the noise
            return 0.5 * x + 0.01 * t.view(-1, 1, 1, 1).float()
        return sampler.sample(name, model, None, None, 1.0, schedule.betas("v2.1"), "v", 4,
                              (batch, 4, 6, 5), sampler.SeededNoise(seed))

    one, three, other = run(231, 1), run(231, 3), run(232, 1)
    assert torch.allclose(three, one.expand_as(three), atol=1e-5)
    assert (one - other).abs().mean() > 1e-2
