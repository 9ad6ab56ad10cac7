"""The two analog-restoration networks of Agnolucci et al., in our own PyTorch code.

- ``VideoSwinEncoderDecoder``: the ACM MM 2022 Swin-UNet (model ``swinunet``), five frames
  in, five frames out.
- ``TapeSwinUNet``: the WACV 2024 TAPE network (model ``tape``), the same kind of U-Net
  whose decoder fuses features of reference frames through MRSFF blocks.

Parameter names and shapes follow the authors' checkpoints exactly, so their files load
strictly. The maths follows theirs too, including the memory-order reshapes in the MRSFF
attention that are not what the paper's figure suggests: the released weights were trained
with them, and a "clean" version drifts far from the authors' outputs.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# The released checkpoints' configurations (the authors' constructor arguments).
OFFICIAL_SWINUNET = {
    "in_chans": 3, "embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [8, 8, 8, 8],
    "window_size": [2, 8, 8], "mlp_ratio": 4.0, "qkv_bias": True, "qk_scale": None,
    "drop_rate": 0.0, "attn_drop_rate": 0.0, "drop_path_rate": 0.2, "use_checkpoint": True,
}
OFFICIAL_TAPE = {**OFFICIAL_SWINUNET, "use_checkpoint": False}
# torchvision swin_t, of which TAPE keeps the patch embedding and the first three stages.
SWIN_T_CONFIG = {"patch_size": [4, 4], "embed_dim": 96, "depths": [2, 2, 6, 2],
                 "num_heads": [3, 6, 12, 24], "window_size": [7, 7], "stochastic_depth_prob": 0.2}
SWIN_T_WIDTHS = [96, 192, 384]

# Training-only arguments: dropout and stochastic depth are identities in inference, and
# gradient checkpointing does not change the numbers.
_TRAINING_ONLY = ("drop_rate", "attn_drop_rate", "drop_path_rate", "use_checkpoint")


# ----------------------------------------------------------------------------- windows

def fit_window(size: Sequence[int], window: Sequence[int], shift: Sequence[int]):
    """The authors' rule: an axis no longer than the window uses its own size as the window
    and is not shifted."""
    use_window, use_shift = list(window), list(shift)
    for axis, extent in enumerate(size):
        if extent <= window[axis]:
            use_window[axis] = extent
            use_shift[axis] = 0
    return tuple(use_window), tuple(use_shift)


def partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """(B, *S, C) -> (B * windows, prod(window), C), windows in row-major order of their
    position, tokens row-major inside each window (2-D or 3-D)."""
    batch, *sizes, channels = x.shape
    split = [batch]
    for extent, w in zip(sizes, window):
        split += [extent // w, w]
    x = x.view(*split, channels)
    dims = len(sizes)
    order = [0] + [1 + 2 * i for i in range(dims)] + [2 + 2 * i for i in range(dims)] + [1 + 2 * dims]
    tokens = 1
    for w in window:
        tokens *= w
    return x.permute(*order).reshape(-1, tokens, channels)


def unpartition(windows: torch.Tensor, window: Sequence[int], batch: int,
                sizes: Sequence[int]) -> torch.Tensor:
    """The inverse of ``partition``: (B * windows, prod(window), C) -> (B, *S, C)."""
    dims = len(sizes)
    counts = [extent // w for extent, w in zip(sizes, window)]
    x = windows.reshape(batch, *counts, *window, -1)
    order = [0]
    for i in range(dims):
        order += [1 + i, 1 + dims + i]
    return x.permute(*order, 1 + 2 * dims).reshape(batch, *sizes, -1)


@lru_cache(maxsize=64)
def _region_mask(padded: tuple, window: tuple, shift: tuple, device: torch.device) -> torch.Tensor:
    labels = torch.zeros((1, *padded, 1), device=device)
    regions = [(slice(-w), slice(-w, -s), slice(-s, None)) for w, s in zip(window, shift)]
    count = 0
    # Slices with a zero shift overlap; later labels overwrite earlier ones exactly as the
    # authors' loop does, which leaves such an axis unmasked.
    for index in _product(regions):
        labels[(slice(None), *index, slice(None))] = count
        count += 1
    flat = partition(labels, window).squeeze(-1)
    diff = flat.unsqueeze(1) - flat.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def _product(axes):
    if not axes:
        yield ()
        return
    for head in axes[0]:
        for tail in _product(axes[1:]):
            yield (head, *tail)


def region_mask(padded, window, shift, device) -> torch.Tensor:
    """The -100 mask that keeps shifted windows from mixing regions that were not
    neighbours before the roll: (windows, tokens, tokens)."""
    return _region_mask(tuple(padded), tuple(window), tuple(shift), torch.device(device))


def relative_index(window: Sequence[int]) -> torch.Tensor:
    """The standard relative-position index of a 2-D or 3-D window (tokens x tokens)."""
    grids = torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")
    coords = torch.stack(grids).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    index = torch.zeros(rel.shape[:2], dtype=torch.long)
    stride = 1
    for axis in reversed(range(len(window))):
        index += (rel[:, :, axis] + window[axis] - 1) * stride
        stride *= 2 * window[axis] - 1
    return index


def pad_to_windows(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """Zero-pad the spatial axes of (B, *S, C) at their ends to multiples of ``window``."""
    pads = []
    for extent, w in zip(reversed(x.shape[1:-1]), reversed(window)):
        pads += [0, (w - extent % w) % w]
    return F.pad(x, [0, 0, *pads]) if any(pads) else x


# ----------------------------------------------------------------------------- pieces

class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def frames_conv(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A 2-D conv applied to every frame of (B, T, H, W, C), returning the same layout."""
    b, t, h, w, c = x.shape
    y = conv(x.reshape(b * t, h, w, c).permute(0, 3, 1, 2))
    return y.permute(0, 2, 3, 1).reshape(b, t, y.shape[2], y.shape[3], y.shape[1])


class PatchMerging(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x):  # (B, T, H, W, C) -> (B, T, H/2, W/2, 2C)
        h, w = x.shape[2:4]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2],
                       x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class PatchExpand(nn.Module):
    def __init__(self, embed_dim: int):
        super().__init__()
        self.before_conv = nn.Conv2d(embed_dim, embed_dim * 2, 3, 1, 1)
        self.pixel_shuffle = nn.PixelShuffle(2)
        self.lrelu = nn.LeakyReLU(0.1)
        self.after_conv = nn.Conv2d(embed_dim // 2, embed_dim // 2, 3, 1, 1)

    def forward(self, x):  # (B, T, H, W, C) -> (B, T, 2H, 2W, C/2)
        b, t, h, w, c = x.shape
        y = x.reshape(b * t, h, w, c).permute(0, 3, 1, 2)
        y = self.after_conv(self.lrelu(self.pixel_shuffle(self.before_conv(y))))
        return y.permute(0, 2, 3, 1).reshape(b, t, 2 * h, 2 * w, c // 2)


# ----------------------------------------------------------------------------- 3-D Swin

class WindowAttention3D(nn.Module):
    def __init__(self, dim: int, window: Sequence[int], num_heads: int, qkv_bias: bool,
                 qk_scale: float | None):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        table = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table, num_heads))
        self.register_buffer("relative_position_index", relative_index(window))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        windows, n, c = x.shape
        qkv = self.qkv(x).reshape(windows, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        # The authors index the full window's table even when the window has shrunk to
        # n < its size: the first n rows/columns, not a table for the smaller window.
        index = self.relative_position_index[:n, :n].reshape(-1)
        bias = self.relative_position_bias_table[index].reshape(n, n, -1).permute(2, 0, 1)
        # softmax(q k^T * scale + bias + mask) v in one fused kernel, never holding the
        # (windows, heads, n, n) logits.
        x = windowed_attention(q, k, v, logits_add(bias, mask), self.scale)
        return self.proj(x.transpose(1, 2).reshape(windows, n, c))


def logits_add(bias: torch.Tensor, mask: torch.Tensor | None, tile: int = 1) -> torch.Tensor:
    """What attention adds to its logits: bias (heads, n, n) plus the region mask (count,
    n, n) when there is one, (count or 1, heads, tile * n, n) with the query rows tiled
    ``tile`` times (one per query frame). Per window position, not per window: a batch's
    windows repeat every ``count``, and ``windowed_attention`` broadcasts over them."""
    add = bias.unsqueeze(0) if mask is None else bias.unsqueeze(0) + mask.unsqueeze(1)
    if tile > 1:
        count, heads, n, m = add.shape
        add = add.unsqueeze(2).expand(-1, -1, tile, -1, -1).reshape(count, heads, tile * n, m)
    return add


def windowed_attention(q, k, v, add: torch.Tensor, scale: float) -> torch.Tensor:
    """Fused attention of q (windows, heads, L, d) over k, v (windows, heads, S, d) with
    ``add`` (count, heads, L, S) for windows repeating every ``count``: the batch is seen
    as (windows / count, count * heads) so the term broadcasts over the repeats instead of
    being copied for each window (2 GB per block at 720x480 when it was)."""
    windows, heads, length, depth = q.shape
    count = add.shape[0]
    if count == 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=add.to(q.dtype), scale=scale)
    if windows % count:
        raise ValueError(f"{windows} windows do not repeat every {count}")
    folded = lambda t: t.reshape(windows // count, count * heads, *t.shape[2:])  # noqa: E731
    out = F.scaled_dot_product_attention(
        folded(q), folded(k), folded(v), scale=scale,
        attn_mask=add.to(q.dtype).reshape(1, count * heads, *add.shape[2:]))
    return out.reshape(windows, heads, length, depth)


class SwinTransformerBlock3D(nn.Module):
    def __init__(self, dim, num_heads, window, shift, mlp_ratio, qkv_bias, qk_scale):
        super().__init__()
        self.window, self.shift = tuple(window), tuple(shift)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, window, num_heads, qkv_bias, qk_scale)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def attend(self, x, mask):
        b, t, h, w, c = x.shape
        window, shift = fit_window((t, h, w), self.window, self.shift)
        y = pad_to_windows(self.norm1(x), window)
        padded = y.shape[1:4]
        shifted = any(shift)
        if shifted:
            y = torch.roll(y, [-s for s in shift], dims=(1, 2, 3))
        y = self.attn(partition(y, window), mask if shifted else None)
        y = unpartition(y, window, b, padded)
        if shifted:
            y = torch.roll(y, list(shift), dims=(1, 2, 3))
        return y[:, :t, :h, :w]

    def forward(self, x, mask):
        x = x + self.attend(x, mask)
        return x + self.mlp(self.norm2(x))


class SwinLayer3D(nn.Module):
    """Swin blocks, a per-frame 3x3 conv and the layer's own residual, then an optional
    resampling op registered under the authors' attribute name (``downsample``,
    ``upsample`` or ``sampling_operation``, depending on the network)."""

    def __init__(self, dim, depth, num_heads, window, mlp_ratio, qkv_bias, qk_scale,
                 sampling: str | None = None, sampling_name: str = "sampling_operation"):
        super().__init__()
        self.window = tuple(window)
        self.shift = tuple(w // 2 for w in window)
        self.blocks = nn.ModuleList([
            SwinTransformerBlock3D(dim, num_heads, window, (0, 0, 0) if i % 2 == 0 else self.shift,
                                   mlp_ratio, qkv_bias, qk_scale)
            for i in range(depth)])
        self.last_conv = nn.Conv2d(dim, dim, 3, 1, 1)
        self.sampling_name = sampling_name
        op = {"downsample": PatchMerging, "upsample": PatchExpand, None: None}[sampling]
        setattr(self, sampling_name, op(dim) if op else None)

    def forward(self, x):  # (B, T, H, W, C)
        window, shift = fit_window(x.shape[1:4], self.window, self.shift)
        padded = [-(-extent // w) * w for extent, w in zip(x.shape[1:4], window)]
        mask = region_mask(padded, window, shift, x.device)
        y = x
        for block in self.blocks:
            y = block(y, mask)
        y = frames_conv(self.last_conv, y) + x
        op = getattr(self, self.sampling_name)
        return op(y) if op is not None else y


def _check_norm_layer(norm_layer) -> None:
    if norm_layer not in (None, nn.LayerNorm, "torch.nn.LayerNorm", "nn.LayerNorm", "LayerNorm"):
        raise ValueError(f"only LayerNorm is supported as norm_layer, not {norm_layer!r}")


# ----------------------------------------------------------------------------- MM22

class VideoSwinEncoderDecoder(nn.Module):
    """The ACM MM 2022 Swin-UNet: (B, T, 3, H, W) in [0, 1] -> the same, input + residual
    (not clamped). H and W must be multiples of 16."""

    def __init__(self, in_chans=3, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(8, 8, 8, 8),
                 window_size=(2, 8, 8), mlp_ratio=4.0, qkv_bias=True, qk_scale=None,
                 norm_layer=None, **training_only):
        super().__init__()
        _check_training_only(training_only)
        _check_norm_layer(norm_layer)
        layers = len(depths)
        common = dict(window=window_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale)
        self.conv_input = nn.Conv3d(in_chans, embed_dim, 3, stride=(1, 2, 2), padding=1)
        self.encoding_layers = nn.ModuleList([
            SwinLayer3D(embed_dim * 2 ** i, depths[i], num_heads[i],
                        sampling="downsample" if i < layers - 1 else None,
                        sampling_name="downsample", **common)
            for i in range(layers)])
        # The decoder reuses depths[i] and num_heads[i] in encoder order, not mirrored.
        self.decoding_layers = nn.ModuleList([PatchExpand(embed_dim * 2 ** (layers - 1))])
        self.decoding_layers.extend(
            SwinLayer3D(embed_dim * 2 ** (layers - 1 - i), depths[i], num_heads[i],
                        sampling="upsample", sampling_name="upsample", **common)
            for i in range(1, layers))
        self.conv_output = nn.Conv2d(embed_dim // 2, in_chans, 3, 1, 1)

    def encode(self, lq: torch.Tensor):
        x = self.conv_input(lq.transpose(1, 2)).permute(0, 2, 3, 4, 1)  # (B, T, H/2, W/2, C)
        skips = [x]
        for layer in self.encoding_layers:
            skips.append(x)
            x = layer(x)
        return x, skips

    def decode(self, x: torch.Tensor, skips: list) -> torch.Tensor:
        for i, layer in enumerate(self.decoding_layers):
            x = layer(x + skips[-1 - i])
        return frames_conv(self.conv_output, x).permute(0, 1, 4, 2, 3)

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        x, skips = self.encode(lq)
        return lq + self.decode(x, skips)


# ----------------------------------------------------------------------------- TAPE

class AttentionPooling1d(nn.Module):
    """Pools the M reference rows of every token position into one, CLIP-style: the mean
    row (plus a learned position embedding) attends over all rows' tokens."""

    def __init__(self, dim: int, num_heads: int, sequence_length: int):
        super().__init__()
        self.num_heads = num_heads
        self.pos_embedding = nn.Parameter(torch.zeros(sequence_length, dim))
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x):  # (G, M, N, C) -> (G, N, C)
        g, m, n, c = x.shape
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.pos_embedding
        keys = x.reshape(g, (m + 1) * n, c)
        heads = self.num_heads
        q = self.q_proj(x[:, 0]).view(g, n, heads, c // heads).transpose(1, 2)
        k = self.k_proj(keys).view(g, -1, heads, c // heads).transpose(1, 2)
        v = self.v_proj(keys).view(g, -1, heads, c // heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(y.transpose(1, 2).reshape(g, n, c))


class MultiReferenceWindowAttention(nn.Module):
    def __init__(self, dim: int, window: Sequence[int], num_heads: int, qkv_bias: bool,
                 qk_scale: float | None):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.window = tuple(window)
        table = (2 * window[0] - 1) * (2 * window[1] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table, num_heads))
        self.register_buffer("relative_position_index", relative_index(window))
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.act = nn.GELU()
        self.dim_reduction = AttentionPooling1d(dim, num_heads, window[0] * window[1])
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, refs, mask=None):
        """x: (G, T, N, C) query windows, refs: (G, M, N, C) -> (G, T, N, C)."""
        g, t, n, c = x.shape
        m = refs.shape[1]
        heads = self.num_heads
        hd = c // heads
        q = self.q(x).reshape(g, t, n, heads, hd).permute(0, 3, 1, 2, 4).reshape(g, heads, t * n, hd)
        k, v = self.kv(refs).reshape(g, m, n, 2, heads, hd).permute(3, 1, 0, 4, 2, 5)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1)
        # The same additive term for every query frame: tiled along the T * N queries.
        add = logits_add(bias, mask, tile=t)
        # Each reference frame is attended to on its own (the softmax runs over the n
        # tokens of one reference window), so one fused attention per reference.
        per_ref = [windowed_attention(q, k[i], v[i], add, self.scale) for i in range(m)]
        y = torch.stack([r.view(g, heads, t, n, hd).transpose(1, 2) for r in per_ref], dim=1)
        # That is (G, M, T, nH, N, hd) in memory: the authors' (G, T, M, nH, N, hd) result
        # transposed to M-major, which they then read back as (G, T, M, N, C), mixing T
        # with M and heads with tokens. The released weights were trained with it.
        y = y.reshape(g * t, m, n, c)
        y = self.dim_reduction(y).view(g, t, n, c)
        return self.proj(self.act(y))


class MRSFFBlock(nn.Module):
    def __init__(self, dim, num_heads, window, shift, mlp_ratio, qkv_bias, qk_scale):
        super().__init__()
        self.window, self.shift = tuple(window), tuple(shift)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = MultiReferenceWindowAttention(dim, window, num_heads, qkv_bias, qk_scale)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def attend(self, x, refs, mask):
        b, t, h, w, c = x.shape
        m = refs.shape[1]
        window, shift = fit_window((h, w), self.window, self.shift)
        q = pad_to_windows(self.norm_q(x.reshape(b * t, h, w, c)), window)
        kv = pad_to_windows(self.norm_kv(refs.reshape(b * m, h, w, c)), window)
        padded = q.shape[1:3]
        shifted = any(shift)
        if shifted:
            q = torch.roll(q, [-s for s in shift], dims=(1, 2))
            kv = torch.roll(kv, [-s for s in shift], dims=(1, 2))
        q, kv = partition(q, window), partition(kv, window)
        n = q.shape[1]
        # The flat window lists are cut into consecutive runs of T (and M) windows: a run
        # is not one window position across the frames, but the authors' grouping.
        y = self.attn(q.reshape(-1, t, n, c), kv.reshape(-1, m, n, c), mask if shifted else None)
        y = unpartition(y.reshape(-1, n, c), window, b * t, padded)
        if shifted:
            y = torch.roll(y, list(shift), dims=(1, 2))
        return y[:, :h, :w].reshape(b, t, h, w, c)

    def forward(self, x, refs, mask):
        x = x + self.attend(x, refs, mask)
        return x + self.mlp(self.norm2(x))


class MRSFFLayer(nn.Module):
    def __init__(self, dim, depth, num_heads, window, mlp_ratio, qkv_bias, qk_scale):
        super().__init__()
        self.window = tuple(window)
        self.shift = tuple(w // 2 for w in window)
        self.blocks = nn.ModuleList([
            MRSFFBlock(dim, num_heads, window, (0, 0) if i % 2 == 0 else self.shift,
                       mlp_ratio, qkv_bias, qk_scale)
            for i in range(depth)])
        self.last_conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x, refs):  # (B, T, H, W, C), (B, M, H, W, C)
        window, shift = fit_window(x.shape[2:4], self.window, self.shift)
        padded = [-(-extent // w) * w for extent, w in zip(x.shape[2:4], window)]
        mask = region_mask(padded, window, shift, x.device)
        y = x
        for block in self.blocks:
            y = block(y, refs, mask)
        return frames_conv(self.last_conv, y) + x


class SwinFeatureExtractor(nn.Module):
    """torchvision's Swin-T trunk (patch embedding, stages 1-3 and the merges between
    them) on ImageNet-normalised frames; returns the outputs of stages 1, 2 and 3."""

    def __init__(self, torchvision_config: dict | None = None):
        super().__init__()
        from torchvision.models.swin_transformer import SwinTransformer
        config = dict(torchvision_config or SWIN_T_CONFIG)
        # Three stages give exactly swin_t.features[:6]; the fourth is never used.
        config["depths"] = list(config["depths"])[:3]
        config["num_heads"] = list(config["num_heads"])[:3]
        self.swin_net = SwinTransformer(**config).features
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # (N, 3, H, W) -> NHWC maps
        x = (x - self.mean) / self.std
        features = []
        for index, layer in enumerate(self.swin_net):
            x = layer(x)
            if index % 2 == 1:
                features.append(x)
        return features


class TapeSwinUNet(nn.Module):
    """TAPE: (B, T, 3, H, W) frames and (B, M, 3, H, W) references in [0, 1] -> restored
    (B, T, 3, H, W), input + residual (not clamped). H, W multiples of 16, at least 64."""

    def __init__(self, in_chans=3, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(8, 8, 8, 8),
                 window_size=(2, 8, 8), mlp_ratio=4.0, qkv_bias=True, qk_scale=None,
                 norm_layer=None, ref_feature_extractor_torchvision_config=None,
                 ref_feature_extractor_widths=None, **training_only):
        super().__init__()
        _check_training_only(training_only)
        _check_norm_layer(norm_layer)
        layers = len(depths)
        common = dict(mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale)
        self.conv_input = nn.Conv2d(in_chans, embed_dim, 3, stride=2, padding=1)
        self.conv_output = nn.Conv2d(embed_dim // 2, in_chans, 3, 1, 1)
        self.encoding_layers = nn.ModuleList([
            SwinLayer3D(embed_dim * 2 ** i, depths[i], num_heads[i], window_size,
                        sampling="downsample", **common)
            for i in range(layers - 1)])
        self.decoding_layers = nn.ModuleList([
            SwinLayer3D(embed_dim * 2 ** (layers - 1 - i), depths[layers - 1 - i],
                        num_heads[layers - 1 - i], window_size, sampling="upsample", **common)
            for i in range(layers)])
        self.mrsff_layers = nn.ModuleList([
            MRSFFLayer(embed_dim * 2 ** i, depths[layers - 1 - i], num_heads[layers - 1 - i],
                       tuple(window_size[1:]), **common)
            for i in range(layers - 1)])
        self.ref_feature_extractor = SwinFeatureExtractor(ref_feature_extractor_torchvision_config)
        widths = ref_feature_extractor_widths or SWIN_T_WIDTHS
        self.ref_feature_extractor_conv = nn.ModuleList([
            nn.Sequential(nn.Conv2d(width, embed_dim * 2 ** i * 4, 3, 1, 1), nn.PixelShuffle(2))
            for i, width in enumerate(widths)])

    def encode(self, lq: torch.Tensor):
        b, t, c, h, w = lq.shape
        x = self.conv_input(lq.reshape(b * t, c, h, w))
        x = x.permute(0, 2, 3, 1).reshape(b, t, x.shape[2], x.shape[3], -1)
        skips = [x]
        for layer in self.encoding_layers:
            x = layer(x)
            skips.append(x)
        return x, skips

    def reference_features(self, refs: torch.Tensor) -> list[torch.Tensor]:
        """(B, M, 3, H, W) -> per scale (B, M, h, w, C') at 1/2, 1/4 and 1/8."""
        b, m = refs.shape[:2]
        maps = self.ref_feature_extractor(refs.flatten(0, 1))
        out = []
        for conv, fmap in zip(self.ref_feature_extractor_conv, maps):
            y = conv(fmap.permute(0, 3, 1, 2))
            out.append(y.permute(0, 2, 3, 1).reshape(b, m, y.shape[2], y.shape[3], -1))
        return out

    def decode(self, x: torch.Tensor, skips: list, refs: list) -> torch.Tensor:
        for i, layer in enumerate(self.decoding_layers):
            if i > 0:
                x = x + skips[-1 - i]
                # The fusion layer returns its input plus its own output, and the authors
                # add that to x again: x becomes 2x + fusion.
                x = x + self.mrsff_layers[-i](x, refs[-i])
            x = layer(x)
        return frames_conv(self.conv_output, x).permute(0, 1, 4, 2, 3)

    def forward(self, lq: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
        x, skips = self.encode(lq)
        return lq + self.decode(x, skips, self.reference_features(refs))


def _check_training_only(extra: dict) -> None:
    unknown = sorted(set(extra) - set(_TRAINING_ONLY))
    if unknown:
        raise TypeError(f"unknown network argument(s): {', '.join(unknown)}")


def build_swinunet(**kwargs) -> VideoSwinEncoderDecoder:
    """The MM22 network from the authors' constructor arguments (default: official)."""
    return VideoSwinEncoderDecoder(**{**OFFICIAL_SWINUNET, **kwargs})


def build_tape(**kwargs) -> TapeSwinUNet:
    """The TAPE network from the authors' constructor arguments plus, for small variants,
    ``ref_feature_extractor_torchvision_config`` / ``ref_feature_extractor_widths``
    (default: official, torchvision swin_t)."""
    return TapeSwinUNet(**{**OFFICIAL_TAPE, **kwargs})
