"""DiffBIR stage 2 around its networks: the authors' ``Pipeline.apply_cldm`` and the end of
``Pipeline.run`` (``diffbir/pipeline.py``), for ``--task sr``.

From the stage-1 output (B, 3, h0, w0) in [0, 1]:
1. zero-pad it (bottom, right) to multiples of 64, or of 8 when the diffusion is tiled;
2. the condition: the prompt and the negative prompt through the text encoder (penultimate
   layer), the image through the VAE encoder (posterior mean x 0.18215), the same latent
   for both; the latent padded to multiples of 8 (untiled);
3. sample from noise (``sampler.py``): each ControlLDM call is the IRControlNet's residuals
   times ``strength`` added into the UNet; tiled diffusion runs it on Gaussian-blended
   latent tiles (tile 512/8, stride 256/8), each with its slice of the image latent;
4. crop the latent, VAE-decode it (divided by 0.18215), crop to (h0, w0): the sample in
   about [-1, 1]. With ``vae_tiled`` the encoder and decoder run as the authors' Tiled VAE
   (``tiledvae.py``: tiles of 256 pixels, GroupNorm statistics pooled across tiles), which
   bounds their memory on large frames;
5. ``finish``: the wavelet colour fix (the sample's detail on the stage-1 output's lowest
   band), resized to the output size by the caller.

The defaults are the v2.1 release's: ``edm_dpm++_3m_sde``, 10 steps, CFG 6, strength 1,
seed 231, the authors' default prompts (their LLaVA caption is not run: the positive
prompt alone is what ``--captioner none`` gives).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, NamedTuple

import torch

from . import sampler, schedule
from .controlnet import denoise
from .pipeline import pad_to_multiples_of, tiled_windows, wavelet_reconstruction
from .tiledvae import tiled_decode_latent, tiled_encode_condition
from .vae import decode_latent, encode_condition

LATENT_FACTOR = 8           # the VAE's downscale

DEFAULT_POS_PROMPT = (
    "Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, "
    "hyper detailed photo - realistic maximum detail, 32k, Color Grading, ultra HD, extreme "
    "meticulous detailing, skin pore detailing, hyper sharpness, perfect without deformations.")
DEFAULT_NEG_PROMPT = (
    "painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, "
    "CG Style, 3D render, unreal engine, blurring, dirty, messy, worst quality, low quality, "
    "frames, watermark, signature, jpeg artifacts, deformed, lowres, over-smooth.")


@dataclass(frozen=True)
class Sampling:
    """How stage 2 samples (``inference.py``'s defaults for v2.1)."""

    sampler: str = "edm_dpm++_3m_sde"
    steps: int = 10
    cfg: float = 6.0
    strength: float = 1.0
    seed: int = 231
    prompt: str = DEFAULT_POS_PROMPT
    negative_prompt: str = DEFAULT_NEG_PROMPT
    tiled: bool = False             # --cldm_tiled
    tile_size: int = 512            # in pixels, as the authors give it
    tile_stride: int = 256
    vae_tiled: bool = False         # --vae_encoder_tiled and --vae_decoder_tiled
    vae_encoder_tile_size: int = 256
    vae_decoder_tile_size: int = 256


class Condition(NamedTuple):
    c_txt: torch.Tensor
    c_img: torch.Tensor


class Stage2:
    """The stage-2 networks (``checkpoints.Stage2Networks``) of one DiffBIR ``version`` on a
    device; ``autocast`` is the precision context their calls run in."""

    def __init__(self, nets, version: str = "v2.1",
                 autocast: Callable[[], object] = nullcontext):
        if version not in schedule.PARAMETERIZATION:
            raise ValueError(f"unknown DiffBIR version {version!r}")
        self.nets, self.version, self.autocast = nets, version, autocast
        self.betas = schedule.betas(version)
        self.parameterization = schedule.PARAMETERIZATION[version]
        self.text = lru_cache(maxsize=8)(self._text)

    # --- the networks' calls ---------------------------------------------------------

    def _text(self, prompt: str) -> torch.Tensor:
        """(1, 77, width) context of a prompt; a clip asks for the same two prompts for
        every frame, so they are encoded once."""
        with self.autocast():
            return self.nets.text_encoder.encode([prompt]).float()

    def vae_encode(self, image: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        """The condition latent of an image in [0, 1]: the posterior mean, scaled; the
        authors' Tiled VAE with ``tile`` (pixels; a smaller image is encoded whole)."""
        with self.autocast():
            if tile:
                return tiled_encode_condition(self.nets.vae, image, tile).float()
            return encode_condition(self.nets.vae, image).float()

    def vae_decode(self, z: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        with self.autocast():
            if tile:
                return tiled_decode_latent(self.nets.vae, z, tile).float()
            return decode_latent(self.nets.vae, z).float()

    def model(self, strength: float) -> sampler.Model:
        """ControlLDM.forward at control scale ``strength``."""
        def forward(x: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
            with self.autocast():
                return denoise(self.nets.unet, self.nets.controlnet, x, t, cond.c_txt,
                               cond.c_img, strength).float()
        return forward

    # --- the path --------------------------------------------------------------------

    @torch.inference_mode()
    def sample(self, cond_img: torch.Tensor, settings: Sampling = Sampling(),
               noise: sampler.Noise | None = None, trace: sampler.Trace = None) -> torch.Tensor:
        """``Pipeline.apply_cldm``: the decoded sample (B, 3, h0, w0), about [-1, 1]."""
        batch, _, h0, w0 = cond_img.shape
        tiling = settings.tiled or settings.vae_tiled
        padded = pad_to_multiples_of(cond_img, LATENT_FACTOR if tiling else 64)
        c_img = self.vae_encode(padded, settings.vae_tiled and settings.vae_encoder_tile_size)
        h1, w1 = c_img.shape[-2:]
        tile, stride = settings.tile_size // LATENT_FACTOR, settings.tile_stride // LATENT_FACTOR
        tiled = settings.tiled and min(h1, w1) >= tile
        if not tiled:
            c_img = pad_to_multiples_of(c_img, LATENT_FACTOR)
        cond = Condition(self.text(settings.prompt).expand(batch, -1, -1), c_img)
        uncond = Condition(self.text(settings.negative_prompt).expand(batch, -1, -1), c_img)
        record = trace or (lambda name, value: None)
        for name, value in (("c_img", c_img), ("c_txt", cond.c_txt), ("uc_txt", uncond.c_txt)):
            record(name, value)
        model = self.model(settings.strength)
        if tiled:
            model = tiled_model(model, tile, stride)
        x = sampler.sample(settings.sampler, model, cond, uncond, settings.cfg, self.betas,
                           self.parameterization, settings.steps, tuple(c_img.shape),
                           noise or sampler.SeededNoise(settings.seed), device=c_img.device,
                           trace=trace)
        z = x[..., :h1, :w1]
        record("z", z)
        return self.vae_decode(z, settings.vae_tiled and settings.vae_decoder_tile_size)[..., :h0, :w0]


def tiled_model(model: sampler.Model, tile: int, stride: int) -> sampler.Model:
    """``make_tiled_fn`` around ControlLDM.forward: the latent in Gaussian-blended tiles,
    each with the same window of the image latent."""
    def forward(x: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        def one(x_tile, window):
            top, bottom, left, right = window
            return model(x_tile, t, Condition(cond.c_txt, cond.c_img[..., top:bottom, left:right]))
        return tiled_windows(one, x, tile, stride)
    return forward


def finish(sample: torch.Tensor, cond_img: torch.Tensor) -> torch.Tensor:
    """The end of ``Pipeline.run`` before the resize: the sample's detail in the stage-1
    output's colours, in [0, 1] (unclamped)."""
    return wavelet_reconstruction((sample + 1) / 2, cond_img)
