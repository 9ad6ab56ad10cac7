"""DiffBIR stage 2's noise schedules and sampler steps: the model-free part of stage 2.

Stage 2 (IRControlNet on Stable Diffusion 2.1, sampled from noise with the stage-1 output
as its condition) is a later issue; these are the numbers its samplers start from, checked
now against the authors' values (``stage2_schedule_reference.npz``):

- v1/v2: SD's "linear" betas (linear in sqrt(beta)), eps prediction;
- v2.1: the same betas rescaled to zero terminal SNR (Lin et al., "Common Diffusion Noise
  Schedules and Sample Steps are Flawed", 2023), v prediction;
- the EDM samplers' timesteps and sigmas (v2.1's default ``edm_dpm++_3m_sde``, 10 steps);
- the DDPM "spaced" sampler's timesteps (the v2 paper setting, 50 steps).
"""
from __future__ import annotations

import numpy as np

TRAIN_TIMESTEPS = 1000
LINEAR_START = 0.00085
LINEAR_END = 0.012
SIGMA_MAX_ALPHA_CUMPROD = 1e-8   # the authors force the first step's alpha_bar to this


def linear_betas(count: int = TRAIN_TIMESTEPS, start: float = LINEAR_START,
                 end: float = LINEAR_END) -> np.ndarray:
    """float64 betas, evenly spaced in sqrt(beta)."""
    return np.linspace(start ** 0.5, end ** 0.5, count, dtype=np.float64) ** 2


def zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Shift sqrt(alpha_bar) so the last step carries no signal, rescale it so the first
    is unchanged, and re-derive the betas (the last becomes 1)."""
    root = np.sqrt(np.cumprod(1.0 - betas))
    first, last = root[0], root[-1]
    root = (root - last) * (first / (first - last))
    alpha_bar = root ** 2
    alphas = np.concatenate([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1.0 - alphas


def edm_schedule(betas: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps, sigmas) of the EDM samplers, each with a final 0 appended: timesteps
    linspace(T-1, 0, steps, endpoint=False) truncated to int, sigma = sqrt((1-a)/a) of
    alpha_bar there with the first alpha_bar forced to 1e-8 (sigma_max = 1e4); sigmas
    in float32 as the sampler registers them."""
    alpha_bar = np.cumprod(1.0 - betas)
    timesteps = np.linspace(len(betas) - 1, 0, steps, endpoint=False).astype(np.int64)
    chosen = alpha_bar[timesteps].copy()
    chosen[0] = SIGMA_MAX_ALPHA_CUMPROD
    sigmas = np.append(((1 - chosen) / chosen) ** 0.5, 0).astype(np.float32)
    return np.append(timesteps, 0).astype(np.int64), sigmas


def spaced_timesteps(count: int, steps: int) -> np.ndarray:
    """The DDPM "spaced" sampler's timesteps (guided-diffusion's space_timesteps with one
    section), ascending. The stride is accumulated, not multiplied, as upstream does, so
    rounding lands where theirs does."""
    stride = 1.0 if steps <= 1 else (count - 1) / (steps - 1)
    taken, position = [], 0.0
    for _ in range(steps):
        taken.append(round(position))
        position += stride
    return np.array(sorted(set(taken)), dtype=np.int64)


# The released versions' schedules (configs/inference/diffusion_v2.1.yaml, diffusion.yaml).
PARAMETERIZATION = {"v2.1": "v", "v2": "eps", "v1": "eps"}


def betas(version: str) -> np.ndarray:
    """The training betas of a DiffBIR version: v2.1 zero-terminal-SNR, v1/v2 linear."""
    linear = linear_betas()
    return zero_terminal_snr(linear) if version == "v2.1" else linear
