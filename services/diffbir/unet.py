"""DiffBIR stage 2's denoiser: the Stable Diffusion 2.1 UNet that adds ControlNet residuals
(``diffbir/model/controlnet.py:ControlledUnetModel`` over ``diffbir/model/unet.py:UNetModel``),
written for this project with the parameter names of the SD checkpoint
(``model.diffusion_model.*`` there; unprefixed here).

API::

    unet = ControlledUnetModel(**kwargs)          # kwargs as in configs/inference/cldm.yaml
    eps_or_v = unet(x, t, context, control=None)  # x (B,4,h,w), t (B,) int, context (B,77,D)

``control`` is the list the ControlNet returns (``controlnet.ControlNet``), already multiplied
by the control scales (``controlnet.scaled``): its last entry is added to the middle block's
output, the others, popped from the end, to the encoder skips before each decoder block.

The blocks (``ResBlock``, ``SpatialTransformer``, ``Downsample``, ``Upsample``, the
timestep embedding) are shared with the ControlNet, which copies the encoder. Everything
runs under ``torch.autocast`` (GroupNorm kept in float32 as the authors do) and accepts
channels_last inputs.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

# configs/inference/cldm.yaml unet_cfg (SD 2.1 base, 512 and 768 alike).
OFFICIAL_KWARGS = {
    "use_checkpoint": True, "image_size": 32, "in_channels": 4, "out_channels": 4,
    "model_channels": 320, "attention_resolutions": [4, 2, 1], "num_res_blocks": 2,
    "channel_mult": [1, 2, 4, 4], "num_head_channels": 64, "use_spatial_transformer": True,
    "use_linear_in_transformer": True, "transformer_depth": 1, "context_dim": 1024,
    "legacy": False,
}
MAX_PERIOD = 10000
GROUPS = 32


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B, dim) float32 sinusoidal embedding, laid out [cos, sin] (cos first, as upstream;
    [sin, cos] moves the UNet output by ~0.2)."""
    half = dim // 2
    freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32,
                                                           device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def time_embed(model_channels: int) -> nn.Sequential:
    """``time_embed``: Linear -> SiLU -> Linear to 4 x model_channels."""
    width = 4 * model_channels
    return nn.Sequential(nn.Linear(model_channels, width), nn.SiLU(), nn.Linear(width, width))


def embed_timesteps(layers: nn.Sequential, t: torch.Tensor, model_channels: int) -> torch.Tensor:
    """``layers`` (a ``time_embed``) of the float32 sinusoid, taken to the layers' dtype so a
    network cast to half precision runs without autocast too."""
    return layers(timestep_embedding(t, model_channels).to(layers[0].weight.dtype))


class GroupNorm32(nn.GroupNorm):
    """The UNet's GroupNorm (32 groups, eps 1e-5), computed in float32 whatever the input
    and the weights' precision (the authors keep it float32 when they cast to fp16)."""

    def __init__(self, channels: int):
        super().__init__(GROUPS, channels, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(),
                            self.eps).type(x.dtype)


class ResBlock(nn.Module):
    """GN-SiLU-conv, plus the timestep embedding per channel, GN-SiLU-conv; the skip is the
    identity or a 1x1 conv when the width changes."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head softmax(q k^T / sqrt(d)) v over (B, N, heads*d) tokens, through SDP."""
    b, n, inner = q.shape
    split = lambda x: x.view(b, -1, heads, inner // heads).transpose(1, 2)  # noqa: E731
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(b, n, inner)


class CrossAttention(nn.Module):
    """Attention of the tokens to ``context`` (to themselves when it is None); no biases on
    q, k, v."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        return self.to_out(attention(self.to_q(x), self.to_k(context), self.to_v(context),
                                     self.heads))


class GEGLU(nn.Module):
    """Linear to 2 x hidden, chunked into [value, gate]: value * GELU(gate) (exact erf)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0),
                                 nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm self-attention, cross-attention to the text, GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GN (eps 1e-6), tokens, linear proj_in, transformer blocks, linear proj_out, back to
    the image, plus the input (SD 2.x: ``use_linear_in_transformer``)."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(GROUPS, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth))
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        out = self.proj_out(tokens).transpose(1, 2).reshape(b, c, h, w)
        return out + x


class TimestepEmbedSequential(nn.Sequential):
    """A block of layers; each gets what it needs of (x, emb, context)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class Config:
    """The authors' UNet kwargs, the training-only ones (``use_checkpoint``, ``image_size``,
    ``legacy``, ...) accepted and ignored; what the layout depends on is checked."""

    def __init__(self, *, in_channels: int, model_channels: int, attention_resolutions,
                 num_res_blocks: int, channel_mult, num_head_channels: int = -1,
                 num_heads: int = -1, transformer_depth: int = 1, context_dim: int | None = None,
                 use_spatial_transformer: bool = True, use_linear_in_transformer: bool = True,
                 out_channels: int = 4, legacy: bool = False, **_training_only):
        if not (use_spatial_transformer and use_linear_in_transformer and context_dim) or legacy:
            raise ValueError("only the SD 2.x layout (linear spatial transformers with a "
                             "text context, legacy false) is built here")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.attention_resolutions = set(attention_resolutions)
        self.num_res_blocks = num_res_blocks
        self.channel_mult = list(channel_mult)
        self.num_head_channels = num_head_channels
        self.num_heads = num_heads
        self.depth = transformer_depth
        self.context_dim = context_dim

    def transformer(self, channels: int) -> SpatialTransformer:
        if self.num_head_channels > 0:
            heads, dim_head = channels // self.num_head_channels, self.num_head_channels
        else:
            heads, dim_head = self.num_heads, channels // self.num_heads
        return SpatialTransformer(channels, heads, dim_head, self.depth, self.context_dim)

    def resblock(self, channels: int, out_channels: int | None = None) -> ResBlock:
        return ResBlock(channels, 4 * self.model_channels, out_channels)


def build_encoder(cfg: Config, in_channels: int) -> tuple[nn.ModuleList, nn.Module, list[int]]:
    """The input blocks, the middle block and the width after each input block (what the
    decoder's skips and the ControlNet's zero convs have)."""
    blocks = [TimestepEmbedSequential(nn.Conv2d(in_channels, cfg.model_channels, 3, padding=1))]
    widths = [cfg.model_channels]
    ch, ds = cfg.model_channels, 1
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            layers = [cfg.resblock(ch, mult * cfg.model_channels)]
            ch = mult * cfg.model_channels
            if ds in cfg.attention_resolutions:
                layers.append(cfg.transformer(ch))
            blocks.append(TimestepEmbedSequential(*layers))
            widths.append(ch)
        if level != len(cfg.channel_mult) - 1:
            blocks.append(TimestepEmbedSequential(Downsample(ch)))
            widths.append(ch)
            ds *= 2
    middle = TimestepEmbedSequential(cfg.resblock(ch), cfg.transformer(ch), cfg.resblock(ch))
    return nn.ModuleList(blocks), middle, widths


class ControlledUnetModel(nn.Module):
    """The SD UNet: ``forward(x, timesteps, context, control=None)`` -> (B, out_channels, h, w)
    (v or eps by the checkpoint's parameterization); h and w multiples of 2^(levels-1)."""

    def __init__(self, **kwargs):
        super().__init__()
        cfg = Config(**kwargs)
        self.model_channels = cfg.model_channels
        self.time_embed = time_embed(cfg.model_channels)
        self.input_blocks, self.middle_block, widths = build_encoder(cfg, cfg.in_channels)
        self.output_blocks = nn.ModuleList()
        ch = widths[-1]
        ds = 2 ** (len(cfg.channel_mult) - 1)
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [cfg.resblock(ch + widths.pop(), cfg.model_channels * mult)]
                ch = cfg.model_channels * mult
                if ds in cfg.attention_resolutions:
                    layers.append(cfg.transformer(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(),
                                 nn.Conv2d(cfg.model_channels, cfg.out_channels, 3, padding=1))

    def embedding(self, timesteps: torch.Tensor) -> torch.Tensor:
        return embed_timesteps(self.time_embed, timesteps, self.model_channels)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                control: list[torch.Tensor] | None = None) -> torch.Tensor:
        emb = self.embedding(timesteps)
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        control = list(control) if control is not None else None
        if control:
            h = h + control.pop()
        for block in self.output_blocks:
            skip = skips.pop()
            if control:
                skip = skip + control.pop()
            h = block(torch.cat([h, skip], dim=1), emb, context)
        return self.out(h)
