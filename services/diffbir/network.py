"""DiffBIR's stage-1 restoration network (``diffbir/model/swinir.py:SwinIR``), written for
this project with the parameter and buffer names of the authors' checkpoint.

This SwinIR is a 1x network: the input is pixel-unshuffled by 8 (so the transformer runs on
1/8-size features), and the "nearest+conv" reconstruction upsamples by 8 again. Height and
width must therefore be multiples of 8 * window_size (64 in every released configuration).

The checkpoint holds, besides the learnable parameters, every block's
``relative_position_index`` and every shifted block's ``attn_mask`` (precomputed for
``img_size``), so both are buffers here too: the file loads strictly.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from services.stagekit.neural import config_kwargs, read_config

# configs/inference/swinir.yaml: v1 (general_swinir_v1.ckpt) and v2.1
# (realesrgan_s4_swinir_100k.pth) share it.
OFFICIAL_KWARGS = {
    "img_size": 64, "patch_size": 1, "in_chans": 3, "embed_dim": 180,
    "depths": [6, 6, 6, 6, 6, 6, 6, 6], "num_heads": [6, 6, 6, 6, 6, 6, 6, 6],
    "window_size": 8, "mlp_ratio": 2, "sf": 8, "img_range": 1.0,
    "upsampler": "nearest+conv", "resi_connection": "1conv",
    "unshuffle": True, "unshuffle_scale": 8,
}
# Constructor arguments that only matter for training; a config may carry them.
TRAINING_ONLY = ("hq_key", "lq_key", "learning_rate", "weight_decay", "drop_rate",
                 "attn_drop_rate", "drop_path_rate", "use_checkpoint")
MEAN_RGB = (0.4488, 0.4371, 0.4040)
UPSAMPLE_FEATURES = 64    # hard-coded upstream, the same in every configuration
MASKED = -100.0           # what the shift mask adds between regions (not -inf)


def relative_position_index(window: int) -> torch.Tensor:
    """(window², window²) index into the (2w-1)² bias table: the standard Swin index."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                        indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return relative[:, :, 0] * (2 * window - 1) + relative[:, :, 1]


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * windows, window², C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def shift_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """(windows, window², window²): 0 within a region of the rolled image, -100 across."""
    regions = torch.zeros(1, h, w, 1)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for index, (rows, cols) in enumerate((r, c) for r in bands for c in bands):
        regions[:, rows, cols, :] = index
    labels = window_partition(regions, window).squeeze(-1)
    differ = labels.unsqueeze(1) != labels.unsqueeze(2)
    return torch.zeros(differ.shape).masked_fill(differ, MASKED)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()   # exact erf GELU: the tanh form moves outputs by ~5e-5
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative-position bias."""

    def __init__(self, dim: int, window: int, num_heads: int, qkv_bias: bool = True,
                 qk_scale: float | None = None):
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def bias(self) -> torch.Tensor:
        """(heads, window², window²)."""
        n = self.window * self.window
        # index_select: advanced indexing takes a slow generic path on the CPU.
        table = self.relative_position_bias_table.index_select(
            0, self.relative_position_index.view(-1))
        return table.view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B * windows, window², C); mask: (windows, window², window²) or None."""
        windows, n, c = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).view(windows, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        bias = self.bias().unsqueeze(0)
        if mask is not None:
            # One additive term per window; 4-D so that PyTorch's fused kernels take it.
            bias = bias + mask.unsqueeze(1).to(bias.dtype)
            images = windows // mask.shape[0]
            bias = bias.expand(images, -1, -1, -1, -1).reshape(windows, heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(windows, n, c))


class SwinTransformerBlock(nn.Module):
    """Pre-norm window attention (shifted by half a window in odd blocks), then an MLP."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int,
                 window_size: int, shift_size: int, mlp_ratio: float, qkv_bias: bool = True,
                 qk_scale: float | None = None):
        super().__init__()
        self.input_resolution = input_resolution
        if min(input_resolution) <= window_size:
            # Upstream's rule: a feature map no larger than a window is one unshifted window.
            shift_size, window_size = 0, min(input_resolution)
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        stored = shift_mask(*input_resolution, window_size, shift_size) if shift_size else None
        self.register_buffer("attn_mask", stored)

    def mask_for(self, size: tuple[int, int]) -> torch.Tensor | None:
        """The stored mask at ``img_size``, else the same construction for this size."""
        if not self.shift_size:
            return None
        if tuple(size) == tuple(self.input_resolution):
            return self.attn_mask
        return cached_mask(*size, self.window_size, self.shift_size, self.attn_mask.device)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, tokens, c = x.shape
        # The roll and the window partition are one gather of the tokens (and the reverse
        # one gather back): torch.roll alone costs more than the attention on a CPU.
        order, inverse = window_order(*size, self.window_size, self.shift_size, x.device)
        windows = self.norm1(x).index_select(1, order).view(-1, self.window_size ** 2, c)
        attended = self.attn(windows, self.mask_for(size)).view(b, tokens, c)
        x = x + attended.index_select(1, inverse)
        return x + self.mlp(self.norm2(x))


@functools.lru_cache(maxsize=16)
def window_order(h: int, w: int, window: int, shift: int, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token indices: image -> (rolled by -shift, window-partitioned) order, and back."""
    # Cached tensors outlive the call, so they must not be inference tensors.
    with torch.inference_mode(False):
        image = torch.arange(h * w).view(1, h, w, 1)
        if shift:
            image = torch.roll(image, (-shift, -shift), (1, 2))
        order = window_partition(image, window).reshape(-1)
        return order.to(device), torch.argsort(order).to(device)


@functools.lru_cache(maxsize=4)
def cached_mask(h: int, w: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):
        return shift_mask(h, w, window, shift).to(device)


class BasicLayer(nn.Module):
    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int,
                 num_heads: int, window_size: int, mlp_ratio: float, qkv_bias: bool,
                 qk_scale: float | None):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, input_resolution, num_heads, window_size,
                                 0 if i % 2 == 0 else window_size // 2, mlp_ratio,
                                 qkv_bias, qk_scale)
            for i in range(depth))

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, size)
        return x


def residual_conv(dim: int, kind: str) -> nn.Module:
    """The convolution closing each RSTB and the body: '1conv' or the lighter '3conv'."""
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if kind == "3conv":
        return nn.Sequential(
            nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(dim // 4, dim, 3, 1, 1))
    raise ValueError(f"resi_connection must be '1conv' or '3conv', not {kind!r}")


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def to_image(tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *size)


class RSTB(nn.Module):
    """Residual Swin Transformer Block: Swin blocks, a conv on the image form, + input."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int,
                 num_heads: int, window_size: int, mlp_ratio: float, qkv_bias: bool,
                 qk_scale: float | None, resi_connection: str):
        super().__init__()
        self.residual_group = BasicLayer(dim, input_resolution, depth, num_heads,
                                         window_size, mlp_ratio, qkv_bias, qk_scale)
        self.conv = residual_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return to_tokens(self.conv(to_image(self.residual_group(x, size), size))) + x


class PatchEmbed(nn.Module):
    """Image to tokens (patch size 1: a flatten), then the optional LayerNorm."""

    def __init__(self, dim: int, patch_norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if patch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = to_tokens(x)
        return self.norm(tokens) if self.norm is not None else tokens


class SwinIR(nn.Module):
    """x (B, 3, H, W) RGB in [0, 1], H and W multiples of ``multiple`` -> the restored
    (B, 3, H, W), unclamped."""

    def __init__(self, img_size: int = 64, patch_size: int = 1, in_chans: int = 3,
                 embed_dim: int = 96, depths=(6, 6, 6, 6), num_heads=(6, 6, 6, 6),
                 window_size: int = 7, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, ape: bool = False, patch_norm: bool = True,
                 sf: int = 4, img_range: float = 1.0, upsampler: str = "",
                 resi_connection: str = "1conv", unshuffle: bool = False,
                 unshuffle_scale: int | None = None):
        super().__init__()
        check_supported(upsampler, sf, unshuffle, unshuffle_scale, patch_size)
        self.img_range = img_range
        self.upscale = sf
        self.window_size = window_size
        mean = MEAN_RGB if in_chans == 3 else (0.0,)
        # A plain attribute upstream, so not in the checkpoint.
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.conv_first = nn.Sequential(
            nn.PixelUnshuffle(sf), nn.Conv2d(in_chans * unshuffle_scale ** 2, embed_dim, 3, 1, 1))
        resolution = (img_size // patch_size, img_size // patch_size)
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, math.prod(resolution), embed_dim))
        self.layers = nn.ModuleList(
            RSTB(embed_dim, resolution, depth, heads, window_size, mlp_ratio, qkv_bias,
                 qk_scale, resi_connection)
            for depth, heads in zip(depths, num_heads))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = residual_conv(embed_dim, resi_connection)
        self.conv_before_upsample = nn.Sequential(
            nn.Conv2d(embed_dim, UPSAMPLE_FEATURES, 3, 1, 1), nn.LeakyReLU(inplace=True))
        for step in range(1, int(math.log2(sf)) + 1):
            setattr(self, f"conv_up{step}",
                    nn.Conv2d(UPSAMPLE_FEATURES, UPSAMPLE_FEATURES, 3, 1, 1))
        self.conv_hr = nn.Conv2d(UPSAMPLE_FEATURES, UPSAMPLE_FEATURES, 3, 1, 1)
        self.conv_last = nn.Conv2d(UPSAMPLE_FEATURES, in_chans, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this: the unshuffle, then whole windows."""
        return self.upscale * self.window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % self.multiple or width % self.multiple:
            raise ValueError(f"SwinIR input must be a multiple of {self.multiple} on both "
                             f"sides, not {height}x{width} (zero-pad it first)")
        x = (x - self.mean.to(x.dtype)) * self.img_range
        shallow = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(shallow)) + shallow
        x = self.reconstruct(x)
        return x / self.img_range + self.mean.to(x.dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(x.shape[-2:])
        tokens = self.patch_embed(x)
        if hasattr(self, "absolute_pos_embed"):
            tokens = tokens + self.absolute_pos_embed
        for layer in self.layers:
            tokens = layer(tokens, size)
        return to_image(self.norm(tokens), size)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """nearest+conv: nearest 2x and a conv per octave, back to the input size."""
        x = self.conv_before_upsample(x)
        for step in range(1, int(math.log2(self.upscale)) + 1):
            conv = getattr(self, f"conv_up{step}")
            x = self.lrelu(conv(F.interpolate(x, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(x)))


def check_supported(upsampler: str, sf: int, unshuffle: bool, unshuffle_scale: int | None,
                    patch_size: int) -> None:
    """DiffBIR's checkpoints use the 1x unshuffle + nearest+conv form only."""
    if upsampler != "nearest+conv":
        raise ValueError(f"upsampler {upsampler!r} is not used by DiffBIR's stage 1; "
                         "only 'nearest+conv' is built here")
    if not unshuffle or unshuffle_scale != sf or sf not in (2, 4, 8):
        raise ValueError("only unshuffle=True with unshuffle_scale == sf in (2, 4, 8) "
                         f"is built here, not unshuffle={unshuffle}, "
                         f"unshuffle_scale={unshuffle_scale}, sf={sf}")
    if patch_size != 1:
        raise ValueError(f"patch_size must be 1 (upstream only flattens), not {patch_size}")


def build_swinir(**kwargs) -> SwinIR:
    """SwinIR from the authors' config names; no kwargs is the released configuration."""
    chosen = {**OFFICIAL_KWARGS, **kwargs}
    for name in TRAINING_ONLY:
        chosen.pop(name, None)
    return SwinIR(**chosen)


def kwargs_from_arch(arch: dict) -> dict:
    """Network kwargs from a parity ``config.json`` (its tiny kwargs) or a plain object."""
    return config_kwargs(arch)


def load_arch(arch: Path | str | dict | None) -> dict:
    """Kwargs from an --arch JSON file (or its parsed contents); None is the official model."""
    return dict(OFFICIAL_KWARGS) if arch is None else kwargs_from_arch(read_config(arch))
