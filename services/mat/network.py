"""MAT's generator in PyTorch, with the parameter names of the authors' checkpoint.

``Generator`` = ``mapping`` (z -> ws, StyleGAN2's 8-layer MLP) + ``synthesis``:
``first_stage``, a mask-aware transformer that produces a coarse image at the input size
(partial convolutions down to 64x64 tokens, Swin-style window attention whose tokens only
attend to valid tokens, 64 -> 32 -> 16 -> 32 -> 64), then a convolutional U-Net
(``enc``/``dec``) with style-modulated decoder convolutions that refines it. Both stages'
outputs keep the known pixels (mask 1) and fill the hole (mask 0).

Randomness the authors leave in inference (dropout runs in eval mode too, twice per
forward, and 'random' noise maps) comes from a ``Draws``: given maps are used as they
are, anything else is drawn from a seeded generator, so a forward is reproducible.

Widths are module constants upstream; here they are the kwargs ``nf_base``/``nf_max``
(channel table ``min(nf_base // 2**stage, nf_max)``) and ``first_stage_dim``, whose
defaults are the released checkpoints' values.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .ops import activation_gain, bias_act, conv2d_resample, setup_filter, upsample2d

# The released checkpoints (Places 512, CelebA-HQ 512, FFHQ 512): generate_image.py's call.
OFFICIAL = {"z_dim": 512, "c_dim": 0, "w_dim": 512, "img_resolution": 512, "img_channels": 3}
WIDTHS = {"nf_base": 32768, "nf_max": 512, "first_stage_dim": 180}
# The first stage's transformer, hard-coded upstream: from 64x64 tokens to 16x16 and back.
TOKEN_RESOLUTION = 64
DEPTHS = (2, 3, 4, 3, 2)
RATIOS = (1, 1 / 2, 1 / 2, 2, 2)
WINDOWS = (8, 16, 16, 16, 8)
NUM_HEADS = 6
MLP_RATIO = 2
SQUARE = 16            # add_n, the dropped features' replacement, is a 16x16 map
STYLE_DOWNS = 4        # first stage's global style: 4 stride-2 convolutions, then a pool
# Upstream's additive attention masks use -100, not -inf: a fully masked row stays uniform.
MASKED = -100.0


# ---- randomness -------------------------------------------------------------------------

class Draws:
    """The random numbers of one forward: dropout keep-masks and 'random' noise maps.

    ``keep`` maps 'stg1' (B, N16, dim) and 'stg2' (B, nf(4), h16, w16) to {0, 1} masks;
    ``noise`` maps a StyleConv's module path (e.g. 'synthesis.dec.Dec_32x32.conv0') to its
    (B, 1, h, w) map. What is not given is drawn from ``generator`` (seed 0 by default)."""

    def __init__(self, keep: dict | None = None, noise: dict | None = None,
                 generator: torch.Generator | None = None):
        self.keep = dict(keep or {})
        self.noise = dict(noise or {})
        self.generator = generator or torch.Generator().manual_seed(0)

    def keep_mask(self, name: str, shape, like: torch.Tensor) -> torch.Tensor:
        if name in self.keep:
            return self.given(self.keep[name], f"keep-mask {name}", shape, like)
        return self.sample("keep", shape).to(like)

    def noise_map(self, path: str, shape, like: torch.Tensor) -> torch.Tensor:
        if path in self.noise:
            return self.given(self.noise[path], f"noise map {path}", shape, like)
        return self.sample("noise", shape).to(like)

    def sample(self, kind: str, shape) -> torch.Tensor:
        if kind == "keep":
            return torch.bernoulli(torch.full(tuple(shape), 0.5), generator=self.generator)
        return torch.randn(tuple(shape), generator=self.generator)

    @staticmethod
    def given(value, what: str, shape, like: torch.Tensor) -> torch.Tensor:
        value = torch.as_tensor(value)
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"{what} has shape {tuple(value.shape)}, the network needs {tuple(shape)}")
        return value.to(like)


# ---- StyleGAN2-ADA building blocks (networks/basic_module.py) ----------------------------

class FullyConnectedLayer(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 activation: str = "linear", lr_multiplier: float = 1, bias_init: float = 0):
        super().__init__()
        # Equalized learning rate: weights are stored unscaled, the gains apply at run time.
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.activation = activation
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        x = x.matmul(w.t())
        if self.activation == "linear" and b is not None:
            return x + b.reshape([-1 if i == x.ndim - 1 else 1 for i in range(x.ndim)])
        return bias_act(x, b, dim=x.ndim - 1, act=self.activation)


class Conv2dLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1):
        super().__init__()
        self.activation = activation
        self.up = up
        self.down = down
        self.register_buffer("resample_filter", setup_filter())
        self.padding = kernel_size // 2
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = activation_gain(activation)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: torch.Tensor, gain: float = 1) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        x = conv2d_resample(x, w, self.resample_filter, self.up, self.down, self.padding)
        b = None if self.bias is None else self.bias.to(x.dtype)
        return bias_act(x, b, act=self.activation, gain=self.act_gain * gain)


class ModulatedConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, up: int = 1, down: int = 1):
        super().__init__()
        self.demodulate = demodulate
        self.weight = nn.Parameter(torch.randn([1, out_channels, in_channels, kernel_size, kernel_size]))
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.up = up
        self.down = down
        self.register_buffer("resample_filter", setup_filter())
        self.affine = FullyConnectedLayer(style_dim, in_channels, bias_init=1)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        batch, in_channels, height, width = x.shape
        # Modulation and demodulation stay in float32: in half precision the sum of squares
        # can under- or overflow, and these tensors are small.
        style = self.affine(style.float()).view(batch, 1, in_channels, 1, 1)
        weight = self.weight * self.weight_gain * style
        if self.demodulate:
            decoefs = (weight.pow(2).sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
            weight = weight * decoefs.view(batch, self.out_channels, 1, 1, 1)
        weight = weight.view(batch * self.out_channels, in_channels, self.kernel_size, self.kernel_size)
        # One grouped convolution applies every sample's own kernel.
        x = x.view(1, batch * in_channels, height, width)
        x = conv2d_resample(x, weight.to(x.dtype), self.resample_filter, self.up, self.down,
                            self.padding, groups=batch)
        return x.view(batch, self.out_channels, *x.shape[2:])


class StyleConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, style_dim: int, resolution: int,
                 kernel_size: int = 3, up: int = 1, use_noise: bool = True,
                 activation: str = "lrelu", demodulate: bool = True):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, kernel_size, style_dim,
                                    demodulate=demodulate, up=up)
        self.use_noise = use_noise
        self.resolution = resolution
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.activation = activation
        self.act_gain = activation_gain(activation)
        self.path = ""   # the module path, which names this layer's noise map in Draws

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise_mode: str = "random",
                draws: Draws | None = None) -> torch.Tensor:
        x = self.conv(x, style)
        if self.use_noise and noise_mode != "none":
            if noise_mode == "const":
                noise = self.noise_const.to(x.dtype) * self.noise_strength.to(x.dtype)
            else:
                shape = (x.shape[0], 1, *x.shape[2:])
                noise = (draws or Draws()).noise_map(self.path, shape, x) * self.noise_strength.to(x.dtype)
            x = x + noise
        return bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain)


class ToRGB(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, style_dim: int, kernel_size: int = 1,
                 demodulate: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, kernel_size, style_dim,
                                    demodulate=demodulate)
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("resample_filter", setup_filter())

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None):
        out = bias_act(self.conv(x, style), self.bias.to(x.dtype))
        if skip is not None:
            if skip.shape != out.shape:
                skip = upsample2d(skip, self.resample_filter)
            out = out + skip
        return out


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


class MappingNet(nn.Module):
    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None, num_layers: int = 8,
                 activation: str = "lrelu", lr_multiplier: float = 0.01, w_avg_beta: float | None = 0.995):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        embed_features = w_dim if c_dim > 0 else 0
        features = [z_dim + embed_features] + [w_dim] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            setattr(self, f"fc{idx}", FullyConnectedLayer(
                features[idx], features[idx + 1], activation=activation, lr_multiplier=lr_multiplier))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z, c, truncation_psi: float = 1, truncation_cutoff: int | None = None):
        parts = []
        if self.z_dim > 0:
            parts.append(normalize_2nd_moment(z.to(torch.float32)))
        if self.c_dim > 0:
            parts.append(normalize_2nd_moment(self.embed(c.to(torch.float32))))
        x = torch.cat(parts, dim=1)
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x


# ---- the mask-aware transformer (networks/mat.py) ----------------------------------------

def token2feature(x: torch.Tensor, size) -> torch.Tensor:
    batch, _, channels = x.shape
    return x.permute(0, 2, 1).reshape(batch, channels, *size)


def feature2token(x: torch.Tensor) -> torch.Tensor:
    batch, channels = x.shape[:2]
    return x.view(batch, channels, -1).transpose(1, 2)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * windows, window, window, C), windows in row-major order."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window, window, channels)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    batch = windows.shape[0] // ((height // window) * (width // window))
    x = windows.view(batch, height // window, width // window, window, window, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(batch, height, width, -1)


@functools.lru_cache(maxsize=32)
def shifted_window_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """(windows, N, N) additive mask that keeps a shifted window's attention inside the
    regions that were contiguous before the cyclic shift."""
    regions = torch.zeros((1, height, width, 1))
    spans = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for index, (rows, cols) in enumerate((r, c) for r in spans for c in spans):
        regions[:, rows, cols, :] = index
    windows = window_partition(regions, window).view(-1, window * window)
    mask = windows.unsqueeze(1) - windows.unsqueeze(2)
    return mask.masked_fill(mask != 0, MASKED).masked_fill(mask == 0, 0.0)


class Conv2dLayerPartial(nn.Module):
    """A convolution that sees only valid pixels: outputs are rescaled by the fraction of
    valid inputs in their window, and the mask becomes 1 wherever any input was valid."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1):
        super().__init__()
        self.conv = Conv2dLayer(in_channels, out_channels, kernel_size, bias, activation, up, down)
        self.kernel_size = kernel_size
        self.slide_winsize = kernel_size ** 2
        self.stride = down
        self.padding = kernel_size // 2 if kernel_size % 2 == 1 else 0

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        if mask is None:
            return self.conv(x), None
        # In float32 even under autocast: in float16, 1e-8 vanishes and 0 * inf gives NaN.
        with torch.autocast(mask.device.type, enabled=False):
            mask = mask.float()
            ones = torch.ones(1, 1, self.kernel_size, self.kernel_size, device=mask.device)
            update = F.conv2d(mask, ones, stride=self.stride, padding=self.padding)
            ratio = self.slide_winsize / (update + 1e-8)
            update = torch.clamp(update, 0, 1)
            ratio = torch.mul(ratio, update)
        # The convolution's output is a new tensor: scale it in place.
        return self.conv(x).mul_(ratio.to(x.dtype)), update


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        self.fc1 = FullyConnectedLayer(in_features, hidden_features, activation="lrelu")
        self.fc2 = FullyConnectedLayer(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.fc1(x))


class WindowAttention(nn.Module):
    """Multi-head attention inside each window, where keys of hole tokens are masked out;
    a window with any valid token becomes valid for the next block."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = FullyConnectedLayer(dim, dim)
        self.k = FullyConnectedLayer(dim, dim)
        self.v = FullyConnectedLayer(dim, dim)
        self.proj = FullyConnectedLayer(dim, dim)

    def forward(self, x, mask_windows=None, mask=None):
        windows, tokens, channels = x.shape
        heads, head_dim = self.num_heads, channels // self.num_heads
        norm_x = F.normalize(x, p=2.0, dim=-1)
        q = self.q(norm_x).reshape(windows, tokens, heads, head_dim).permute(0, 2, 1, 3)
        k = self.k(norm_x).view(windows, -1, heads, head_dim).permute(0, 2, 3, 1)
        v = self.v(x).view(windows, -1, heads, head_dim).permute(0, 2, 1, 3)
        attn = (q @ k) * self.scale
        if mask is not None:
            count = mask.shape[0]
            attn = attn.view(windows // count, count, heads, tokens, tokens) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, heads, tokens, tokens)
        if mask_windows is not None:
            valid = mask_windows.squeeze(-1).unsqueeze(1).unsqueeze(1)
            # Upstream's fill: 0 -> -100, 1 -> 0, any other (soft) value is added as it is.
            attn = attn + valid.masked_fill(valid == 0, MASKED).masked_fill(valid == 1, 0.0).to(attn.dtype)
            mask_windows = torch.clamp(torch.sum(mask_windows, dim=1, keepdim=True), 0, 1).repeat(1, tokens, 1)
        attn = torch.softmax(attn, dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(windows, tokens, channels)
        return self.proj(x), mask_windows


class SwinTransformerBlock(nn.Module):
    def __init__(self, dim: int, input_resolution, num_heads: int, window_size: int = 7,
                 shift_size: int = 0, mlp_ratio: float = 4.0):
        super().__init__()
        self.dim = dim
        self.input_resolution = tuple(input_resolution)
        self.window_size = window_size
        self.shift_size = shift_size
        if min(self.input_resolution) <= self.window_size:
            # One window covers the whole map: no partition, no shift.
            self.shift_size = 0
            self.window_size = min(self.input_resolution)
        self.attn = WindowAttention(dim, num_heads)
        self.fuse = FullyConnectedLayer(dim * 2, dim, activation="lrelu")
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        # Kept for the checkpoint's layout; forward recomputes the mask for each size, as
        # upstream does (its size check never matches, so this buffer is never read).
        attn_mask = (shifted_window_mask(*self.input_resolution, self.window_size, self.shift_size).clone()
                     if self.shift_size > 0 else None)
        self.register_buffer("attn_mask", attn_mask)

    def forward(self, x: torch.Tensor, x_size, mask: torch.Tensor | None = None):
        height, width = x_size
        batch, length, channels = x.shape
        if length != height * width:
            raise ValueError(f"{length} tokens for a {height}x{width} map")
        window, shift = self.window_size, self.shift_size
        shortcut = x
        x = x.view(batch, height, width, channels)
        if mask is not None:
            mask = mask.view(batch, height, width, 1)
        if shift > 0:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
            if mask is not None:
                mask = torch.roll(mask, shifts=(-shift, -shift), dims=(1, 2))
        x_windows = window_partition(x, window).view(-1, window * window, channels)
        mask_windows = None
        if mask is not None:
            mask_windows = window_partition(mask, window).view(-1, window * window, 1)
        shift_mask = None
        if shift > 0:
            shift_mask = shifted_window_mask(height, width, window, shift).to(x.device, x.dtype)
        attended, mask_windows = self.attn(x_windows, mask_windows, mask=shift_mask)
        x = window_reverse(attended.view(-1, window, window, channels), window, height, width)
        if mask is not None:
            mask = window_reverse(mask_windows.view(-1, window, window, 1), window, height, width)
        if shift > 0:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
            if mask is not None:
                mask = torch.roll(mask, shifts=(shift, shift), dims=(1, 2))
        x = x.view(batch, height * width, channels)
        if mask is not None:
            mask = mask.view(batch, height * width, 1)
        x = self.fuse(torch.cat([shortcut, x], dim=-1))
        return self.mlp(x), mask


class PatchMerging(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, down: int = 2):
        super().__init__()
        self.conv = Conv2dLayerPartial(in_channels, out_channels, 3, activation="lrelu", down=down)
        self.down = down

    def forward(self, x, x_size, mask=None):
        return _resample_tokens(self.conv, x, x_size, mask, 1 / self.down)


class PatchUpsampling(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, up: int = 2):
        super().__init__()
        self.conv = Conv2dLayerPartial(in_channels, out_channels, 3, activation="lrelu", up=up)
        self.up = up

    def forward(self, x, x_size, mask=None):
        return _resample_tokens(self.conv, x, x_size, mask, self.up)


def _resample_tokens(conv, x, x_size, mask, factor):
    x = token2feature(x, x_size)
    if mask is not None:
        mask = token2feature(mask, x_size)
    x, mask = conv(x, mask)
    x_size = (int(x_size[0] * factor), int(x_size[1] * factor))
    return feature2token(x), x_size, None if mask is None else feature2token(mask)


class BasicLayer(nn.Module):
    """A run of Swin blocks (alternately shifted) at one token resolution, after an optional
    resampling, closed by a partial convolution with a residual connection."""

    def __init__(self, dim: int, input_resolution, depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float = 2.0, downsample: nn.Module | None = None):
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.depth = depth
        self.downsample = downsample
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, input_resolution, num_heads, window_size,
                                 shift_size=0 if i % 2 == 0 else window_size // 2, mlp_ratio=mlp_ratio)
            for i in range(depth)])
        self.conv = Conv2dLayerPartial(dim, dim, 3, activation="lrelu")

    def forward(self, x, x_size, mask=None):
        if self.downsample is not None:
            x, x_size, mask = self.downsample(x, x_size, mask)
        identity = x
        for block in self.blocks:
            x, mask = block(x, x_size, mask)
        if mask is not None:
            mask = token2feature(mask, x_size)
        x, mask = self.conv(token2feature(x, x_size), mask)
        x = feature2token(x) + identity
        if mask is not None:
            mask = feature2token(mask)
        return x, x_size, mask


class DecStyleBlock(nn.Module):
    def __init__(self, res: int, in_channels: int, out_channels: int, activation: str,
                 style_dim: int, use_noise: bool, demodulate: bool, img_channels: int):
        super().__init__()
        self.res = res
        self.conv0 = StyleConv(in_channels, out_channels, style_dim, 2 ** res, 3, up=2,
                               use_noise=use_noise, activation=activation, demodulate=demodulate)
        self.conv1 = StyleConv(out_channels, out_channels, style_dim, 2 ** res, 3,
                               use_noise=use_noise, activation=activation, demodulate=demodulate)
        self.toRGB = ToRGB(out_channels, img_channels, style_dim, kernel_size=1, demodulate=False)

    def forward(self, x, img, style, skip, noise_mode="random", draws=None):
        x = self.conv0(x, style, noise_mode, draws)
        x = x + skip
        x = self.conv1(x, style, noise_mode, draws)
        return x, self.toRGB(x, style, skip=img)


class FirstStage(nn.Module):
    """The coarse stage: partial convolutions to 64x64 tokens, the mask-aware transformer
    (with the dropout/add_n bottleneck at 16x16), style-modulated upsampling back."""

    def __init__(self, img_channels: int, img_resolution: int = 256, dim: int = 180, w_dim: int = 512,
                 use_noise: bool = False, demodulate: bool = True, activation: str = "lrelu"):
        super().__init__()
        res = TOKEN_RESOLUTION
        self.conv_first = Conv2dLayerPartial(img_channels + 1, dim, 3, activation=activation)
        down_time = int(np.log2(img_resolution // res))
        self.enc_conv = nn.ModuleList([
            Conv2dLayerPartial(dim, dim, 3, down=2, activation=activation) for _ in range(down_time)])
        self.tran = nn.ModuleList()
        for depth, ratio, window in zip(DEPTHS, RATIOS, WINDOWS):
            res = int(res * ratio)
            merge = None
            if ratio < 1:
                merge = PatchMerging(dim, dim, down=int(1 / ratio))
            elif ratio > 1:
                merge = PatchUpsampling(dim, dim, up=int(ratio))
            self.tran.append(BasicLayer(dim, [res, res], depth, NUM_HEADS, window, MLP_RATIO, merge))
        self.down_conv = nn.Sequential(
            *[Conv2dLayer(dim, dim, 3, down=2, activation=activation) for _ in range(STYLE_DOWNS)],
            nn.AdaptiveAvgPool2d((1, 1)))
        self.to_style = FullyConnectedLayer(dim, dim * 2, activation=activation)
        self.ws_style = FullyConnectedLayer(w_dim, dim, activation=activation)
        self.to_square = FullyConnectedLayer(dim, SQUARE * SQUARE, activation=activation)
        self.dec_conv = nn.ModuleList()
        for _ in range(down_time):
            res *= 2
            self.dec_conv.append(DecStyleBlock(res, dim, dim, activation, dim * 3, use_noise,
                                               demodulate, img_channels))

    def forward(self, images_in, masks_in, ws, noise_mode="random", draws=None):
        x = torch.cat([masks_in - 0.5, images_in * masks_in], dim=1)
        x, mask = self.conv_first(x, masks_in)
        skips = [x]
        for i, block in enumerate(self.enc_conv):
            x, mask = block(x, mask)
            if i != len(self.enc_conv) - 1:
                skips.append(x)
        x_size = tuple(x.shape[-2:])
        x, mask = feature2token(x), feature2token(mask)
        mid = len(self.tran) // 2
        style = None
        for i, block in enumerate(self.tran):
            if i < mid:
                x, x_size, mask = block(x, x_size, mask)
                skips.append(x)
            elif i > mid:
                x, x_size, _ = block(x, x_size, None)
                x = x + skips[mid - i]
            else:
                x, x_size, _ = block(x, x_size, None)
                x, style = self.bottleneck(x, x_size, ws, draws)
        x = token2feature(x, x_size).contiguous()
        img = None
        for i, block in enumerate(self.dec_conv):
            x, img = block(x, img, style, skips[len(self.dec_conv) - i - 1], noise_mode, draws)
        return img * (1 - masks_in) + images_in * masks_in

    def bottleneck(self, x, x_size, ws, draws):
        """Dropout of the 16x16 tokens towards a map drawn from w; the global style."""
        keep = (draws or Draws()).keep_mask("stg1", x.shape, x)
        ws = self.ws_style(ws[:, -1])
        add_n = self.to_square(ws).unsqueeze(1)
        add_n = F.interpolate(add_n, size=x.size(1), mode="linear", align_corners=False)
        add_n = add_n.squeeze(1).unsqueeze(-1)
        x = x * keep + add_n * (1 - keep)
        gs = self.to_style(self.down_conv(token2feature(x, x_size)).flatten(start_dim=1))
        return x, torch.cat([gs, ws], dim=1)


# ---- the second stage: a style-modulated U-Net --------------------------------------------

class EncFromRGB(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, activation: str):
        super().__init__()
        self.conv0 = Conv2dLayer(in_channels, out_channels, 1, activation=activation)
        self.conv1 = Conv2dLayer(out_channels, out_channels, 3, activation=activation)

    def forward(self, x):
        return self.conv1(self.conv0(x))


class ConvBlockDown(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, activation: str):
        super().__init__()
        self.conv0 = Conv2dLayer(in_channels, out_channels, 3, activation=activation, down=2)
        self.conv1 = Conv2dLayer(out_channels, out_channels, 3, activation=activation)

    def forward(self, x):
        return self.conv1(self.conv0(x))


class Encoder(nn.Module):
    def __init__(self, res_log2: int, img_channels: int, activation: str, nf):
        super().__init__()
        self.resolution = []
        for i in range(res_log2, 3, -1):
            res = 2 ** i
            self.resolution.append(res)
            block = (EncFromRGB(img_channels * 2 + 1, nf(i), activation) if i == res_log2
                     else ConvBlockDown(nf(i + 1), nf(i), activation))
            setattr(self, f"EncConv_Block_{res}x{res}", block)

    def forward(self, x):
        """Features by log2 of their native resolution, from the input's down to 16."""
        out = {}
        for res in self.resolution:
            x = getattr(self, f"EncConv_Block_{res}x{res}")(x)
            out[int(np.log2(res))] = x
        return out


class ToStyle(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, activation: str):
        super().__init__()
        self.conv = nn.Sequential(
            *[Conv2dLayer(in_channels, in_channels, 3, activation=activation, down=2) for _ in range(3)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = FullyConnectedLayer(in_channels, out_channels, activation=activation)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(start_dim=1))


class DecBlockFirstV2(nn.Module):
    def __init__(self, res: int, in_channels: int, out_channels: int, activation: str,
                 style_dim: int, use_noise: bool, demodulate: bool, img_channels: int):
        super().__init__()
        self.res = res
        self.conv0 = Conv2dLayer(in_channels, in_channels, 3, activation=activation)
        self.conv1 = StyleConv(in_channels, out_channels, style_dim, 2 ** res, 3,
                               use_noise=use_noise, activation=activation, demodulate=demodulate)
        self.toRGB = ToRGB(out_channels, img_channels, style_dim, kernel_size=1, demodulate=False)

    def forward(self, x, ws, gs, E_features, noise_mode="random", draws=None):
        x = self.conv0(x)
        x = x + E_features[self.res]
        x = self.conv1(x, torch.cat([ws[:, 0], gs], dim=1), noise_mode, draws)
        img = self.toRGB(x, torch.cat([ws[:, 1], gs], dim=1), skip=None)
        return x, img


class DecBlock(nn.Module):
    def __init__(self, res: int, in_channels: int, out_channels: int, activation: str,
                 style_dim: int, use_noise: bool, demodulate: bool, img_channels: int):
        super().__init__()
        self.res = res
        self.conv0 = StyleConv(in_channels, out_channels, style_dim, 2 ** res, 3, up=2,
                               use_noise=use_noise, activation=activation, demodulate=demodulate)
        self.conv1 = StyleConv(out_channels, out_channels, style_dim, 2 ** res, 3,
                               use_noise=use_noise, activation=activation, demodulate=demodulate)
        self.toRGB = ToRGB(out_channels, img_channels, style_dim, kernel_size=1, demodulate=False)

    def forward(self, x, img, ws, gs, E_features, noise_mode="random", draws=None):
        # Block 2^res takes ws[2res-9], ws[2res-8], ws[2res-7] (Dec_16x16 took 0 and 1).
        first = self.res * 2 - 9
        x = self.conv0(x, torch.cat([ws[:, first], gs], dim=1), noise_mode, draws)
        x = x + E_features[self.res]
        x = self.conv1(x, torch.cat([ws[:, first + 1], gs], dim=1), noise_mode, draws)
        img = self.toRGB(x, torch.cat([ws[:, first + 2], gs], dim=1), skip=img)
        return x, img


class Decoder(nn.Module):
    def __init__(self, res_log2: int, activation: str, style_dim: int, use_noise: bool,
                 demodulate: bool, img_channels: int, nf):
        super().__init__()
        self.Dec_16x16 = DecBlockFirstV2(4, nf(4), nf(4), activation, style_dim, use_noise,
                                         demodulate, img_channels)
        for res in range(5, res_log2 + 1):
            setattr(self, f"Dec_{2 ** res}x{2 ** res}",
                    DecBlock(res, nf(res - 1), nf(res), activation, style_dim, use_noise,
                             demodulate, img_channels))
        self.res_log2 = res_log2

    def forward(self, x, ws, gs, E_features, noise_mode="random", draws=None):
        x, img = self.Dec_16x16(x, ws, gs, E_features, noise_mode, draws)
        for res in range(5, self.res_log2 + 1):
            block = getattr(self, f"Dec_{2 ** res}x{2 ** res}")
            x, img = block(x, img, ws, gs, E_features, noise_mode, draws)
        return img


class SynthesisNet(nn.Module):
    def __init__(self, w_dim: int, img_resolution: int, img_channels: int = 3,
                 activation: str = "lrelu", use_noise: bool = True, demodulate: bool = True,
                 nf_base: int = WIDTHS["nf_base"], nf_max: int = WIDTHS["nf_max"],
                 first_stage_dim: int = WIDTHS["first_stage_dim"]):
        super().__init__()
        resolution_log2 = int(np.log2(img_resolution))
        if img_resolution != 2 ** resolution_log2 or img_resolution < 2 * TOKEN_RESOLUTION:
            raise ValueError(f"img_resolution must be a power of two >= {2 * TOKEN_RESOLUTION}, "
                             f"not {img_resolution}")
        nf = functools.partial(channels, nf_base=nf_base, nf_max=nf_max)
        self.num_layers = resolution_log2 * 2 - 3 * 2
        self.img_resolution = img_resolution
        self.resolution_log2 = resolution_log2
        self.first_stage = FirstStage(img_channels, img_resolution, first_stage_dim, w_dim,
                                      use_noise=False, demodulate=demodulate)
        self.enc = Encoder(resolution_log2, img_channels, activation, nf)
        self.to_square = FullyConnectedLayer(w_dim, SQUARE * SQUARE, activation=activation)
        self.to_style = ToStyle(nf(4), nf(2) * 2, activation)
        self.dec = Decoder(resolution_log2, activation, w_dim + nf(2) * 2, use_noise, demodulate,
                           img_channels, nf)

    def forward(self, images_in, masks_in, ws, noise_mode="random", return_stg1=False, draws=None):
        out_stg1 = self.first_stage(images_in, masks_in, ws, noise_mode, draws)
        x = images_in * masks_in + out_stg1 * (1 - masks_in)
        x = torch.cat([masks_in - 0.5, x, images_in * masks_in], dim=1)
        E_features = self.enc(x)
        fea_16 = E_features[4]
        keep = (draws or Draws()).keep_mask("stg2", fea_16.shape, fea_16)
        add_n = self.to_square(ws[:, 0]).view(-1, SQUARE, SQUARE).unsqueeze(1)
        add_n = F.interpolate(add_n, size=fea_16.size()[-2:], mode="bilinear", align_corners=False)
        fea_16 = fea_16 * keep + add_n * (1 - keep)
        E_features[4] = fea_16
        gs = self.to_style(fea_16)
        img = self.dec(fea_16, ws, gs, E_features, noise_mode, draws)
        img = img * (1 - masks_in) + images_in * masks_in
        return (img, out_stg1) if return_stg1 else img


def channels(stage: int, nf_base: int = WIDTHS["nf_base"], nf_max: int = WIDTHS["nf_max"]) -> int:
    """Upstream's ``nf`` table: {512: 64, 256: 128, 128: 256, <=64: 512} at the defaults."""
    return min(nf_base // 2 ** stage, nf_max)


class Generator(nn.Module):
    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                 synthesis_kwargs: dict | None = None, mapping_kwargs: dict | None = None):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNet(w_dim, img_resolution, img_channels, **(synthesis_kwargs or {}))
        self.mapping = MappingNet(z_dim, c_dim, w_dim, self.synthesis.num_layers, **(mapping_kwargs or {}))
        for path, module in self.named_modules():
            if isinstance(module, StyleConv):
                module.path = path

    def forward(self, images_in, masks_in, z, c=None, truncation_psi=1, truncation_cutoff=None,
                noise_mode="random", return_stg1=False, draws: Draws | None = None):
        """images_in (B, 3, H, W) RGB in [-1, 1]; masks_in (B, 1, H, W), 1 = known, 0 = hole;
        H and W multiples of img_resolution ('const' noise: exactly img_resolution)."""
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be random, const or none, not {noise_mode!r}")
        if c is None:
            c = torch.zeros([z.shape[0], self.c_dim], device=z.device)
        # The mapping is tiny and its lr-multiplied weights are large: always float32.
        with torch.autocast(z.device.type, enabled=False):
            ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        draws = draws or Draws()
        return self.synthesis(images_in, masks_in, ws.to(images_in.dtype), noise_mode=noise_mode,
                              return_stg1=return_stg1, draws=draws)


def build_network(z_dim: int = OFFICIAL["z_dim"], c_dim: int = OFFICIAL["c_dim"],
                  w_dim: int = OFFICIAL["w_dim"], img_resolution: int = OFFICIAL["img_resolution"],
                  img_channels: int = OFFICIAL["img_channels"], nf_base: int = WIDTHS["nf_base"],
                  nf_max: int = WIDTHS["nf_max"],
                  first_stage_dim: int = WIDTHS["first_stage_dim"]) -> Generator:
    """The generator from the authors' kwargs (defaults: the released checkpoints')."""
    widths = {"nf_base": nf_base, "nf_max": nf_max, "first_stage_dim": first_stage_dim}
    return Generator(z_dim, c_dim, w_dim, img_resolution, img_channels, synthesis_kwargs=widths)


def load_arch(arch: Path | str | dict | None) -> dict:
    """build_network kwargs: the official ones for None, else from a JSON file or dict
    (a parity config.json: its network's tiny_kwargs and extra_tiny_kwargs)."""
    if arch is None:
        return {**OFFICIAL, **WIDTHS}
    if not isinstance(arch, dict):
        arch = json.loads(Path(arch).read_text())
    if "networks" in arch:
        network = arch["networks"][0]
        extra = {k: v for k, v in network.get("extra_tiny_kwargs", {}).items() if k in WIDTHS}
        return {**OFFICIAL, **WIDTHS, **network["tiny_kwargs"], **extra}
    known = {**OFFICIAL, **WIDTHS}
    unknown = sorted(set(arch) - set(known))
    if unknown:
        raise ValueError(f"unknown MAT kwargs: {', '.join(unknown)}")
    return {**known, **arch}


def grid16(img_resolution: int, height: int, width: int) -> tuple[int, int]:
    """The size of the 16x16-level maps (dropout, add_n) for an input of height x width."""
    return SQUARE * height // img_resolution, SQUARE * width // img_resolution


def keep_shapes(network: Generator, height: int, width: int, batch: int = 1) -> dict:
    """The shapes of the two dropout keep-masks for inputs of height x width."""
    h16, w16 = grid16(network.img_resolution, height, width)
    dim = network.synthesis.first_stage.to_style.weight.shape[1]
    fea = network.synthesis.to_style.conv[0].weight.shape[1]
    return {"stg1": (batch, h16 * w16, dim), "stg2": (batch, fea, h16, w16)}


def param_count(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())
