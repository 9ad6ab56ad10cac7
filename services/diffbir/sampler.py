"""DiffBIR stage 2's samplers, as the authors ship them for ``--task sr``, over any denoiser.

- ``spaced``: the DDPM ancestral sampler on a respaced schedule (``SpacedSampler``, the v2
  paper setting with 50 steps);
- ``edm_dpm++_3m_sde``: DPM-Solver++(3M) SDE on the EDM sigmas (``EDMSampler`` with
  k-diffusion's ``sample_dpmpp_3m_sde``, eta 1, s_noise 1), the v2.1 release default with
  10 steps.

The network is a ``Model``: ``model(x, t, cond)`` -> the raw ControlLDM output (v or eps)
for the latent ``x``, integer timesteps ``t`` (one per sample) and a condition (the
positive or the negative prompt with the image latent); CFG is applied here, on the raw
output for ``spaced`` and on the denoised estimate for EDM, as upstream does.

Every random draw comes from a ``Noise``: ``RecordedNoise`` feeds the fixtures' draws;
``SeededNoise`` is the product's, one seed giving the start noise and every step's noise
(torch's CPU generator, so a seed means the same on every device; the EDM steps through
torchsde's ``BrownianTree``, the very noise process upstream uses: with the authors'
tree seed it reproduces their draws bit for bit, which a plain generator cannot).

Why not k-diffusion itself: its PyPI release imports its whole package (wandb, clean-fid,
accelerate, CLIP) to reach ``sampling``; the solver is 30 lines of arithmetic, written
here in the same float32 operation order and checked step by step against the authors'
recorded intermediates.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

import numpy as np
import torch

from . import schedule

SAMPLERS = ("edm_dpm++_3m_sde", "spaced")
Model = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
Trace = Optional[Callable[[str, torch.Tensor], None]]   # (name, value) of each step


class Noise(Protocol):
    def start(self, shape: tuple, device) -> torch.Tensor: ...
    def step(self, i: int, like: torch.Tensor, sigmas: torch.Tensor | None) -> torch.Tensor: ...


@dataclass
class RecordedNoise:
    """Given draws: ``x_T`` and ``draws[i]`` for step i (spaced: every step's randn_like;
    EDM: the Brownian-tree increments already divided by sqrt|d sigma|)."""

    x_T: torch.Tensor
    draws: torch.Tensor

    def start(self, shape: tuple, device) -> torch.Tensor:
        return self.x_T.to(device, torch.float32)

    def step(self, i: int, like: torch.Tensor, sigmas: torch.Tensor | None) -> torch.Tensor:
        return self.draws[i].to(like)


class SeededNoise:
    """All of a sample's randomness from one seed, drawn for one sample and broadcast over
    the batch: frames sampled with the same seed share their start and step noise, so a
    still scene gets the same texture in every frame instead of a new one each frame."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(int(seed))
        self.tree = None

    def start(self, shape: tuple, device) -> torch.Tensor:
        one = torch.randn((1, *shape[1:]), generator=self.generator)
        return one.to(device).expand(shape).contiguous()

    def step(self, i: int, like: torch.Tensor, sigmas: torch.Tensor | None) -> torch.Tensor:
        shape = (1, *like.shape[1:])
        if sigmas is None:
            return torch.randn(shape, generator=self.generator).to(like).expand_as(like)
        if self.tree is None:
            seed = int(torch.randint(0, 2 ** 63 - 1, [], generator=self.generator))
            self.tree = brownian_tree(shape, sigmas, seed)
        low, high = sigmas[i + 1].cpu(), sigmas[i].cpu()
        # k-diffusion's BrownianTreeNoiseSampler: the increment from sigma to sigma_next
        # (downwards, so negated) over sqrt|d sigma|.
        with warnings.catch_warnings():
            # torchsde rounds the tree's ends, so the smallest sigma reads as just outside;
            # upstream gets the same warning and the same draw.
            warnings.filterwarnings("ignore", "Should have ta>=t0")
            draw = -self.tree(low, high) / (high - low).abs().sqrt()
        return draw.to(like).expand_as(like)


def brownian_tree(shape: tuple, sigmas: torch.Tensor, seed: int):
    """torchsde's BrownianTree over [smallest positive sigma, largest], on the CPU (k-diffusion
    seeds it with a randint below 2**63 - 1)."""
    import torchsde

    positive = sigmas.detach().cpu()
    return torchsde.BrownianTree(positive[positive > 0].min(), torch.zeros(shape),
                                 positive.max(), entropy=seed)


# --- spaced (DDPM) ---------------------------------------------------------------------

@dataclass(frozen=True)
class SpacedTables:
    """``SpacedSampler.make_schedule``: the respaced coefficients, computed in float64 and
    kept in float32 as upstream registers them; index k = position in ``timesteps``."""

    timesteps: np.ndarray
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor

    @classmethod
    def build(cls, betas: np.ndarray, steps: int, device="cpu") -> "SpacedTables":
        training = np.cumprod(1.0 - betas)
        timesteps = schedule.spaced_timesteps(len(betas), steps)
        chosen = training[timesteps]
        previous = np.append(1.0, chosen[:-1])
        spaced_betas = 1.0 - chosen / previous
        alphas = 1.0 - spaced_betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        with np.errstate(divide="ignore"):   # zero SNR: 1/alpha_bar is inf, never used for v
            recip = 1.0 / alphas_cumprod
        tables = {
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": np.sqrt(recip),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(recip - 1),
            "posterior_variance": spaced_betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            "posterior_mean_coef1": spaced_betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
        }
        return cls(timesteps, **{k: torch.tensor(v, dtype=torch.float32, device=device)
                                 for k, v in tables.items()})


def sample_spaced(model: Model, cond, uncond, cfg: float, betas: np.ndarray,
                  parameterization: str, steps: int, shape: tuple, noise: Noise,
                  device="cpu", trace: Trace = None) -> torch.Tensor:
    """``SpacedSampler.sample``: from x_T down the respaced timesteps; pred_x0 from the CFG
    output (unclipped), the posterior mean, plus sqrt(variance) times the step's draw (the
    last step's draw is taken and multiplied by 0, as upstream)."""
    tables = SpacedTables.build(betas, steps, device)
    record(trace, "schedule_timesteps", torch.from_numpy(tables.timesteps))
    x = noise.start(shape, device)
    count = len(tables.timesteps)
    for i in range(count):
        k = count - 1 - i
        model_t = torch.full((shape[0],), int(tables.timesteps[k]), dtype=torch.long, device=device)
        out = guided(model, x, model_t, cond, uncond, cfg, trace)
        if parameterization == "eps":
            pred_x0 = tables.sqrt_recip_alphas_cumprod[k] * x - tables.sqrt_recipm1_alphas_cumprod[k] * out
        else:
            pred_x0 = tables.sqrt_alphas_cumprod[k] * x - tables.sqrt_one_minus_alphas_cumprod[k] * out
        mean = tables.posterior_mean_coef1[k] * pred_x0 + tables.posterior_mean_coef2[k] * x
        draw = noise.step(i, x, None)
        x = mean + float(k != 0) * torch.sqrt(tables.posterior_variance[k]) * draw
        record(trace, "x", x)
    return x


def guided(model: Model, x: torch.Tensor, t: torch.Tensor, cond, uncond, cfg: float,
           trace: Trace) -> torch.Tensor:
    """uncond + cfg (cond - uncond) of the raw outputs; one call when CFG is off."""
    record(trace, "model_t", t)
    if uncond is None or cfg == 1.0:
        out = model(x, t, cond)
        record(trace, "model_cond", out)
        return out
    out_cond, out_uncond = model(x, t, cond), model(x, t, uncond)
    record(trace, "model_cond", out_cond)
    record(trace, "model_uncond", out_uncond)
    return out_uncond + cfg * (out_cond - out_uncond)


def record(trace: Trace, name: str, value: torch.Tensor) -> None:
    if trace is not None:
        trace(name, value)


# --- EDM DPM++ 3M SDE ------------------------------------------------------------------

def edm_denoiser(model: Model, cond, uncond, cfg: float, parameterization: str,
                 sigmas: torch.Tensor, timesteps: torch.Tensor, trace: Trace):
    """``EDMSampler.convert_to_denoiser``: D(x, sigma) from the network's v or eps output
    with the EDM preconditioning; the network's t is the schedule timestep of the nearest
    sigma; CFG on D."""
    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if parameterization == "eps":
            c_skip, c_out = torch.ones_like(sigma), -sigma
        else:
            c_skip, c_out = 1.0 / (sigma ** 2 + 1.0), -sigma / (sigma ** 2 + 1.0) ** 0.5
        c_in = 1.0 / (sigma ** 2 + 1.0) ** 0.5
        t = timesteps[(sigma - sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)]
        c_in, c_out, c_skip = (c.view(-1, *([1] * (x.ndim - 1))) for c in (c_in, c_out, c_skip))

        record(trace, "model_t", t)

        def one(condition, name):
            out = model(x * c_in, t, condition)
            record(trace, name, out)
            return out * c_out + x * c_skip

        if uncond is None or cfg == 1.0:
            return one(cond, "model_cond")
        d_cond, d_uncond = one(cond, "model_cond"), one(uncond, "model_uncond")
        return d_uncond + cfg * (d_cond - d_uncond)

    return denoise


def sample_edm_dpmpp_3m_sde(model: Model, cond, uncond, cfg: float, betas: np.ndarray,
                            parameterization: str, steps: int, shape: tuple, noise: Noise,
                            device="cpu", trace: Trace = None, eta: float = 1.0,
                            s_noise: float = 1.0) -> torch.Tensor:
    """``EDMSampler.sample`` with ``sample_dpmpp_3m_sde``: x_T scaled by sqrt(1 + sigma_0^2),
    then per step the exponential-integrator update with the second (step 2) or third
    (later) order correction from the previous denoised estimates, plus the Brownian
    increment; the last step (to sigma 0) is the denoised estimate itself."""
    timesteps, sigmas = schedule.edm_schedule(betas, steps)
    sigmas = torch.tensor(sigmas, dtype=torch.float32, device=device)
    timesteps = torch.tensor(timesteps, dtype=torch.long, device=device)
    record(trace, "sigmas", sigmas)
    record(trace, "schedule_timesteps", timesteps)
    x = noise.start(shape, device) * torch.sqrt(1.0 + sigmas[0] ** 2.0)
    record(trace, "x_in0", x)
    denoise = edm_denoiser(model, cond, uncond, cfg, parameterization, sigmas, timesteps, trace)
    ones = x.new_ones([shape[0]])
    denoised_1 = denoised_2 = h = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i] * ones)
        record(trace, "denoised", denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = (-sigmas[i + 1].log()) - (-sigmas[i].log())
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * ((denoised - denoised_1) / (h_1 / h))
            if eta:
                x = x + (noise.step(i, x, sigmas) * sigmas[i + 1]
                         * (-2 * h * eta).expm1().neg().sqrt() * s_noise)
        record(trace, "x", x)
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


SAMPLE = {"spaced": sample_spaced, "edm_dpm++_3m_sde": sample_edm_dpmpp_3m_sde}


def sample(sampler: str, *args, **kwargs) -> torch.Tensor:
    """Run the named sampler (one of ``SAMPLERS``)."""
    return SAMPLE[sampler](*args, **kwargs)
