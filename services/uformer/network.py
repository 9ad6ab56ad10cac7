"""Uformer (``model.py:Uformer`` upstream), written for this project with the parameter
names of the authors' checkpoint, including their spellings (``dowsample_*``, the
bottleneck layer called ``conv``).

Only what the released models use is built: linear token projection, the LeFF
feed-forward, modulators in the decoder. Dropout and drop-path are identities at inference
and are left out (they hold no parameters).

Two things differ from upstream on purpose, neither changing a result:
- Feature maps carry their height and width, so the network also takes rectangles whose
  sides are multiples of ``factor`` (upstream recovers H = W = sqrt(tokens) and needs
  squares). The authors' procedure still pads to squares; the stage's tiles do not.
- All windows of all images run as one batch of shape (B, rows, cols, heads, N, d). The
  shift mask, which upstream builds per block for the whole map (as large as one head's
  attention logits), is added only where it is not zero: to the last row and column of
  windows, the only ones the cyclic shift wraps around.

Kept exactly, because results depend on it: whether a block uses shifted windows, and its
window size, are decided at construction from the NOMINAL resolution
``img_size / 2**level`` (a block whose nominal side is <= ``win_size`` gets no shift and a
window of that side), never from the size of the input.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch import nn

# utils/model_utils.py:get_arch('Uformer_B') with the test script's img_size (train_ps 128).
OFFICIAL_KWARGS = {
    "img_size": 128, "embed_dim": 32, "win_size": 8, "token_projection": "linear",
    "token_mlp": "leff", "depths": [1, 2, 8, 8, 2, 8, 8, 2, 1], "modulator": True, "dd_in": 3,
}
SHIFT_MASK_VALUE = -100.0   # upstream's value for attention across a wrapped-around edge
LEVELS = 4                  # down-samplings between the input and the bottleneck


class LinearProjection(nn.Module):
    """q from ``to_q``; k and v from one ``to_kv`` (k first), split into heads."""

    def __init__(self, dim: int, heads: int, bias: bool = True):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_kv = nn.Linear(dim, dim * 2, bias=bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        *batch, tokens, dim = x.shape
        head_dim = dim // self.heads
        q = self.to_q(x).view(*batch, tokens, self.heads, head_dim).transpose(-3, -2)
        kv = self.to_kv(x).view(*batch, tokens, 2, self.heads, head_dim)
        k, v = kv.unbind(-3)
        return q, k.transpose(-3, -2), v.transpose(-3, -2)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learnt relative position bias."""

    def __init__(self, dim: int, win_size: int, num_heads: int, qkv_bias: bool = True,
                 qk_scale: float | None = None):
        super().__init__()
        self.dim = dim
        self.win_size = win_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * win_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(win_size))
        self.qkv = LinearProjection(dim, num_heads, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def position_bias(self) -> torch.Tensor:
        """(heads, N, N) for N = win_size**2 tokens."""
        tokens = self.win_size ** 2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(tokens, tokens, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, shift: int = 0) -> torch.Tensor:
        """x: (B, rows, cols, N, C) windows of a map rolled by ``shift`` (0: not rolled)."""
        q, k, v = self.qkv(x)
        logits = torch.matmul(q * self.scale, k.transpose(-2, -1)) + self.position_bias()
        if shift:
            bottom, right, corner = edge_masks(self.win_size, shift, x.device, x.dtype)
            logits[:, -1, :-1] += bottom
            logits[:, :-1, -1] += right
            logits[:, -1, -1] += corner
        out = torch.matmul(logits.softmax(-1), v)
        return self.proj(out.transpose(-3, -2).flatten(-2))


def relative_position_index(win: int) -> torch.Tensor:
    """(N, N) index into the bias table for every pair of tokens of a win x win window."""
    rows, cols = torch.meshgrid(torch.arange(win), torch.arange(win), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])          # 2, N
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (win - 1)
    return relative[:, :, 0] * (2 * win - 1) + relative[:, :, 1]


class LeFF(nn.Module):
    """Locally-enhanced feed-forward: Linear, GELU, depthwise 3x3 conv, GELU, Linear."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.linear1 = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU())
        self.dwconv = nn.Sequential(
            nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, padding=1, groups=hidden_dim),
            nn.GELU())
        self.linear2 = nn.Sequential(nn.Linear(hidden_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C)."""
        x = self.linear1(x)
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.linear2(x)


class LeWinTransformerBlock(nn.Module):
    """(Shifted-)window attention and LeFF, each in a pre-norm residual branch."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int,
                 win_size: int = 8, shift_size: int = 0, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, modulator: bool = False):
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        # The img_size rule: decided from the nominal resolution, not from any input.
        if min(input_resolution) <= win_size:
            shift_size = 0
            window = min(input_resolution)
        else:
            window = win_size
        if not 0 <= shift_size < window:
            raise ValueError(f"shift_size {shift_size} must be in [0, {window})")
        self.win_size = window
        self.shift_size = shift_size
        # Upstream sizes the modulator from the constructor's win_size, not the window.
        self.modulator = nn.Embedding(win_size * win_size, dim) if modulator else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads, qkv_bias, qk_scale)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = LeFF(dim, int(dim * mlp_ratio))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, input_resolution={self.input_resolution}, "
                f"win_size={self.win_size}, shift_size={self.shift_size}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        height, width = x.shape[1:3]
        shift, win = self.shift_size, self.win_size
        y = self.norm1(x)
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(y, win)
        if self.modulator is not None:
            windows = windows + self.modulator.weight
        y = window_reverse(self.attn(windows, shift), win, height, width)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


def window_partition(x: torch.Tensor, win: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, H/win, W/win, win*win, C)."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // win, win, width // win, win, channels)
    return x.transpose(2, 3).reshape(batch, height // win, width // win, win * win, channels)


def window_reverse(windows: torch.Tensor, win: int, height: int, width: int) -> torch.Tensor:
    """(B, H/win, W/win, win*win, C) -> (B, H, W, C)."""
    batch, channels = windows.shape[0], windows.shape[-1]
    x = windows.view(batch, height // win, width // win, win, win, channels)
    return x.transpose(2, 3).reshape(batch, height, width, channels)


@functools.lru_cache(maxsize=32)
def edge_masks(win: int, shift: int, device: torch.device,
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, N) logit masks of the windows in the rolled map's last row (not its last
    column), last column (not last row) and its corner: 0 between tokens from the same
    region of the unrolled map, -100 between tokens the roll brought together.

    Upstream labels the map's three bands per axis (before the last window, the last
    window up to the shift, the wrapped-around shift); only the last window of each axis
    holds two bands, so every other window's mask is zero."""
    with torch.inference_mode(False):
        wrapped = torch.arange(win, device=device) >= win - shift   # local row (or column)
        rows = wrapped.repeat_interleave(win)       # token r*win + c -> its row's band
        cols = wrapped.repeat(win)
        row_differ = rows[:, None] != rows[None, :]
        col_differ = cols[:, None] != cols[None, :]

        def mask(differ: torch.Tensor) -> torch.Tensor:
            return torch.zeros(differ.shape, device=device, dtype=dtype).masked_fill(
                differ, SHIFT_MASK_VALUE)

        return mask(row_differ), mask(col_differ), mask(row_differ | col_differ)


class BasicUformerLayer(nn.Module):
    """``depth`` blocks; with ``shift_flag`` the odd ones shift by half a window."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int,
                 win_size: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, shift_flag: bool = True, modulator: bool = False):
        super().__init__()
        self.dim = dim
        self.blocks = nn.ModuleList([
            LeWinTransformerBlock(dim, input_resolution, num_heads, win_size,
                                  shift_size=win_size // 2 if shift_flag and i % 2 else 0,
                                  mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                                  modulator=modulator)
            for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class Downsample(nn.Module):
    """4x4 stride-2 conv: half the side, the given channels."""

    def __init__(self, in_channel: int, out_channel: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channel, out_channel, 4, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class Upsample(nn.Module):
    """2x2 stride-2 transposed conv: twice the side."""

    def __init__(self, in_channel: int, out_channel: int):
        super().__init__()
        self.deconv = nn.Sequential(nn.ConvTranspose2d(in_channel, out_channel, 2, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class InputProj(nn.Module):
    def __init__(self, in_channel: int, out_channel: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_channel, out_channel, 3, padding=1),
                                  nn.LeakyReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image -> (B, H, W, C) features."""
        return self.proj(x).permute(0, 2, 3, 1)


class OutputProj(nn.Module):
    def __init__(self, in_channel: int, out_channel: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_channel, out_channel, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.permute(0, 3, 1, 2))


class Uformer(nn.Module):
    """The U-shaped window Transformer: four encoder layers, a bottleneck, four decoder
    layers with skip concatenations, and (``dd_in`` == 3) a global residual on the input.

    ``forward`` takes (B, dd_in, H, W) with H and W multiples of ``factor``; the output is
    not clamped."""

    def __init__(self, img_size: int = 256, in_chans: int = 3, dd_in: int = 3,
                 embed_dim: int = 32, depths: Sequence[int] = (2,) * 9,
                 num_heads: Sequence[int] = (1, 2, 4, 8, 16, 16, 8, 4, 2), win_size: int = 8,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: float | None = None,
                 token_projection: str = "linear", token_mlp: str = "leff",
                 shift_flag: bool = True, modulator: bool = False,
                 cross_modulator: bool = False, **training_only):
        super().__init__()
        if token_projection != "linear" or token_mlp != "leff" or cross_modulator:
            raise ValueError("only token_projection='linear', token_mlp='leff' and no "
                             "cross_modulator are built (the released models' choice)")
        self.img_size = img_size
        self.win_size = win_size
        self.dd_in = dd_in
        self.factor = win_size * 2 ** LEVELS
        self.input_proj = InputProj(dd_in, embed_dim)
        self.output_proj = OutputProj(2 * embed_dim, in_chans)

        def layer(index: int, dim: int, level: int, modulate: bool = False):
            side = img_size // 2 ** level
            return BasicUformerLayer(dim, (side, side), depths[index], num_heads[index],
                                     win_size, mlp_ratio, qkv_bias, qk_scale, shift_flag,
                                     modulator and modulate)

        e = embed_dim
        for level in range(LEVELS):
            setattr(self, f"encoderlayer_{level}", layer(level, e * 2 ** level, level))
            setattr(self, f"dowsample_{level}", Downsample(e * 2 ** level, e * 2 ** (level + 1)))
        self.conv = layer(LEVELS, e * 2 ** LEVELS, LEVELS)
        for i in range(LEVELS):
            level = LEVELS - 1 - i
            in_dim = e * 2 ** LEVELS if i == 0 else e * 2 ** (level + 2)
            setattr(self, f"upsample_{i}", Upsample(in_dim, e * 2 ** level))
            setattr(self, f"decoderlayer_{i}",
                    layer(LEVELS + 1 + i, e * 2 ** (level + 1), level, modulate=True))

    def check_size(self, height: int, width: int) -> None:
        if height % self.factor or width % self.factor:
            raise ValueError(f"Uformer needs sides that are multiples of {self.factor} "
                             f"(win_size x 16), not {height}x{width}")

    def forward(self, x: torch.Tensor, taps: dict | None = None) -> torch.Tensor:
        """The restored image. ``taps``, when given, receives intermediate features as
        upstream's (B, H*W, C) tokens, by the names the parity fixtures use."""
        self.check_size(*x.shape[-2:])
        y = self.input_proj(x)
        record(taps, "input_proj", y)
        skips = []
        for level in range(LEVELS):
            y = getattr(self, f"encoderlayer_{level}")(y)
            record(taps, f"encoderlayer_{level}", y)
            skips.append(y)
            y = getattr(self, f"dowsample_{level}")(y)
        y = self.conv(y)
        record(taps, "bottleneck", y)
        for i in range(LEVELS):
            up = getattr(self, f"upsample_{i}")(y)
            y = getattr(self, f"decoderlayer_{i}")(torch.cat([up, skips.pop()], -1))
            record(taps, f"decoderlayer_{i}", y)
        y = self.output_proj(y)
        return x + y if self.dd_in == 3 else y


def record(taps: dict | None, name: str, features: torch.Tensor) -> None:
    if taps is not None:
        taps[name] = features.flatten(1, 2)


def build_uformer(**kwargs) -> Uformer:
    """Uformer from kwargs in the authors' names; missing ones take the released GoPro
    Uformer-B configuration (``OFFICIAL_KWARGS``), the rest the constructor's defaults."""
    return Uformer(**{**OFFICIAL_KWARGS, **kwargs}).eval()
