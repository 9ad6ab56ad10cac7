"""PSRT-recurrent (BasicRecurrentSwin) in PyTorch, with the authors' parameter names.

The state-dict layout is that of ``archs/psrt_recurrent_arch.py:BasicRecurrentSwin`` in
XPixelGroup/RethinkVSRAlignment (with BasicSR's SpyNet inside), so the released
``PSRT_REDS.pth`` loads strictly. The maths is the authors'; the code is ours and
organised for speed:

- Swin windows are cut with one precomputed gather (pad, cyclic shift and partition in
  one index) and put back with one gather, instead of pad/roll/permute/copy chains.
- Windowed attention runs through ``scaled_dot_product_attention``; the shift mask is
  not materialised per window: windows are grouped by mask pattern (interior, right
  column, bottom row, corner) and each group gets one broadcast mask.
- A Swin block runs chunk by chunk of windows (gather, norm, attention, MLP, scatter),
  so its temporaries stay small whatever the frame size.
- Tokens stay channels-last between blocks; the per-frame convs read them as
  channels-last images without copies.
- Only the centre frame of the last RSTB's conv and of the final norm is computed,
  since SwinIRFM only returns the centre frame.
- Features a later branch no longer needs are freed as the recurrence walks on, so a
  clip's memory is about one branch of features, not five.

Unlike upstream, the four alignment branches are built on every device (upstream builds
them only when CUDA is available, leaving a CPU model that cannot run), and the sticky
``is_mirror_extended`` shortcut is not reproduced: it only skips computing forward flows
that equal the reversed backward flows, so every result is the same without it.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

OFFICIAL_KWARGS = {
    "in_channels": 3, "mid_channels": 64, "embed_dim": 120, "depths": [6, 6, 6],
    "num_heads": [6, 6, 6], "window_size": [3, 8, 8], "num_frames": 3, "img_size": 64,
    "patch_size": 1, "cpu_cache_length": 100, "is_low_res_input": True, "spynet_path": None,
}
BRANCHES = ("backward_1", "forward_1", "backward_2", "forward_2")
# Values (tokens x channels) per chunk of windows that runs a whole Swin block at once.
# Chunks bound the temporaries (qkv, MLP hidden) to a few MB however large the frame;
# they are not smaller because on a shared CPU every op pays for waking its threads,
# and on a GPU fewer, larger launches are better.
CHUNK_VALUES = {"cpu": 128 * 192 * 120, "cuda": 1 << 30}
MIN_SIZE = 64          # the authors assert H, W >= 64 before SpyNet
SPYNET_LEVELS = 6


# ----------------------------------------------------------------------------- flows


def flow_warp(x: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear",
              padding_mode: str = "zeros") -> torch.Tensor:
    """BasicSR's flow_warp: sample ``x`` at pixel grid + ``flow`` (n, h, w, 2), with
    align_corners=True and the (size - 1) normalisation, op for op so that nearest
    sampling later rounds exactly as upstream does."""
    _, _, h, w = x.shape
    grid_y, grid_x = torch.meshgrid(
        torch.arange(0, h, device=x.device).to(x.dtype),
        torch.arange(0, w, device=x.device).to(x.dtype), indexing="ij")
    grid = torch.stack((grid_x, grid_y), 2).float()
    vgrid = grid + flow
    vgrid_x = 2.0 * vgrid[..., 0] / max(w - 1, 1) - 1.0
    vgrid_y = 2.0 * vgrid[..., 1] / max(h - 1, 1) - 1.0
    return F.grid_sample(x, torch.stack((vgrid_x, vgrid_y), dim=3), mode=mode,
                         padding_mode=padding_mode, align_corners=True)


def flow_warp_avg_patch(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Patch alignment: move whole 8x8 patches by their mean flow (nearest sampling).

    The float ops follow upstream's order exactly: a sampling coordinate near a .5
    boundary decides which patch is copied, so the rounding has to be the same."""
    _, _, h, w = x.shape
    pad_h, pad_w = (8 - h % 8) % 8, (8 - w % 8) % 8
    flow = F.pad(flow, (0, pad_w, 0, pad_h), mode="reflect")
    hp, wp = h + pad_h, w + pad_w
    grid_y, grid_x = torch.meshgrid(torch.arange(0, hp, device=x.device),
                                    torch.arange(0, wp, device=x.device), indexing="ij")
    # upstream builds the grid in x's dtype; float32 keeps it exact in half precision too
    grid = torch.stack((grid_x, grid_y), 2).to(flow.dtype)
    flow = F.interpolate(F.avg_pool2d(flow, 8), scale_factor=8, mode="nearest")
    grid_flow = (grid + flow.permute(0, 2, 3, 1))[:, :h, :w, :]
    grid_x = 2.0 * grid_flow[..., 0] / max(w - 1, 1) - 1.0
    grid_y = 2.0 * grid_flow[..., 1] / max(h - 1, 1) - 1.0
    return F.grid_sample(x.float(), torch.stack((grid_x, grid_y), dim=3), mode="nearest",
                         padding_mode="zeros", align_corners=True)


class BasicModule(nn.Module):
    """One SpyNet pyramid level: five 7x7 convs, ReLU between them."""

    def __init__(self):
        super().__init__()
        widths = (8, 32, 64, 32, 16, 2)
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            if i:
                layers.append(nn.ReLU(inplace=False))
            layers.append(nn.Conv2d(cin, cout, 7, 1, 3))
        self.basic_module = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.basic_module(x)


class SpyNet(nn.Module):
    """BasicSR's SpyNet: ``spynet(ref, supp)`` is the flow that warps ``supp`` onto ``ref``."""

    def __init__(self):
        super().__init__()
        self.basic_module = nn.ModuleList([BasicModule() for _ in range(SPYNET_LEVELS)])
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels = [(x - self.mean) / self.std]
        for _ in range(SPYNET_LEVELS - 1):
            levels.insert(0, F.avg_pool2d(levels[0], kernel_size=2, stride=2,
                                          count_include_pad=False))
        return levels

    def process(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        refs, supps = self.pyramid(ref), self.pyramid(supp)
        n, _, h0, w0 = refs[0].shape
        flow = refs[0].new_zeros(n, 2, h0 // 2, w0 // 2)
        for level, (r, s) in enumerate(zip(refs, supps)):
            up = F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=True) * 2.0
            if up.size(2) != r.size(2):
                up = F.pad(up, [0, 0, 0, 1], mode="replicate")
            if up.size(3) != r.size(3):
                up = F.pad(up, [0, 1, 0, 0], mode="replicate")
            warped = flow_warp(s, up.permute(0, 2, 3, 1), padding_mode="border")
            flow = self.basic_module[level](torch.cat([r, warped, up], 1)) + up
        return flow

    def forward(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        h, w = ref.shape[-2:]
        h32, w32 = math.ceil(h / 32) * 32, math.ceil(w / 32) * 32
        ref = F.interpolate(ref, size=(h32, w32), mode="bilinear", align_corners=False)
        supp = F.interpolate(supp, size=(h32, w32), mode="bilinear", align_corners=False)
        flow = F.interpolate(self.process(ref, supp), size=(h, w), mode="bilinear",
                             align_corners=False)
        flow[:, 0] *= float(w) / float(w32)
        flow[:, 1] *= float(h) / float(h32)
        return flow


# ------------------------------------------------------------------- Swin windows


@dataclass(frozen=True)
class WindowChunk:
    """A few attention windows processed together, small enough to stay in cache.

    ``gather``: for each of their tokens, its row in the padded token state (the last
    row of which is a zero padding token); ``pattern``: their shift-mask pattern;
    ``pad``: chunk rows that are padding (None if none); ``keep``/``dest``: chunk rows
    that are real tokens, and where they go (``keep`` None: all rows, ``dest`` = gather)."""

    gather: torch.Tensor
    pattern: int
    pad: torch.Tensor | None
    keep: torch.Tensor | None
    dest: torch.Tensor


@dataclass(frozen=True)
class WindowPlan:
    """How one (n, t, h, w) token grid is cut into attention windows and put back:
    windows padded, cyclically shifted and partitioned as upstream does, then grouped by
    shift-mask pattern (interior, right column, bottom row, corner) into chunks."""

    chunks: tuple[WindowChunk, ...]
    masks: torch.Tensor | None          # (patterns, N, N): 0 or -100; None: no shift


def _shift_labels(size: int, window: int, shift: int) -> np.ndarray:
    """Upstream's region numbering along one axis (the same three slices, same order)."""
    labels = np.zeros(size, dtype=np.int64)
    for region, part in enumerate((slice(-window), slice(-window, -shift), slice(-shift, None))):
        labels[part] = region
    return labels


def _padded(size: int, window: int) -> int:
    return int(np.ceil(size / window)) * window


def _per_window(grid: np.ndarray, window: tuple[int, int, int]) -> np.ndarray:
    """(Dp, Hp, Wp) -> (windows, tokens per window), upstream's window_partition order."""
    (dp, hp, wp), (wd, wh, ww) = grid.shape, window
    return grid.reshape(dp // wd, wd, hp // wh, wh, wp // ww, ww).transpose(
        0, 2, 4, 1, 3, 5).reshape(-1, wd * wh * ww)


def _mask_patterns(dp, hp, wp, window, shift, mask_frames) -> tuple[np.ndarray, np.ndarray]:
    """Each window's shift-mask pattern id, and the distinct patterns' masks (P, N, N)."""
    if _padded(mask_frames, window[0]) != dp:
        raise ValueError(f"the shift mask is built for {mask_frames} frames, not {dp}")
    label = (_shift_labels(dp, window[0], shift[0])[:, None, None] * 9
             + _shift_labels(hp, window[1], shift[1])[None, :, None] * 3
             + _shift_labels(wp, window[2], shift[2])[None, None, :])
    patterns, pattern_of = np.unique(_per_window(label, window), axis=0, return_inverse=True)
    masks = np.where(patterns[:, None, :] != patterns[:, :, None], -100.0, 0.0)
    return pattern_of.reshape(-1), masks.astype(np.float32)


@functools.lru_cache(maxsize=64)
def window_plan(n: int, t: int, h: int, w: int, window: tuple[int, int, int],
                shift: tuple[int, int, int], mask_frames: int, per_chunk: int,
                device: torch.device) -> WindowPlan:
    wd, wh, ww = window
    dp, hp, wp = _padded(t, wd), _padded(h, wh), _padded(w, ww)
    shifted = any(s > 0 for s in shift)
    roll = shift if shifted else (0, 0, 0)
    # Window token (a, b, c) of window (i, j, k) sits at rolled position (i*wd+a, ...),
    # which holds the padded grid's ((i*wd+a+sd) % dp, ...) since upstream rolls by -shift.
    d = (np.arange(dp) + roll[0]) % dp
    y = (np.arange(hp) + roll[1]) % hp
    x = (np.arange(wp) + roll[2]) % wp
    real = (d[:, None, None] < t) & (y[None, :, None] < h) & (x[None, None, :] < w)
    flat = d[:, None, None] * h * w + y[None, :, None] * w + x[None, None, :]
    src, valid = _per_window(flat, window), _per_window(real, window)
    if shifted:
        pattern_of, masks = _mask_patterns(dp, hp, wp, window, shift, mask_frames)
    else:
        pattern_of, masks = np.zeros(src.shape[0], dtype=np.int64), None

    tokens = t * h * w
    chunks = []
    for pattern in np.unique(pattern_of):
        members = np.nonzero(pattern_of == pattern)[0]
        # every batch item's copy of the window shares its mask: (window, batch) order
        rows = src[members][:, None, :] + np.arange(n)[None, :, None] * tokens
        ok = np.broadcast_to(valid[members][:, None, :], rows.shape)
        rows = np.where(ok, rows, n * tokens).reshape(-1, rows.shape[-1])
        ok = ok.reshape(rows.shape)
        for first in range(0, rows.shape[0], per_chunk):
            chunks.append(_chunk(rows[first:first + per_chunk], ok[first:first + per_chunk],
                                 int(pattern), device))
    return WindowPlan(tuple(chunks), None if masks is None else torch.from_numpy(masks).to(device))


def _chunk(rows: np.ndarray, ok: np.ndarray, pattern: int, device) -> WindowChunk:
    gather, ok = rows.reshape(-1), ok.reshape(-1)
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)
    if ok.all():
        return WindowChunk(as_tensor(gather), pattern, None, None, as_tensor(gather))
    keep = np.nonzero(ok)[0]
    return WindowChunk(as_tensor(gather), pattern, as_tensor(np.nonzero(~ok)[0]),
                       as_tensor(keep), as_tensor(gather[keep]))


def relative_position_index(window: tuple[int, int, int]) -> torch.Tensor:
    wd, wh, ww = window
    coords = torch.stack(torch.meshgrid(torch.arange(wd), torch.arange(wh), torch.arange(ww),
                                        indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += wd - 1
    rel[:, :, 1] += wh - 1
    rel[:, :, 2] += ww - 1
    rel[:, :, 0] *= (2 * wh - 1) * (2 * ww - 1)
    rel[:, :, 1] *= 2 * ww - 1
    return rel.sum(-1)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window_size: tuple[int, int, int], num_heads: int):
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, tuple(window_size), num_heads
        wd, wh, ww = window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1), num_heads))
        self.register_buffer("relative_position_index", relative_position_index(self.window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def bias(self) -> torch.Tensor:
        n = self.relative_position_index.shape[0]
        table = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return table.reshape(n, n, -1).permute(2, 0, 1).unsqueeze(0)      # 1, heads, N, N

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x``: normed tokens of whole windows (windows * N, C), window by window."""
        c, heads = self.dim, self.num_heads
        n_tok = self.relative_position_index.shape[0]
        qkv = self.qkv(x).view(-1, n_tok, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(-1, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinTransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window_size, shift_size, mlp_ratio: float):
        super().__init__()
        self.window_size, self.shift_size = tuple(window_size), tuple(shift_size)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, self.window_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    @property
    def shifted(self) -> bool:
        return any(s > 0 for s in self.shift_size)

    def masks(self, plan: WindowPlan, dtype) -> list[torch.Tensor]:
        """Relative position bias plus each shift-mask pattern: (1, heads, N, N) each."""
        bias = self.attn.bias().to(dtype)
        if plan.masks is None:
            return [bias]
        return [bias + m.to(dtype) for m in plan.masks]

    def forward(self, state: torch.Tensor, plan: WindowPlan, out: torch.Tensor) -> None:
        """Read the padded token state (M + 1, C), write the block's output into ``out``.

        Attention and the MLP run chunk by chunk over a few windows, so each token makes
        one round trip to memory per block; upstream's order of operations is kept (the
        padding is zeros after norm1; padded tokens' outputs are dropped)."""
        masks = self.masks(plan, state.dtype)
        for chunk in plan.chunks:
            x = state[chunk.gather]
            y = self.norm1(x)
            if chunk.pad is not None:
                y.index_fill_(0, chunk.pad, 0.0)
            x += self.attn(y, masks[chunk.pattern])
            x += self.mlp(self.norm2(x))
            if chunk.keep is not None:
                x = x[chunk.keep]
            out.index_copy_(0, chunk.dest, x)


class BasicLayer(nn.Module):
    def __init__(self, dim, depth, num_heads, window_size, mlp_ratio):
        super().__init__()
        shift = (window_size[0], window_size[1] // 2, window_size[2] // 2)
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, num_heads, window_size,
                                 (0, 0, 0) if i % 2 == 0 else shift, mlp_ratio)
            for i in range(depth)])


class RSTB(nn.Module):
    """Swin blocks, a 3x3 conv per frame, and the layer's residual."""

    def __init__(self, dim, depth, num_heads, window_size, mlp_ratio):
        super().__init__()
        self.residual_group = BasicLayer(dim, depth, num_heads, window_size, mlp_ratio)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, state: torch.Tensor, shape, plans, frames=slice(None)) -> torch.Tensor:
        """``state``: padded tokens (n*t*h*w + 1, C) in (n, t, h, w) order; returns the
        layer's output tokens (n, frames, h, w, C)."""
        n, t, h, w, c = shape
        x, spare = _token_state(state), _token_state(state)
        for i, block in enumerate(self.residual_group.blocks):
            block(state if i == 0 else x, plans[1] if block.shifted else plans[0], spare)
            x, spare = spare, x
        y = x[:-1].view(n, t, h, w, c)[:, frames]
        kept = y.shape[1]
        # a channels-last view of the tokens: the conv reads them in place
        img = y.reshape(n * kept, h, w, c).permute(0, 3, 1, 2)
        out = self.conv(img).permute(0, 2, 3, 1).reshape(n, kept, h, w, c)
        return out + state[:-1].view(n, t, h, w, c)[:, frames]


def _padded_state(tokens: torch.Tensor) -> torch.Tensor:
    """Tokens (..., C) as a padded token state (rows + 1, C)."""
    c = tokens.shape[-1]
    return torch.cat([tokens.reshape(-1, c), tokens.new_zeros(1, c)], 0)


def _token_state(like: torch.Tensor) -> torch.Tensor:
    """A fresh padded token state whose last row is the zero padding token."""
    state = torch.empty_like(like)
    state[-1].zero_()
    return state


class PatchEmbed(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)


class SwinIRFM(nn.Module):
    """One propagation branch: Swin layers over (previous aligned, current, second
    aligned) features, returning the refined current-frame feature."""

    NUM_FEAT = 64   # upstream hard-codes it for conv_first_feat / conv_before_upsample

    def __init__(self, in_chans=3, embed_dim=96, depths=(6, 6, 6, 6), num_heads=(6, 6, 6, 6),
                 window_size=(2, 7, 7), mlp_ratio=2.0, num_frames=3):
        super().__init__()
        self.window_size = tuple(window_size)
        self.shift_size = (window_size[0], window_size[1] // 2, window_size[2] // 2)
        self.num_frames = num_frames
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.conv_first_feat = nn.Conv2d(self.NUM_FEAT, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim)
        self.layers = nn.ModuleList([
            RSTB(embed_dim, depth, heads, self.window_size, mlp_ratio)
            for depth, heads in zip(depths, num_heads)])
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        self.conv_before_upsample = nn.Conv2d(embed_dim, self.NUM_FEAT, 3, 1, 1)

    def entry_conv(self, x: torch.Tensor) -> torch.Tensor:
        """Upstream switches on the channel count: 3 -> conv_first, 64 -> conv_first_feat
        (with the official embed_dim 120 neither applies)."""
        n, t, c, h, w = x.shape
        conv = {3: self.conv_first, self.NUM_FEAT: self.conv_first_feat}.get(c)
        if conv is None:
            return x
        return conv(x.reshape(n * t, c, h, w)).view(n, t, -1, h, w)

    def plans(self, n: int, t: int, h: int, w: int, device) -> tuple[WindowPlan, WindowPlan]:
        values = CHUNK_VALUES.get(device.type, CHUNK_VALUES["cpu"])
        per_chunk = max(1, values // (math.prod(self.window_size) * self.embed_dim))
        args = (n, t, h, w, self.window_size)
        return (window_plan(*args, (0, 0, 0), self.num_frames, per_chunk, device),
                window_plan(*args, self.shift_size, self.num_frames, per_chunk, device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (n, t, C, h, w); returns the centre frame's feature (n, C, h, w)."""
        x = self.entry_conv(x)
        n, t, c, h, w = x.shape
        centre = t // 2
        x_center = x[:, centre]
        tokens = F.layer_norm(x.permute(0, 1, 3, 4, 2), (c,), self.patch_embed.norm.weight,
                              self.patch_embed.norm.bias)
        plans = self.plans(n, t, h, w, x.device)
        shape = (n, t, h, w, c)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            # only the centre frame leaves this module: the last layer's per-frame conv
            # and residual (and the final norm) are computed for it alone
            frames = slice(centre, centre + 1) if i == last else slice(None)
            tokens = layer(_padded_state(tokens), shape, plans, frames)
        feat = self.norm(tokens[:, 0]).permute(0, 3, 1, 2)
        return self.conv_after_body(feat) + x_center


# --------------------------------------------------------------------- the model


class BasicRecurrentSwin(nn.Module):
    """PSRT-recurrent: SpyNet flows, four Swin propagation branches with patch alignment,
    and a pixel-shuffle x4 head added to the bilinear upsampling of the input."""

    def __init__(self, in_channels=3, mid_channels=64, embed_dim=120, depths=(6, 6, 6, 6, 6, 6),
                 num_heads=(6, 6, 6, 6, 6, 6), window_size=(3, 8, 8), num_frames=3, img_size=64,
                 patch_size=1, cpu_cache_length=100, is_low_res_input=True, spynet_path=None):
        super().__init__()
        if not is_low_res_input:
            raise ValueError("only is_low_res_input=True (the released x4 models) is supported")
        if patch_size != 1:
            raise ValueError("only patch_size=1 (the released models) is supported")
        self.mid_channels, self.embed_dim = mid_channels, embed_dim
        # img_size (FLOP counting), cpu_cache_length (memory placement) and spynet_path
        # (loaded by the checkpoint loader instead) do not change the maths
        self.conv_before_upsample = nn.Conv2d(embed_dim, mid_channels, 3, 1, 1)
        self.spynet = SpyNet()
        self.conv_first = nn.Conv2d(in_channels, embed_dim, 3, 1, 1)
        self.patch_align = nn.ModuleDict({
            name: SwinIRFM(in_channels, embed_dim, depths, num_heads, window_size, 2.0, num_frames)
            for name in BRANCHES})
        self.upconv1 = nn.Conv2d(mid_channels, mid_channels * 4, 3, 1, 1)
        self.upconv2 = nn.Conv2d(mid_channels, 64 * 4, 3, 1, 1)
        self.conv_hr = nn.Conv2d(64, 64, 3, 1, 1)
        self.conv_last = nn.Conv2d(64, 3, 3, 1, 1)

    @property
    def feature_dtype(self) -> torch.dtype:
        return self.conv_first.weight.dtype

    def compute_flow(self, lqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(flows_forward, flows_backward), each (n, t-1, 2, h, w), always in the
        SpyNet's own precision (flows pick patches with nearest sampling)."""
        n, t, c, h, w = lqs.shape
        lqs = lqs.to(self.spynet.mean.dtype)
        if t == 1:
            # a single frame never reads a flow (upstream would run SpyNet on nothing)
            empty = lqs.new_zeros(n, 0, 2, h, w)
            return empty, empty
        first = lqs[:, :-1].reshape(-1, c, h, w)
        second = lqs[:, 1:].reshape(-1, c, h, w)
        backward = self.spynet(first, second).view(n, t - 1, 2, h, w)
        forward = self.spynet(second, first).view(n, t - 1, 2, h, w)
        return forward, backward

    def propagate(self, feats: list, flows: torch.Tensor, name: str) -> list:
        """One branch over the clip. ``feats`` (the previous branch's per-frame output)
        is consumed: each entry is dropped once used, so memory stays at one branch."""
        t = len(feats)
        backward = name.startswith("backward")
        frames = range(t - 1, -1, -1) if backward else range(t)
        branch = self.patch_align[name]
        dtype = self.feature_dtype
        outs: list = [None] * t
        history: list[torch.Tensor] = []           # this branch's last two outputs
        for i, idx in enumerate(frames):
            current = feats[idx]
            feats[idx] = None
            if i == 0:
                cond = torch.stack([current, current, current], dim=1)
            else:
                flow_n1 = flows[:, idx if backward else idx - 1]
                cond_n1 = flow_warp_avg_patch(history[-1], flow_n1).to(dtype)
                if i > 1:
                    flow_n2 = flows[:, idx + 1 if backward else idx - 2]
                    flow_n2 = flow_n1 + flow_warp(flow_n2, flow_n1.permute(0, 2, 3, 1))
                    cond_n2 = flow_warp_avg_patch(history[-2], flow_n2).to(dtype)
                else:
                    cond_n2 = torch.zeros_like(cond_n1)
                cond = torch.stack([cond_n1, current, cond_n2], dim=1)
            prop = branch(cond)
            history = [history[-1], prop] if history else [prop]
            outs[idx] = prop
        return outs

    def features(self, lqs: torch.Tensor) -> list:
        """Per-frame forward_2 features of the clip (what the head upsamples)."""
        n, t, c, h, w = lqs.shape
        if h < MIN_SIZE or w < MIN_SIZE:
            raise ValueError(f"PSRT needs frames of at least {MIN_SIZE}x{MIN_SIZE}, got {w}x{h}")
        flows_forward, flows_backward = self.compute_flow(lqs)
        spatial = self.conv_first(lqs.to(self.feature_dtype).reshape(-1, c, h, w))
        feats = list(spatial.view(n, t, -1, h, w).unbind(1))
        del spatial
        for name in BRANCHES:
            flows = flows_backward if name.startswith("backward") else flows_forward
            feats = self.propagate(feats, flows, name)
        return feats

    def upsample_frame(self, lq: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        """x4 output of one frame (n, 3, 4h, 4w), not clamped."""
        hr = self.conv_before_upsample(feat)
        hr = F.leaky_relu(F.pixel_shuffle(self.upconv1(hr), 2), 0.1)
        hr = F.leaky_relu(F.pixel_shuffle(self.upconv2(hr), 2), 0.1)
        hr = F.leaky_relu(self.conv_hr(hr), 0.1)
        hr = self.conv_last(hr)
        base = F.interpolate(lq.to(hr.dtype), scale_factor=4, mode="bilinear", align_corners=False)
        return hr + base

    def forward(self, lqs: torch.Tensor) -> torch.Tensor:
        """(n, t, 3, h, w) RGB in [0, 1] -> (n, t, 3, 4h, 4w), as the authors' forward."""
        feats = self.features(lqs)
        return torch.stack([self.upsample_frame(lqs[:, i], f) for i, f in enumerate(feats)], 1)


def build_network(**kwargs) -> BasicRecurrentSwin:
    """The network from kwargs in the authors' names; missing ones take the official
    (released REDS checkpoint) values."""
    unknown = set(kwargs) - set(OFFICIAL_KWARGS)
    if unknown:
        raise ValueError(f"unknown PSRT kwargs: {sorted(unknown)}")
    return BasicRecurrentSwin(**{**OFFICIAL_KWARGS, **kwargs})


def index_buffer_keys(module: nn.Module) -> list[str]:
    """State-dict keys the network rebuilds itself (deterministic index buffers)."""
    return [k for k in module.state_dict() if k.endswith(".attn.relative_position_index")]
