"""DiffBIR's IRControlNet (``diffbir/model/controlnet.py:ControlNet``), written for this
project with the parameter names of the authors' ControlNet file (``DiffBIR_v2.1.pt``,
``v2.pth``, ``v1_general.pth``: unprefixed keys).

It is a copy of the SD UNet's encoder and middle block whose first conv takes
cat(x_t, c_img): 4 + ``hint_channels`` channels, where c_img is the VAE latent of the stage-1
output (no hint CNN). After every input block a 1x1 conv (``zero_convs.i``) gives one
residual, and ``middle_block_out`` the last: 13 in the released layout.

API::

    net = ControlNet(**kwargs)                        # configs/inference/cldm.yaml controlnet_cfg
    residuals = net(x, hint, timesteps, context)      # list of (B, C_i, h_i, w_i)
    control = scaled(residuals, strength)             # the authors' control_scales
    out = unet(x, timesteps, context, control=control)

``denoise(unet, controlnet, x, t, context, c_img, strength)`` is that whole call,
``ControlLDM.forward`` of the authors.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from . import unet
from .unet import Config, ControlledUnetModel, TimestepEmbedSequential, build_encoder, \
    embed_timesteps, time_embed

# configs/inference/cldm.yaml controlnet_cfg: the UNet's with hint_channels for out_channels.
OFFICIAL_KWARGS = {**{k: v for k, v in unet.OFFICIAL_KWARGS.items() if k != "out_channels"},
                   "hint_channels": 4}


def zero_conv(channels: int) -> TimestepEmbedSequential:
    # Zero-initialised in training; the checkpoint fills it.
    return TimestepEmbedSequential(nn.Conv2d(channels, channels, 1))


class ControlNet(nn.Module):
    def __init__(self, *, hint_channels: int, **kwargs):
        super().__init__()
        cfg = Config(**kwargs)
        self.model_channels = cfg.model_channels
        self.time_embed = time_embed(cfg.model_channels)
        blocks, middle, widths = build_encoder(cfg, cfg.in_channels + hint_channels)
        # Registered in the authors' order, so that state_dict() lists keys as their file.
        self.input_blocks = blocks
        self.zero_convs = nn.ModuleList(zero_conv(width) for width in widths)
        self.middle_block = middle
        self.middle_block_out = zero_conv(widths[-1])

    def embedding(self, timesteps: torch.Tensor) -> torch.Tensor:
        return embed_timesteps(self.time_embed, timesteps, self.model_channels)

    def forward(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor,
                context: torch.Tensor) -> list[torch.Tensor]:
        emb = self.embedding(timesteps)
        h = torch.cat([x, hint], dim=1)
        residuals = []
        for block, conv in zip(self.input_blocks, self.zero_convs):
            h = block(h, emb, context)
            residuals.append(conv(h, emb, context))
        h = self.middle_block(h, emb, context)
        residuals.append(self.middle_block_out(h, emb, context))
        return residuals


def scaled(residuals: Sequence[torch.Tensor], scales: float | Sequence[float]) -> list[torch.Tensor]:
    """Each residual times its control scale (one number: the same for all, the authors'
    ``[strength] * 13``)."""
    if isinstance(scales, (int, float)):
        scales = [float(scales)] * len(residuals)
    return [r * s for r, s in zip(residuals, scales)]


def denoise(denoiser: ControlledUnetModel, controlnet: ControlNet, x: torch.Tensor,
            timesteps: torch.Tensor, context: torch.Tensor, c_img: torch.Tensor,
            strength: float | Sequence[float] = 1.0) -> torch.Tensor:
    """The network's prediction (v or eps) for x at ``timesteps``: ``ControlLDM.forward``."""
    control = scaled(controlnet(x, c_img, timesteps, context), strength)
    return denoiser(x, timesteps, context, control=control)
