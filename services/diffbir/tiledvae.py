"""The authors' "Tiled VAE" (``--vae_encoder_tiled`` / ``--vae_decoder_tiled``; their
``diffbir/utils/tilevae``, after multidiffusion-upscaler's), written for this project: the VAE
encoder or decoder run on overlapping tiles so that a large frame fits in memory.

API::

    c_img = tiled_encode_condition(vae, image, tile_size=256)   # as vae.encode_condition
    image = tiled_decode_latent(vae, z, tile_size=256)          # as vae.decode_latent

``tile_size`` is the authors' flag in image pixels (the decoder's tiles are ``tile_size // 8``
latent pixels, as their pipeline passes it); a frame smaller than a tile in either side is
encoded or decoded whole, as theirs. The image must be padded to multiples of 8 first (the
authors pad to 8, not 64, when tiling).

What the authors do, kept here:
- tiles: the input (image for the encoder, latent for the decoder) is cut into
  ceil((size - 2 pad) / tile) tiles per side, the tile then shrunk to the smallest size that
  still covers and is a multiple of 32, 16, ... 2 within the nominal tile, each tile grown by
  ``pad`` (32 encoder, 11 decoder) on every side inside the frame; only each tile's core
  (extended to the frame's edge where it is within ``pad`` of it) is written to the output;
- GroupNorm: the network runs tile by tile up to each GroupNorm; there every tile's per-group
  mean and variance are pooled, weighted by the tile's pixel count (the variance is the
  weighted mean of the tiles' variances: the spread between tile means is not added, as
  theirs), and every tile is normalised with the pooled statistics (eps of the layer);
- attention (the middle block's) is within each tile only;
- no fast mode (the authors call it with fast_encoder = fast_decoder = False).
Statistics are computed in float32 whatever the activations' precision (the authors compute
them in the activations' dtype and fall back to float32 on overflow).

Tiles wait between GroupNorms on ``park`` (the CPU when the network is on a GPU, as the
authors do, so that only one tile's activations are on the device).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .vae import (LATENT_SCALE, AttnBlock, AutoencoderKL, Decoder, Encoder, ResnetBlock,
                  decode_latent, encode_condition)

ENCODER_PAD, DECODER_PAD = 32, 11
SCALE = 8                     # the VAE's down/up-sampling factor


# --- the network as a list of steps ----------------------------------------------------------
# ("op", f): x = f(x); ("save", f): keep f(x) for the next "add"; ("add", None): x += kept;
# ("norm", GroupNorm): statistics pooled over all tiles, then applied.

Step = tuple[str, Callable | nn.GroupNorm | None]


def resnet_steps(block: ResnetBlock) -> list[Step]:
    shortcut = block.nin_shortcut if hasattr(block, "nin_shortcut") else (lambda x: x)
    return [("save", shortcut), ("norm", block.norm1), ("op", F.silu), ("op", block.conv1),
            ("norm", block.norm2), ("op", F.silu), ("op", block.conv2), ("add", None)]


def attn_steps(block: AttnBlock) -> list[Step]:
    return [("save", lambda x: x), ("norm", block.norm), ("op", block.attend), ("add", None)]


def level_steps(level: nn.Module, resample: str) -> list[Step]:
    steps = []
    for i, block in enumerate(level.block):
        steps += resnet_steps(block)
        if len(level.attn) > 0:
            steps += attn_steps(level.attn[i])
    if hasattr(level, resample):
        steps.append(("op", getattr(level, resample)))
    return steps


def mid_steps(mid: nn.Module) -> list[Step]:
    return resnet_steps(mid.block_1) + attn_steps(mid.attn_1) + resnet_steps(mid.block_2)


def network_steps(net: Encoder | Decoder) -> list[Step]:
    steps: list[Step] = [("op", net.conv_in)]
    if isinstance(net, Encoder):
        for level in net.down:
            steps += level_steps(level, "downsample")
        steps += mid_steps(net.mid)
    else:
        steps += mid_steps(net.mid)
        for level in reversed(net.up):
            steps += level_steps(level, "upsample")
    return steps + [("norm", net.norm_out), ("op", F.silu), ("op", net.conv_out)]


# --- GroupNorm over tiles --------------------------------------------------------------------

def group_stats(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, groups) biased variance and mean, in float32."""
    var, mean = torch.var_mean(x.float().reshape(x.shape[0], groups, -1), dim=2, unbiased=False)
    return var, mean


def pooled(stats: list[tuple[torch.Tensor, torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiles' (var, mean, pixels) pooled as the authors do: pixel-weighted means of the
    tiles' variances and of their means."""
    pixels = torch.tensor([n for *_, n in stats], dtype=torch.float32)
    weights = (pixels / pixels.sum()).to(stats[0][0].device)
    var = sum(w * v for w, (v, _, _) in zip(weights, stats))
    mean = sum(w * m for w, (_, m, _) in zip(weights, stats))
    return var, mean


def normalise(x: torch.Tensor, norm: nn.GroupNorm, var: torch.Tensor,
              mean: torch.Tensor) -> torch.Tensor:
    """``norm`` applied to x with the given statistics instead of x's own."""
    b, c = x.shape[:2]
    grouped = x.float().reshape(b, norm.num_groups, -1)
    out = ((grouped - mean[..., None]) / torch.sqrt(var[..., None] + norm.eps)).reshape(x.shape)
    out = out * norm.weight.float()[:, None, None] + norm.bias.float()[:, None, None]
    return out.to(x.dtype)


# --- tiles -----------------------------------------------------------------------------------

@dataclass
class Tile:
    x: torch.Tensor
    kept: list = field(default_factory=list)


def fitted_size(lower: int, upper: int) -> int:
    """The smallest size >= ``lower`` that is a multiple of 32 (else 16, 8, 4, 2) and not
    above ``upper``; ``lower`` itself when none is (the authors' get_best_tile_size)."""
    divider = 32
    while divider >= 2:
        if lower % divider == 0:
            return lower
        candidate = lower - lower % divider + divider
        if candidate <= upper:
            return candidate
        divider //= 2
    return lower


def split(height: int, width: int, tile: int, pad: int, scale: float
          ) -> list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
    """(input box, output box) per tile, row by row; boxes are (top, bottom, left, right),
    the input box in input pixels (core grown by ``pad``), the output box in output pixels
    (the core, or up to the frame edge within ``pad`` of it, times ``scale``)."""
    def cores(size: int) -> list[tuple[int, int]]:
        count = max(math.ceil((size - 2 * pad) / tile), 1)
        step = fitted_size(math.ceil((size - 2 * pad) / count), tile)
        return [(pad + i * step, min(pad + (i + 1) * step, size)) for i in range(count)]

    def output(core: tuple[int, int], size: int) -> tuple[int, int]:
        start = core[0] if core[0] > pad else 0
        end = core[1] if core[1] < size - pad else size
        return int(start * scale), int(end * scale)

    boxes = []
    for top, bottom in cores(height):
        for left, right in cores(width):
            grown = (max(0, top - pad), min(height, bottom + pad),
                     max(0, left - pad), min(width, right + pad))
            boxes.append((grown, output((top, bottom), height) + output((left, right), width)))
    return boxes


def run_steps(steps: list[Step], tiles: list[Tile], device: torch.device,
              park: torch.device) -> list[Tile]:
    """Every tile through ``steps``, tile by tile between GroupNorms."""
    pending = None
    segment: list[Step] = []
    for step in steps + [("norm", None)]:      # a last sync point ends the final segment
        if step[0] != "norm":
            segment.append(step)
            continue
        stats = []
        for tile in tiles:
            x = tile.x.to(device)
            if pending is not None:
                x = normalise(x, *pending)
            x = run_segment(segment, x, tile, device, park)
            if step[1] is not None:
                stats.append(group_stats(x, step[1].num_groups) + (x.shape[2] * x.shape[3],))
            tile.x = x.to(park)
        pending = (step[1], *pooled(stats)) if step[1] is not None else None
        segment = []
    return tiles


def run_segment(segment: list[Step], x: torch.Tensor, tile: Tile, device: torch.device,
                park: torch.device) -> torch.Tensor:
    for kind, fn in segment:
        if kind == "op":
            x = fn(x)
        elif kind == "save":
            tile.kept.append(fn(x).to(park))
        else:
            x = x + tile.kept.pop().to(device)
    return x


def tiled_forward(net: Encoder | Decoder, x: torch.Tensor, tile_size: int,
                  park: torch.device | None = None) -> torch.Tensor:
    """``net(x)`` in tiles of ``tile_size`` input pixels (the authors' VAEHook)."""
    decoder = isinstance(net, Decoder)
    pad = DECODER_PAD if decoder else ENCODER_PAD
    height, width = x.shape[2:]
    if max(height, width) <= 2 * pad + tile_size:
        return net(x)
    return assemble(net, x, split(height, width, tile_size, pad, SCALE if decoder else 1 / SCALE),
                    park)


def assemble(net: Encoder | Decoder, x: torch.Tensor, boxes: list, park: torch.device | None = None
             ) -> torch.Tensor:
    """The output of ``net`` on the tiles ``boxes`` (as ``split`` gives them), each tile's
    output box cut from its result and written in place."""
    device = x.device
    park = park or (torch.device("cpu") if device.type == "cuda" else device)
    scale = SCALE if isinstance(net, Decoder) else 1 / SCALE
    tiles = [Tile(x[:, :, top:bottom, left:right].to(park)) for (top, bottom, left, right), _ in boxes]
    done = run_steps(network_steps(net), tiles, device, park)
    height, width = (int(size * scale) for size in x.shape[2:])
    out = x.new_zeros(x.shape[0], done[0].x.shape[1], height, width, dtype=done[0].x.dtype)
    for tile, (grown, target) in zip(done, boxes):
        # Where the output box lies inside the tile's result.
        top, left = target[0] - int(grown[0] * scale), target[2] - int(grown[2] * scale)
        rows, cols = target[1] - target[0], target[3] - target[2]
        out[:, :, target[0]:target[1], target[2]:target[3]] = \
            tile.x[:, :, top:top + rows, left:left + cols].to(device)
    return out


def tiled_encode_condition(vae: AutoencoderKL, image: torch.Tensor,
                           tile_size: int = 256) -> torch.Tensor:
    """``encode_condition`` with the encoder in tiles of ``tile_size`` pixels."""
    if tile_size % SCALE:
        raise ValueError(f"the VAE encoder tile size must be a multiple of {SCALE}")
    if min(image.shape[2:]) < tile_size:
        return encode_condition(vae, image)
    moments = vae.quant_conv(tiled_forward(vae.encoder, image * 2 - 1, tile_size))
    return moments.chunk(2, dim=1)[0] * LATENT_SCALE


def tiled_decode_latent(vae: AutoencoderKL, z: torch.Tensor, tile_size: int = 256) -> torch.Tensor:
    """``decode_latent`` with the decoder in tiles of ``tile_size // 8`` latent pixels."""
    tile = tile_size // SCALE
    if min(z.shape[2:]) < tile:
        return decode_latent(vae, z)
    return tiled_forward(vae.decoder, vae.post_quant_conv(z / LATENT_SCALE), tile)
