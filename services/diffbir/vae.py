"""DiffBIR stage 2's autoencoder (``diffbir/model/vae.py:AutoencoderKL``, the SD 2.1 VAE),
written for this project with the parameter names of the SD checkpoint
(``first_stage_model.*`` there; unprefixed here).

API::

    vae = AutoencoderKL(embed_dim=4, ddconfig={...})    # configs/inference/cldm.yaml vae_cfg
    c_img = encode_condition(vae, image)   # image (B,3,H,W) in [0,1] -> (B,4,H/8,W/8)
    image = decode_latent(vae, z)          # z (B,4,h,w) scaled latent -> (B,3,8h,8w) ~[-1,1]

As the authors use it: the condition is the posterior **mean** of ``image*2-1`` (no sample)
times ``LATENT_SCALE``; decoding divides by it and is not clamped. ``vae.encode_moments``
gives the mean and the clamped log-variance. H and W must be multiples of 8.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .unet import Upsample   # nearest x2 then a 3x3 conv, as the VAE's (same key, 'conv')

# configs/inference/cldm.yaml vae_cfg (the SD 2.1 VAE).
OFFICIAL_KWARGS = {
    "embed_dim": 4,
    "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3,
                 "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                 "attn_resolutions": [], "dropout": 0.0},
}
LATENT_SCALE = 0.18215     # latent_scale_factor in cldm.yaml
LOGVAR_RANGE = (-30.0, 20.0)


def normalize(channels: int) -> nn.GroupNorm:
    # eps 1e-6 (not torch's 1e-5): the encoder's latent moves by ~3e-4 otherwise.
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """GN-swish-conv twice; a 1x1 ``nin_shortcut`` when the width changes."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalize(out_channels)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels (scale C^-0.5), 1x1-conv projections."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def attend(self, normed: torch.Tensor) -> torch.Tensor:
        """The attention branch of already normalised features (no residual)."""
        b, c, h, w = normed.shape
        tokens = lambda conv: conv(normed).reshape(b, 1, c, h * w).transpose(2, 3)  # noqa: E731
        out = F.scaled_dot_product_attention(tokens(self.q), tokens(self.k), tokens(self.v))
        return self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attend(self.norm(x))


class Downsample(nn.Module):
    """Zero-pad right and bottom by one, then a 3x3 stride-2 conv without padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


def mid_block(channels: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels)
    mid.attn_1 = AttnBlock(channels)
    mid.block_2 = ResnetBlock(channels, channels)
    return mid


def run_mid(mid: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(x)))


def level(blocks: list[nn.Module], attns: list[nn.Module]) -> nn.Module:
    """One resolution: ``block`` (res blocks), ``attn`` (one after each block, or none) and,
    set by the caller, a ``downsample`` or ``upsample``."""
    module = nn.Module()
    module.block = nn.ModuleList(blocks)
    module.attn = nn.ModuleList(attns)
    return module


def run_level(module: nn.Module, h: torch.Tensor, resample: str) -> torch.Tensor:
    for i, block in enumerate(module.block):
        h = block(h)
        if len(module.attn) > 0:
            h = module.attn[i](h)
    return getattr(module, resample)(h) if hasattr(module, resample) else h


class Encoder(nn.Module):
    def __init__(self, *, ch: int, ch_mult, num_res_blocks: int, attn_resolutions,
                 in_channels: int, resolution: int, z_channels: int, double_z: bool = True,
                 **_unused):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        width, size = ch, resolution
        for index, mult in enumerate(ch_mult):
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(width, ch * mult))
                width = ch * mult
                if size in attn_resolutions:
                    attns.append(AttnBlock(width))
            down = level(blocks, attns)
            if index != len(ch_mult) - 1:
                down.downsample = Downsample(width)
                size //= 2
            self.down.append(down)
        self.mid = mid_block(width)
        self.norm_out = normalize(width)
        self.conv_out = nn.Conv2d(width, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for down in self.down:
            h = run_level(down, h, "downsample")
        h = run_mid(self.mid, h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, *, ch: int, out_ch: int, ch_mult, num_res_blocks: int, attn_resolutions,
                 resolution: int, z_channels: int, **_unused):
        super().__init__()
        width = ch * ch_mult[-1]
        size = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, width, 3, padding=1)
        self.mid = mid_block(width)
        ups = []
        for index in reversed(range(len(ch_mult))):
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(width, ch * ch_mult[index]))
                width = ch * ch_mult[index]
                if size in attn_resolutions:
                    attns.append(AttnBlock(width))
            up = level(blocks, attns)
            if index != 0:
                up.upsample = Upsample(width)
                size *= 2
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)   # indexed by level, as the checkpoint: up.0 is full size
        self.norm_out = normalize(width)
        self.conv_out = nn.Conv2d(width, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = run_mid(self.mid, self.conv_in(z))
        for up in reversed(self.up):
            h = run_level(up, h, "upsample")
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    def __init__(self, embed_dim: int, ddconfig: dict):
        super().__init__()
        if not ddconfig.get("double_z", True):
            raise ValueError("the KL autoencoder needs double_z (mean and log-variance)")
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quant_conv = nn.Conv2d(2 * ddconfig["z_channels"], 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)

    def encode_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance (clamped to [-30, 20]) of x in [-1, 1]."""
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The image (~[-1, 1], unclamped) of an unscaled latent."""
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode_moments(x)[0])


def encode_condition(vae: AutoencoderKL, image: torch.Tensor) -> torch.Tensor:
    """The authors' ``vae_encode(image*2-1, sample=False)``: the scaled posterior mean."""
    return vae.encode_moments(image * 2 - 1)[0] * LATENT_SCALE


def decode_latent(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    """The authors' ``vae_decode``: the image of a scaled latent, ~[-1, 1], unclamped."""
    return vae.decode(z / LATENT_SCALE)
