"""The RVRT network (video denoising configuration), written here in PyTorch.

Module and parameter names follow the authors' ``models/network_rvrt.py`` so that their
released checkpoint loads strictly. The guided deformable attention, a compiled CUDA op
upstream, is :func:`deform_attn` below: exact PyTorch built on ``grid_sample``.

Only the ``upscale=1`` variant (deblurring, denoising) is built; the video
super-resolution variant shapes its feature extractor differently.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

# The released 006 checkpoint (non-blind video denoising, trained on DAVIS).
OFFICIAL_KWARGS = {
    "upscale": 1, "clip_size": 2, "img_size": [2, 64, 64], "window_size": [2, 8, 8],
    "num_blocks": [1, 2, 1], "depths": [2, 2, 2], "embed_dims": [192, 192, 192],
    "num_heads": [6, 6, 6], "inputconv_groups": [1, 3, 4, 6, 8, 4],
    "deformable_groups": 12, "attention_heads": 12, "attention_window": [3, 3],
    "nonblind_denoising": True, "cpu_cache_length": 100,
}

BRANCHES = ("backward_1", "forward_1", "backward_2", "forward_2")


def placeholder() -> nn.Module:
    """Holds a Sequential index where the authors permute axes; the forward passes
    below work in the layouts they need directly, so nothing is computed there."""
    return nn.Identity()


def per_channel(linear: nn.Linear, x):
    """A Linear over the channel axis of (n, d, c, h, w)."""
    return linear(x.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)


def flow_warp(x, flow, padding_mode: str = "zeros"):
    """Sample ``x`` (n, c, h, w) at pixel + ``flow`` (n, h, w, 2 = x, y), bilinearly.

    Coordinates are kept in float32 even when features are half precision: a 1/32 px
    error in a flow would move every sample."""
    n, _, h, w = x.shape
    rows = torch.arange(h, device=x.device, dtype=torch.float32)
    cols = torch.arange(w, device=x.device, dtype=torch.float32)
    grid_y, grid_x = torch.meshgrid(rows, cols, indexing="ij")
    flow = flow.float()
    gx = 2.0 * (grid_x + flow[..., 0]) / max(w - 1, 1) - 1.0
    gy = 2.0 * (grid_y + flow[..., 1]) / max(h - 1, 1) - 1.0
    grid = torch.stack((gx, gy), dim=3)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode=padding_mode,
                        align_corners=True)
    return out.to(x.dtype)


def deform_attn(q, kv, offset, kernel_h, kernel_w, stride, padding, dilation,
                attention_heads, deformable_groups, clip_size):
    """Guided deformable attention, the op upstream compiles for CUDA.

    q: (B*clip, 1, C', h, w) projected queries; kv: (B, clip, 2C', h, w) = [K, V];
    offset: (B*clip, clip*G*kh*kw*2, h, w), (dy, dx) pairs ordered [set][group][point].
    Query frame j of a clip attends, with offset set n, to kv frame (j + n) % clip.
    Channel c of kv is sampled with group c // (2C'/G), so K and V take different
    groups. Per head one softmax runs over all clip*kh*kw samples."""
    bt, _, cq, h, w = q.shape
    points = kernel_h * kernel_w
    groups = deformable_groups
    sampled = _sample_kv(kv, offset, clip_size, groups, kernel_h, kernel_w,
                         stride, padding, dilation)           # (bt, clip, 2C', points, hw)
    head = cq // attention_heads
    sampled = sampled.view(bt, clip_size, 2, attention_heads, head, points, h * w)
    keys, values = sampled[:, :, 0], sampled[:, :, 1]         # (bt, clip, A, d, points, hw)
    query = q.float().reshape(bt, 1, attention_heads, head, 1, h * w) * head ** -0.5
    logits = (keys * query).sum(3)                            # (bt, clip, A, points, hw)
    logits = logits.transpose(1, 2).reshape(bt, attention_heads, clip_size * points, h * w)
    weights = torch.softmax(logits, dim=2)
    weights = weights.view(bt, attention_heads, clip_size, points, h * w).transpose(1, 2)
    out = (values * weights.unsqueeze(3)).sum(dim=(1, 4))     # (bt, A, d, hw)
    return out.reshape(bt, 1, cq, h, w).to(q.dtype)


def _sample_kv(kv, offset, clip_size, groups, kernel_h, kernel_w, stride, padding, dilation):
    """Bilinear samples of kv at the offset positions: (B*clip, clip, 2C', points, h*w).

    Taps outside the frame count as zero, which is grid_sample's zero padding with
    align_corners=True."""
    b, _, channels, h, w = kv.shape
    bt = b * clip_size
    points = kernel_h * kernel_w
    frames = [[(j + n) % clip_size for n in range(clip_size)] for j in range(clip_size)]
    order = torch.tensor(frames, device=kv.device).flatten()
    images = kv.float()[:, order].reshape(bt * clip_size * groups, channels // groups, h, w)
    off = offset.float().view(bt, clip_size, groups, points, 2, h, w)
    base_y, base_x = _window_positions(h, w, kernel_h, kernel_w, stride, padding, dilation,
                                       kv.device)
    pos_y = base_y + off[:, :, :, :, 0]                       # (bt, clip, G, points, h, w)
    pos_x = base_x + off[:, :, :, :, 1]
    grid = torch.stack((2.0 * pos_x / max(w - 1, 1) - 1.0,
                        2.0 * pos_y / max(h - 1, 1) - 1.0), dim=-1)
    grid = grid.view(bt * clip_size * groups, points, h * w, 2)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=True)                   # (N, C'/G*2, points, hw)
    return out.view(bt, clip_size, channels, points, h * w)


@lru_cache(maxsize=32)
def _window_positions_cpu(h, w, kernel_h, kernel_w, stride, padding, dilation):
    rows = torch.arange(h, dtype=torch.float32) * stride - padding
    cols = torch.arange(w, dtype=torch.float32) * stride - padding
    taps_y = torch.arange(kernel_h, dtype=torch.float32).repeat_interleave(kernel_w) * dilation
    taps_x = torch.arange(kernel_w, dtype=torch.float32).repeat(kernel_h) * dilation
    base_y = taps_y.view(-1, 1, 1) + rows.view(1, -1, 1)
    base_x = taps_x.view(-1, 1, 1) + cols.view(1, 1, -1)
    return base_y.expand(-1, h, w), base_x.expand(-1, h, w)


def _window_positions(h, w, kernel_h, kernel_w, stride, padding, dilation, device):
    """Where each window point of each output pixel sits before its offset: (points, h, w)."""
    base_y, base_x = _window_positions_cpu(h, w, kernel_h, kernel_w, stride, padding, dilation)
    return base_y.to(device), base_x.to(device)


# ---------------------------------------------------------------- optical flow (SpyNet)

class BasicModule(nn.Module):
    """One pyramid level of SpyNet: [ref, warped supp, flow] -> flow residual."""

    def __init__(self):
        super().__init__()
        widths = (8, 32, 64, 32, 16, 2)
        layers = []
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Conv2d(cin, cout, kernel_size=7, stride=1, padding=3))
            if i < len(widths) - 2:
                layers.append(nn.ReLU(inplace=False))
        self.basic_module = nn.Sequential(*layers)

    def forward(self, x):
        return self.basic_module(x)


class SpyNet(nn.Module):
    """Coarse-to-fine optical flow over a 6-level pyramid; flow (x, y) in input pixels."""

    levels = 6

    def __init__(self):
        super().__init__()
        self.basic_module = nn.ModuleList([BasicModule() for _ in range(self.levels)])
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, ref, supp):
        h, w = ref.shape[-2:]
        h32, w32 = math.ceil(h / 32) * 32, math.ceil(w / 32) * 32
        ref = self._pyramid(F.interpolate(ref, size=(h32, w32), mode="bilinear",
                                          align_corners=False))
        supp = self._pyramid(F.interpolate(supp, size=(h32, w32), mode="bilinear",
                                           align_corners=False))
        coarse = ref[0]
        flow = coarse.new_zeros(coarse.shape[0], 2, coarse.shape[2] // 2, coarse.shape[3] // 2)
        for level, (ref_l, supp_l) in enumerate(zip(ref, supp)):
            flow = self._refine(level, ref_l, supp_l, flow)
        flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
        rescale = torch.tensor([w / w32, h / h32], dtype=flow.dtype, device=flow.device)
        return flow * rescale.view(1, 2, 1, 1)

    def _pyramid(self, frames):
        """Normalised frames, coarsest level first."""
        levels = [(frames - self.mean) / self.std]
        for _ in range(self.levels - 1):
            levels.insert(0, F.avg_pool2d(levels[0], kernel_size=2, stride=2,
                                          count_include_pad=False))
        return levels

    def _refine(self, level, ref, supp, flow):
        up = F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=True) * 2.0
        # Odd sizes lose a row or column in the pool; the flow repeats its last one.
        if up.shape[2] != ref.shape[2]:
            up = F.pad(up, [0, 0, 0, 1], mode="replicate")
        if up.shape[3] != ref.shape[3]:
            up = F.pad(up, [0, 1, 0, 0], mode="replicate")
        warped = flow_warp(supp, up.permute(0, 2, 3, 1), padding_mode="border")
        return self.basic_module[level](torch.cat([ref, warped, up], 1)) + up


# ---------------------------------------------------------------- Swin-3D blocks
#
# Token maps are kept channels-last, (B, D, H, W, C), throughout a block stack.

def window_partition(x, window):
    """(B, D, H, W, C) -> (B * windows, prod(window), C)."""
    b, d, h, w, c = x.shape
    x = x.view(b, d // window[0], window[0], h // window[1], window[1], w // window[2],
               window[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, window[0] * window[1] * window[2], c)


def effective_window(size, window, shift):
    """A window no smaller than the feature map shrinks to it, and then never shifts."""
    use_window, use_shift = list(window), list(shift)
    for i, extent in enumerate(size):
        if extent <= window[i]:
            use_window[i] = extent
            use_shift[i] = 0
    return tuple(use_window), tuple(use_shift)


@lru_cache(maxsize=64)
def shift_mask(d, h, w, window, shift, device):
    """The -100 mask that keeps shifted windows from mixing regions, for padded sizes."""
    regions = torch.zeros((1, d, h, w, 1), device=device)
    label = 0
    spans = [(slice(-window[i]), slice(-window[i], -shift[i]), slice(-shift[i], None))
             for i in range(3)]
    for sd in spans[0]:
        for sh in spans[1]:
            for sw in spans[2]:
                regions[:, sd, sh, sw, :] = label
                label += 1
    labels = window_partition(regions, window).squeeze(-1)
    mask = labels.unsqueeze(1) - labels.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


@lru_cache(maxsize=64)
def window_order(d, h, w, window, shift, device):
    """Token indices for (zero-pad to whole windows, cyclic shift, partition) and back.

    ``gather`` lists, window by window, which flattened D*H*W token each window slot
    holds (index D*H*W = an appended zero token for the padding); ``scatter`` maps each
    real token to its slot. One index_select each way replaces pad, roll and the
    partition copies, and moves exactly the same values."""
    padded = [math.ceil(s / wi) * wi for s, wi in zip((d, h, w), window)]
    # torch.roll by -s puts source (i + s) mod p at position i.
    src = [(torch.arange(p) + s) % p for p, s in zip(padded, shift)]
    counts = [p // wi for p, wi in zip(padded, window)]
    src_d = src[0].view(counts[0], 1, 1, window[0], 1, 1)
    src_h = src[1].view(1, counts[1], 1, 1, window[1], 1)
    src_w = src[2].view(1, 1, counts[2], 1, 1, window[2])
    real = ((src_d < d) & (src_h < h) & (src_w < w)).flatten()
    flat = (src_d * h * w + src_h * w + src_w).flatten()
    gather = torch.where(real, flat, torch.full_like(flat, d * h * w))
    scatter = torch.empty(d * h * w, dtype=torch.long)
    scatter[flat[real]] = torch.arange(flat.numel())[real]
    return gather.to(device), scatter.to(device)


def relative_position_index(window):
    """Index into the relative-position bias table for every pair of window tokens."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(s) for s in window], indexing="ij"))
    coords = coords.flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    for axis in range(3):
        rel[:, :, axis] += window[axis] - 1
    rel[:, :, 0] *= (2 * window[1] - 1) * (2 * window[2] - 1)
    rel[:, :, 1] *= 2 * window[2] - 1
    return rel.sum(-1)


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features=None, out_features=None):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features or in_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features or in_features, out_features or in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a relative-position bias."""

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        table_size = math.prod(2 * s - 1 for s in window_size)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_size, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv_self = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        """x: (B * windows, N, C); mask: (windows, N, N) or None.

        Written out rather than fused (scaled_dot_product_attention) because the fused
        kernel rounds differently, and the authors' 8-bit outputs then differ by one
        level at rounding ties."""
        b, n, c = x.shape
        qkv = self.qkv_self(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1) + self._bias(n).unsqueeze(0)
        if mask is not None:
            windows = mask.shape[0]
            attn = attn.view(b // windows, windows, self.num_heads, n, n)
            attn = attn + mask[:, :n, :n].unsqueeze(1).unsqueeze(0).to(attn.dtype)
            attn = attn.view(b, self.num_heads, n, n)
        attn = torch.softmax(attn, -1, dtype=q.dtype)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))

    def _bias(self, n):
        index = self.relative_position_index[:n, :n].reshape(-1)
        return self.relative_position_bias_table[index].reshape(n, n, -1).permute(2, 0, 1)


class STL(nn.Module):
    """Swin transformer layer: (shifted) window attention and an MLP, both residual."""

    def __init__(self, dim, num_heads, window_size, shift_size, mlp_ratio=2.0,
                 qkv_bias=True, qk_scale=None):
        super().__init__()
        self.window_size = tuple(window_size)
        self.shift_size = tuple(shift_size)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, self.window_size, num_heads, qkv_bias, qk_scale)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, mask):
        x = x + self._attend(x, mask)
        return x + self.mlp(self.norm2(x))

    def _attend(self, x, mask):
        b, d, h, w, c = x.shape
        window, shift = effective_window((d, h, w), self.window_size, self.shift_size)
        gather, scatter = window_order(d, h, w, window, shift, x.device)
        # Padding comes after the norm, so padded tokens are zeros that still attend.
        tokens = self.norm1(x).reshape(b, d * h * w, c)
        tokens = torch.cat([tokens, tokens.new_zeros(b, 1, c)], dim=1)
        windows = tokens.index_select(1, gather).view(-1, math.prod(window), c)
        out = self.attn(windows, mask if any(s > 0 for s in shift) else None)
        return out.view(b, -1, c).index_select(1, scatter).view(b, d, h, w, c)


class STG(nn.Module):
    """A group of STLs, every second one shifted by half a window."""

    def __init__(self, dim, depth, num_heads, window_size, mlp_ratio=2.0, qkv_bias=True,
                 qk_scale=None):
        super().__init__()
        self.window_size = tuple(window_size)
        self.shift_size = tuple(s // 2 for s in window_size)
        self.blocks = nn.ModuleList([
            STL(dim, num_heads, window_size, (0, 0, 0) if i % 2 == 0 else self.shift_size,
                mlp_ratio, qkv_bias, qk_scale)
            for i in range(depth)])

    def forward(self, x):
        """x: (B, D, H, W, C)."""
        _, d, h, w, _ = x.shape
        window, shift = effective_window((d, h, w), self.window_size, self.shift_size)
        padded = tuple(math.ceil(s / wi) * wi for s, wi in zip((d, h, w), window))
        mask = shift_mask(*padded, window, shift, x.device) if any(shift) else None
        for block in self.blocks:
            x = block(x, mask)
        return x


class RSTB(nn.Module):
    """Residual Swin transformer block: x + linear(STG(x)), on (B, D, H, W, C)."""

    def __init__(self, dim, depth, num_heads, window_size, mlp_ratio, qkv_bias, qk_scale):
        super().__init__()
        self.residual_group = STG(dim, depth, num_heads, window_size, mlp_ratio, qkv_bias,
                                  qk_scale)
        self.linear = nn.Linear(dim, dim)

    def forward(self, x):
        return x + self.linear(self.residual_group(x))


class RSTBWithInputConv(nn.Module):
    """A grouped 1x3x3 convolution, then RSTBs between LayerNorms: (n, d, c, h, w) in/out."""

    def __init__(self, in_channels, groups, num_blocks, dim, depth, num_heads, window_size,
                 mlp_ratio=2.0, qkv_bias=True, qk_scale=None):
        super().__init__()
        blocks = [RSTB(dim, depth, num_heads, window_size, mlp_ratio, qkv_bias, qk_scale)
                  for _ in range(num_blocks)]
        self.main = nn.Sequential(
            placeholder(),
            nn.Conv3d(in_channels, dim, kernel_size=(1, 3, 3), padding=(0, 1, 1), groups=groups),
            placeholder(),
            nn.LayerNorm(dim),
            placeholder(),
            nn.Sequential(*blocks),
            placeholder(),
            nn.LayerNorm(dim),
            placeholder())

    def forward(self, x):
        x = self.main[1](x.transpose(1, 2))
        x = self.main[3](x.permute(0, 2, 3, 4, 1))
        for block in self.main[5]:
            x = block(x)
        return self.main[7](x).permute(0, 1, 4, 2, 3)


class Upsample(nn.Sequential):
    """x4 by two (conv 64->256, pixel shuffle x2, LeakyReLU) steps, then a conv; on
    (n, c, d, h, w)."""

    def __init__(self, scale, num_feat):
        if scale != 4:
            raise ValueError(f"only the x4 upsampler of the released models is built, not x{scale}")
        layers = []
        for _ in range(2):
            layers += [nn.Conv3d(num_feat, 4 * num_feat, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
                       placeholder(), nn.PixelShuffle(2), placeholder(),
                       nn.LeakyReLU(negative_slope=0.1, inplace=True)]
        layers.append(nn.Conv3d(num_feat, num_feat, kernel_size=(1, 3, 3), padding=(0, 1, 1)))
        super().__init__(*layers)

    def forward(self, x):
        for layer in self:
            if isinstance(layer, nn.PixelShuffle):
                x = layer(x.transpose(1, 2)).transpose(1, 2)
            else:
                x = layer(x)
        return x


# ---------------------------------------------------------------- guided deformable attention

class GuidedDeformAttnPack(nn.Module):
    """Aligns the propagated clip features to the current clip.

    Offsets = optical flow + a learnt residual (max_residue_magnitude * tanh), predicted
    from the query, the flow-warped propagated features and the flows; then deformable
    attention of the current clip's queries over both frames of the previous one."""

    def __init__(self, in_channels, attention_window=(3, 3), attention_heads=12,
                 deformable_groups=12, clip_size=2, max_residue_magnitude=10):
        super().__init__()
        self.in_channels = in_channels
        self.kernel_h, self.kernel_w = attention_window
        self.attn_size = self.kernel_h * self.kernel_w
        self.attention_heads = attention_heads
        self.deformable_groups = deformable_groups
        self.clip_size = clip_size
        self.max_residue_magnitude = max_residue_magnitude
        self.stride, self.padding, self.dilation = 1, self.kernel_h // 2, 1
        self.proj_channels = 2 * in_channels
        self.proj_q = _channel_linear(in_channels, self.proj_channels)
        self.proj_k = _channel_linear(in_channels, self.proj_channels)
        self.proj_v = _channel_linear(in_channels, self.proj_channels)
        self.mlp = nn.Sequential(placeholder(), Mlp(in_channels, in_channels * 2, in_channels),
                                 placeholder())
        self.conv_offset = self._offset_net()
        self.proj = _channel_linear(self.proj_channels, in_channels)

    def _offset_net(self):
        cin = self.in_channels * (1 + self.clip_size) + self.clip_size * 2
        cout = self.clip_size * self.deformable_groups * self.attn_size * 2
        layers = [nn.Conv3d(cin, 64, kernel_size=(1, 1, 1))]
        for _ in range(4):
            layers += [nn.LeakyReLU(negative_slope=0.1, inplace=True),
                       nn.Conv3d(64, 64, kernel_size=(1, 3, 3), padding=(0, 1, 1))]
        layers += [nn.LeakyReLU(negative_slope=0.1, inplace=True),
                   nn.Conv3d(64, cout, kernel_size=(1, 1, 1))]
        return nn.Sequential(*layers)

    def forward(self, q, k, v, v_prop_warped, flows, return_updateflow):
        offset1, offset2 = self._offsets(q, v_prop_warped, flows)
        b, t, c, h, w = offset1.shape
        offset = torch.cat([offset1, offset2], dim=2).flatten(0, 1)
        query = per_channel(self.proj_q[1], q).reshape(b * t, 1, self.proj_channels, h, w)
        kv = torch.cat([per_channel(self.proj_k[1], k), per_channel(self.proj_v[1], v)], 2)
        out = deform_attn(query, kv, offset, self.kernel_h, self.kernel_w, self.stride,
                          self.padding, self.dilation, self.attention_heads,
                          self.deformable_groups, self.clip_size)
        out = per_channel(self.proj[1], out.view(b, t, self.proj_channels, h, w))
        out = out + per_channel(self.mlp[1], out)
        if not return_updateflow:
            return out
        return out, _mean_flow(offset1), _mean_flow(offset2)

    def _offsets(self, q, v_prop_warped, flows):
        """Two offset halves (n, t, G*points*2, h, w) as (dy, dx): flow + residual."""
        x = torch.cat([q, *v_prop_warped, *flows], dim=2)
        residual = self.conv_offset(x.transpose(1, 2)).transpose(1, 2).float()
        residual = self.max_residue_magnitude * torch.tanh(residual)
        half1, half2 = torch.chunk(residual, 2, dim=2)
        copies = half1.shape[2] // 2
        half1 = half1 + flows[0].float().flip(2).repeat(1, 1, copies, 1, 1)
        half2 = half2 + flows[1].float().flip(2).repeat(1, 1, copies, 1, 1)
        return half1, half2


def _channel_linear(cin, cout):
    """A Linear (applied with per_channel) at the authors' Sequential index."""
    return nn.Sequential(placeholder(), nn.Linear(cin, cout), placeholder())


def _mean_flow(offset):
    """The flow the offsets agree on: the mean (dy, dx) over all pairs, back as (x, y)."""
    b, t, c, h, w = offset.shape
    return offset.view(b, t, c // 2, 2, h, w).mean(2).flip(2)


# ---------------------------------------------------------------- RVRT

class FeatureExtractor(nn.Sequential):
    """Two stride-2 1x3x3 convolutions with LeakyReLU, then an RSTBWithInputConv:
    (n, t, cin, h, w) -> (n, t, dim, h/4, w/4)."""

    def __init__(self, in_channels, dim, rstb):
        super().__init__(
            placeholder(),
            nn.Conv3d(in_channels, dim, (1, 3, 3), (1, 2, 2), (0, 1, 1)),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            nn.Conv3d(dim, dim, (1, 3, 3), (1, 2, 2), (0, 1, 1)),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            placeholder(),
            rstb)

    def forward(self, x):
        x = x.transpose(1, 2)
        x = self[4](self[3](self[2](self[1](x))))
        return self[6](x.transpose(1, 2))


class RVRT(nn.Module):
    """Recurrent Video Restoration Transformer, deblurring/denoising variant (upscale 1).

    Input (n, t, 3 or 4, h, w): RGB in [0, 1], plus a constant sigma/255 channel when
    ``nonblind_denoising``; t even, h and w multiples of 4 and at least 132. Output
    (n, t, 3, h, w), not clamped."""

    def __init__(self, upscale=1, clip_size=2, img_size=(2, 64, 64), window_size=(2, 8, 8),
                 num_blocks=(1, 2, 1), depths=(2, 2, 2), embed_dims=(192, 192, 192),
                 num_heads=(6, 6, 6), mlp_ratio=2.0, qkv_bias=True, qk_scale=None,
                 inputconv_groups=(1, 3, 4, 6, 8, 4), max_residue_magnitude=10,
                 deformable_groups=12, attention_heads=12, attention_window=(3, 3),
                 nonblind_denoising=True, cpu_cache_length=100):
        super().__init__()
        if upscale != 1:
            raise ValueError(f"only the upscale=1 (deblur/denoise) RVRT is built, not {upscale}")
        self.upscale = upscale
        self.clip_size = clip_size
        self.nonblind_denoising = nonblind_denoising
        # img_size and cpu_cache_length change nothing we compute: the first is only
        # recorded upstream, the second moves long clips to host memory, and the stage
        # never passes more than one tile of frames.
        self.img_size = list(img_size)
        self.cpu_cache_length = cpu_cache_length
        swin = dict(mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale)
        frame_window = (1, window_size[1], window_size[2])
        dim = embed_dims[0]

        self.spynet = SpyNet()
        self.feat_extract = FeatureExtractor(
            4 if nonblind_denoising else 3, dim,
            RSTBWithInputConv(dim, inputconv_groups[0], num_blocks[0], dim, depths[0],
                              num_heads[0], frame_window, **swin))
        self.backbone = nn.ModuleDict()
        self.deform_align = nn.ModuleDict()
        for i, name in enumerate(BRANCHES):
            self.deform_align[name] = GuidedDeformAttnPack(
                embed_dims[1], attention_window, attention_heads, deformable_groups,
                clip_size, max_residue_magnitude)
            self.backbone[name] = RSTBWithInputConv(
                (2 + i) * dim, inputconv_groups[i + 1], num_blocks[1], embed_dims[1],
                depths[1], num_heads[1], window_size, **swin)
        self.reconstruction = RSTBWithInputConv(
            5 * dim, inputconv_groups[5], num_blocks[2], embed_dims[2], depths[2],
            num_heads[2], frame_window, **swin)
        self.conv_before_upsampler = nn.Sequential(
            nn.Conv3d(embed_dims[-1], 64, kernel_size=(1, 1, 1)),
            nn.LeakyReLU(negative_slope=0.1, inplace=True))
        self.upsampler = Upsample(4, 64)
        self.conv_last = nn.Conv3d(64, 3, kernel_size=(1, 3, 3), padding=(0, 1, 1))

    def forward(self, lqs):
        return self.forward_features(lqs)[0]

    def forward_features(self, lqs):
        """The output and the intermediates parity checks look at: (out, flows, feats)."""
        n, t, _, h, w = lqs.shape
        feats = {"shallow": list(torch.chunk(self.feat_extract(lqs), t // self.clip_size, dim=1))}
        flows_forward, flows_backward = self.compute_flow(lqs[:, :, :3])
        updated_flows = {}
        for name in BRANCHES:
            flows = flows_backward if name.startswith("backward") else flows_forward
            feats[name] = self.propagate(feats, flows, name, updated_flows)
        return self.reconstruct(lqs[:, :, :3], feats), (flows_forward, flows_backward), feats

    def compute_flow(self, rgb):
        """SpyNet flows on the bicubic quarter-size frames: (forward, backward), each
        (n, t-1, 2, h/4, w/4). backward[i] maps frame i to i+1; forward[i] the reverse."""
        n, t, c, h, w = rgb.shape
        with _full_precision(rgb):
            small = F.interpolate(rgb.float().reshape(-1, c, h, w), scale_factor=0.25,
                                  mode="bicubic", align_corners=False)
            small = small.view(n, t, c, h // 4, w // 4)
            earlier = small[:, :-1].reshape(-1, c, h // 4, w // 4)
            later = small[:, 1:].reshape(-1, c, h // 4, w // 4)
            backward = self.spynet(earlier, later).view(n, t - 1, 2, h // 4, w // 4)
            forward = self.spynet(later, earlier).view(n, t - 1, 2, h // 4, w // 4)
        return forward, backward

    def propagate(self, feats, flows, name, updated_flows):
        """One recurrent branch over the clips; returns its features per clip, in natural
        clip and frame order. Backward branches walk the clips last to first, each clip
        reversed in time."""
        backward = name.startswith("backward")
        num_clips = (flows.shape[1] + 1) // self.clip_size
        clip_order = list(range(num_clips))[::-1] if backward else list(range(num_clips))
        timed = (lambda x: x.flip(1)) if backward else (lambda x: x)
        previous = list(feats)[-1]
        feat_prop = torch.zeros_like(feats["shallow"][0])
        outputs = []
        for i, clip in enumerate(clip_order):
            if i > 0:
                flow_n1, flow_n2 = self._clip_flows(flows, name, i, updated_flows)
                feat_q = timed(feats[previous][clip])
                feat_k = timed(feats[previous][clip_order[i - 1]])
                feat_prop = self._align(name, feat_q, feat_k, feat_prop, flow_n1, flow_n2,
                                        updated_flows)
            inputs = [timed(feats[key][clip]) for key in feats] + [feat_prop]
            feat_prop = feat_prop + self.backbone[name](torch.cat(inputs, dim=2))
            outputs.append(feat_prop)
        if backward:
            outputs = [o.flip(1) for o in outputs[::-1]]
        return outputs

    def _clip_flows(self, flows, name, i, updated_flows):
        """Flows from the current clip's two frames to the previous clip's (n, 2, 2, h, w).

        The first-pass branches compose them from the frame-to-frame flows; the second
        pass reuses the flows the first pass refined for the same step."""
        if name.endswith("_2"):
            return updated_flows[(name[:-2] + "_1", i - 1)]
        t = flows.shape[1]
        steps = list(range(t + 1))[::-1] if name.startswith("backward") else list(range(-1, t))
        with _full_precision(flows):
            n01 = flows[:, steps[2 * i - 1]].float()
            n12 = flows[:, steps[2 * i]].float()
            n23 = flows[:, steps[2 * i + 1]].float()
            n02 = n12 + flow_warp(n01, n12.permute(0, 2, 3, 1))
            n13 = n23 + flow_warp(n12, n23.permute(0, 2, 3, 1))
            n03 = n23 + flow_warp(n02, n23.permute(0, 2, 3, 1))
        return torch.stack([n02, n13], 1), torch.stack([n12, n03], 1)

    def _align(self, name, feat_q, feat_k, feat_prop, flow_n1, flow_n2, updated_flows):
        warped1 = _warp_clip(feat_prop, flow_n1)
        warped2 = _warp_clip(feat_prop.flip(1), flow_n2)
        module = self.deform_align[name]
        if name.endswith("_2"):
            return module(feat_q, feat_k, feat_prop, [warped1, warped2], [flow_n1, flow_n2], False)
        aligned, new_n1, new_n2 = module(feat_q, feat_k, feat_prop, [warped1, warped2],
                                         [flow_n1, flow_n2], True)
        step = sum(1 for key in updated_flows if key[0] == name)
        updated_flows[(name, step)] = (new_n1, new_n2)
        return aligned

    def reconstruct(self, rgb, feats):
        """All five feature sets -> RSTB -> x4 upsampler -> RGB residual + input."""
        hr = torch.cat([torch.cat(feats[key], 1) for key in feats], dim=2)
        hr = self.conv_before_upsampler(self.reconstruction(hr).transpose(1, 2))
        hr = self.conv_last(self.upsampler(hr)).transpose(1, 2)
        # The input is added back in float32 even under half precision, so rounding
        # touches only the network's correction, not the picture it corrects.
        return hr.float() + rgb.float()


def _warp_clip(feat, flow):
    """Warp each frame of a clip (n, t, c, h, w) by its own flow (n, t, 2, h, w)."""
    n, t, c, h, w = feat.shape
    out = flow_warp(feat.flatten(0, 1), flow.permute(0, 1, 3, 4, 2).flatten(0, 1))
    return out.view(n, t, c, h, w)


def _full_precision(like):
    """Autocast off where flows and offsets are computed: sub-pixel positions need
    float32 even when the rest runs in half precision."""
    return torch.autocast(like.device.type, enabled=False)


def build_network(**kwargs) -> RVRT:
    """RVRT from keyword arguments in the authors' names; missing ones take the released
    006 checkpoint's values. Training-only switches (gradient checkpointing, spynet_path)
    are accepted and have no effect on inference."""
    for unused in ("spynet_path", "use_checkpoint_attn", "use_checkpoint_ffn",
                   "no_checkpoint_attn_blocks", "no_checkpoint_ffn_blocks", "norm_layer"):
        kwargs.pop(unused, None)
    return RVRT(**{**OFFICIAL_KWARGS, **kwargs})
