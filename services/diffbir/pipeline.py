"""What the authors' ``inference.py --task sr`` does around the stage-1 network, as
functions (``BSRInferenceLoop.after_load_lq``, ``SwinIRPipeline.apply_cleaner``, the end of
``Pipeline.run``; ``make_tiled_fn``, ``sliding_windows`` and ``gaussian_weights`` from
``diffbir/utils/common.py``).

Image tensors are (B, 3, H, W) float RGB in [0, 1] unless said otherwise.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

SHORT_EDGE = 512     # stage 2's condition must be at least this on both sides
PAD_MULTIPLE = 64    # the network's unshuffle by 8 times its 8x8 windows
GAUSSIAN_VAR = 0.01

Network = Callable[[torch.Tensor], torch.Tensor]


def pillow_upscale(frame: np.ndarray, upscale: float) -> np.ndarray:
    """Pillow's uint8 bicubic resize to (int(W * upscale), int(H * upscale)): two
    fixed-point passes with an 8-bit intermediate, which float bicubic misses by up to
    4 levels; the authors' pre-upscale, so Pillow itself does it."""
    height, width = frame.shape[:2]
    size = (int(width * upscale), int(height * upscale))
    return np.asarray(Image.fromarray(frame).resize(size, Image.BICUBIC))


def float_upscale(x: torch.Tensor, upscale: float) -> torch.Tensor:
    """The same resize for frames that arrive as floats: Pillow's bicubic (a = -0.5) in
    float, without its 8-bit rounding; torch's antialiased bicubic is that kernel."""
    height, width = x.shape[-2:]
    size = (int(height * upscale), int(width * upscale))
    return F.interpolate(x, size=size, mode="bicubic", antialias=True).clamp(0, 1)


def resize_short_edge_to(x: torch.Tensor, size: int = SHORT_EDGE) -> torch.Tensor:
    """Antialiased bicubic resize so the short edge is ``size``; the long edge is
    truncated (int), not rounded, as upstream does."""
    height, width = x.shape[-2:]
    if height == width:
        target = (size, size)
    elif height < width:
        target = (size, int(width * (size / height)))
    else:
        target = (int(height * (size / width)), size)
    return F.interpolate(x, size=target, mode="bicubic", antialias=True)


def pad_to_multiples_of(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """Zeros at the bottom and right up to multiples of ``multiple``."""
    height, width = x.shape[-2:]
    pad_h, pad_w = ((math.ceil(n / multiple) * multiple - n) for n in (height, width))
    return F.pad(x, (0, pad_w, 0, pad_h), mode="constant", value=0.0)


def sliding_windows(height: int, width: int, tile: int, stride: int
                    ) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of every tile: origins 0, stride, ... up to size - tile,
    plus size - tile when the stride does not land on it."""
    def origins(size: int) -> list[int]:
        found = list(range(0, size - tile + 1, stride))
        if (size - tile) % stride:
            found.append(size - tile)
        return found

    return [(top, top + tile, left, left + tile)
            for top in origins(height) for left in origins(width)]


def gaussian_weights(width: int, height: int) -> torch.Tensor:
    """(height, width) float64 tile weights. The midpoint is (T-1)/2 along the width but
    T/2 along the height: upstream's asymmetry, kept because it shifts the blend."""
    def profile(size: int, mid: float) -> torch.Tensor:
        i = torch.arange(size, dtype=torch.float64)
        return (torch.exp(-(i - mid) ** 2 / (size * size) / (2 * GAUSSIAN_VAR))
                / math.sqrt(2 * math.pi * GAUSSIAN_VAR))

    return torch.outer(profile(height, height / 2), profile(width, (width - 1) / 2))


def tiled(network: Network, x: torch.Tensor, tile: int, stride: int) -> torch.Tensor:
    """The network over overlapping ``tile`` squares, blended by Gaussian weights: the sum
    of weighted tiles over the sum of weights (no padding; x is at least a tile)."""
    return tiled_windows(lambda x_tile, window: network(x_tile), x, tile, stride)


def tiled_windows(function: Callable[[torch.Tensor, tuple[int, int, int, int]], torch.Tensor],
                  x: torch.Tensor, tile: int, stride: int) -> torch.Tensor:
    """``make_tiled_fn``: ``function(tile, window)`` over the windows of x, blended; the
    window lets a caller cut its other inputs to match (stage 2's image latent)."""
    out = torch.zeros_like(x, dtype=torch.float32)
    count = torch.zeros_like(out)
    weights = gaussian_weights(tile, tile).to(device=x.device, dtype=torch.float32)
    for window in sliding_windows(*x.shape[-2:], tile, stride):
        top, bottom, left, right = window
        out[..., top:bottom, left:right] += function(x[..., top:bottom, left:right], window) * weights
        count[..., top:bottom, left:right] += weights
    return out / count


def apply_cleaner(network: Network, x: torch.Tensor, tile: int | None = None,
                  stride: int | None = None) -> torch.Tensor:
    """Stage 1 (``SwinIRPipeline.apply_cleaner``): the restored image, short edge at least
    512. Whole frame: raise the short edge to 512, zero-pad to 64, run, crop. Tiled
    (``tile`` given and the frame at least a tile on both sides): tiles at the frame's own
    size, then raise the short edge."""
    if tile and min(x.shape[-2:]) >= tile:
        output = tiled(network, x, tile, stride)
        return resize_short_edge_to(output) if min(output.shape[-2:]) < SHORT_EDGE else output
    if min(x.shape[-2:]) < SHORT_EDGE:
        x = resize_short_edge_to(x)
    height, width = x.shape[-2:]
    return network(pad_to_multiples_of(x))[..., :height, :width]


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Back to the upscaled frame's size (the end of ``Pipeline.run``)."""
    return F.interpolate(x, size=size, mode="bicubic", antialias=True)


def quantise(x: torch.Tensor) -> torch.Tensor:
    """uint8 as the authors save it: x * 255 clamped and truncated, not rounded."""
    return (x * 255.0).clamp(0, 255).to(torch.uint8)


# --- the end of stage 2 (``wavelet_reconstruction`` in ``diffbir/utils/common.py``) -------

WAVELET_LEVELS = 5


def wavelet_blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    """The 3x3 [1,2,1]^T [1,2,1] / 16 blur dilated by ``radius``, replicate-padded."""
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]],
                          dtype=x.dtype, device=x.device) / 16
    channels = x.shape[1]
    padded = F.pad(x, (radius,) * 4, mode="replicate")
    return F.conv2d(padded, kernel.expand(channels, 1, 3, 3), groups=channels, dilation=radius)


def wavelet_decomposition(x: torch.Tensor, levels: int = WAVELET_LEVELS
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low): the sum of the detail bands and the last, lowest band."""
    high = torch.zeros_like(x)
    for level in range(levels):
        low = wavelet_blur(x, 2 ** level)
        high += x - low
        x = low
    return high, low


def wavelet_reconstruction(content: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """The sample's detail bands on the condition's lowest band: stage 2 brings texture,
    the stage-1 output keeps the colours."""
    return wavelet_decomposition(content)[0] + wavelet_decomposition(colour)[1]
