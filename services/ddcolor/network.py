"""DDColor, written here with the parameter names of the authors' checkpoints
(``official_keys.json`` for DDColor-L, ``official_keys_tiny.json`` for DDColor-T), so that
their released files load strictly.

Module attribute names (``encoder.arch.stages.2.7.pwconv1``,
``decoder.color_decoder.transformer_cross_attention_layers.3.multihead_attn`` ...) are the
checkpoint's keys, registered in the authors' order so that ``state_dict()`` lists them as
their files do; class names are ours.

The computation is the authors' eval-mode forward (upstream ``ddcolor/model.py:DDColor``):
ImageNet normalisation, a ConvNeXt encoder whose four extra LayerNorms give the skip
features, a U-Net pixel decoder (spectral-norm convs, BatchNorm, pixel shuffle and a
2x2 "blur"), a Mask2Former-style colour decoder whose queries attend to three scales, and
a spectral-norm 1x1 refine over [query maps, normalised input]. Differences in form only:
- the skip features are returned by the encoder instead of captured by forward hooks, and
  the encoder's final pooled LayerNorm (computed and discarded upstream) is not evaluated;
- channels-first LayerNorms use ``F.layer_norm`` (the same mean and biased variance), which
  autocast keeps in float32 on a GPU where upstream's hand-written form would run in half;
- the sine position encoding is cached per feature size.

Knobs beyond the authors' constructor, used by the parity fixtures' tiny network:
``encoder_depths``/``encoder_dims`` replace the ConvNeXt that ``encoder_name`` picks, and
``MultiScaleColorDecoder`` overrides the colour decoder's sizes the authors hard-code.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# What upstream's scripts/infer.py builds for the released checkpoints (model_size 'large');
# 'ddcolor_paper_tiny' differs only in encoder_name 'convnext-t'.
OFFICIAL = {"encoder_name": "convnext-l", "decoder_name": "MultiScaleColorDecoder",
            "input_size": [512, 512], "num_output_channels": 2, "last_norm": "Spectral",
            "do_normalize": False, "num_queries": 100, "num_scales": 3, "dec_layers": 9,
            "num_input_channels": 3, "nf": 512}

ENCODERS = {"convnext-t": ([3, 3, 9, 3], [96, 192, 384, 768]),
            "convnext-l": ([3, 3, 27, 3], [192, 384, 768, 1536])}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --- building blocks ---------------------------------------------------------------------

class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over C of (B, C, H, W), eps 1e-6 (ConvNeXt's 'channels_first' form)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias,
                         self.eps)
        return y.permute(0, 3, 1, 2)


class SpectralConv2d(nn.Module):
    """A conv under ``torch.nn.utils.spectral_norm`` in eval mode, with its state-dict names
    (``bias``, ``weight_orig``, ``weight_u``, ``weight_v``): the weight is weight_orig / sigma
    with sigma = u . (W v) from the STORED vectors. No power iteration is run: the released
    vectors are what the authors' eval forward uses, converged or not."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool):
        super().__init__()
        self.padding = (kernel - 1) // 2
        # Registered in the order spectral_norm leaves them: bias, then weight_orig.
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_orig = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel))
        self.register_buffer("weight_u", torch.empty(out_channels))
        self.register_buffer("weight_v", torch.empty(in_channels * kernel * kernel))
        nn.init.kaiming_normal_(self.weight_orig)
        nn.init.normal_(self.weight_u)
        nn.init.normal_(self.weight_v)

    def normalized_weight(self) -> torch.Tensor:
        # sigma in float32 even under autocast: half would round it and mix dtypes in dot.
        with torch.autocast(self.weight_orig.device.type, enabled=False):
            matrix = self.weight_orig.flatten(1)
            sigma = torch.dot(self.weight_u, torch.mv(matrix, self.weight_v))
            return self.weight_orig / sigma

    def forward(self, x):
        return F.conv2d(x, self.normalized_weight(), self.bias, padding=self.padding)


def blur(x: torch.Tensor) -> torch.Tensor:
    """Replication-pad left/top by one, then a 2x2 mean with stride 1 (size unchanged):
    upstream's anti-checkerboard step after each pixel shuffle."""
    return F.avg_pool2d(F.pad(x, (1, 0, 1, 0), mode="replicate"), 2, stride=1)


# --- encoder: ConvNeXt -------------------------------------------------------------------

class Block(nn.Module):
    """ConvNeXt block: depthwise 7x7, LayerNorm, Linear 4x, exact GELU, Linear, layer scale,
    residual (drop path is the identity at inference)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """The encoder trunk (``encoder.arch``). Returns the four normalised stage outputs
    norm_i(x_i); the trunk itself continues from the un-normalised x_i, as upstream's."""

    def __init__(self, depths, dims, in_chans: int = 3):
        super().__init__()
        stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, stride=4),
                             ChannelsFirstLayerNorm(dims[0]))
        downs = [nn.Sequential(ChannelsFirstLayerNorm(dims[i]),
                               nn.Conv2d(dims[i], dims[i + 1], 2, stride=2)) for i in range(3)]
        self.downsample_layers = nn.ModuleList([stem, *downs])
        self.stages = nn.ModuleList(nn.Sequential(*(Block(dim) for _ in range(depth)))
                                    for depth, dim in zip(depths, dims))
        for i, dim in enumerate(dims):
            self.add_module(f"norm{i}", ChannelsFirstLayerNorm(dim))
        # Upstream's pooled head norm: in the checkpoints, no influence on the output.
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)

    def forward(self, x) -> list[torch.Tensor]:
        features = []
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
            features.append(getattr(self, f"norm{i}")(x))
        return features


class ImageEncoder(nn.Module):
    def __init__(self, depths, dims, in_chans: int = 3):
        super().__init__()
        self.arch = ConvNeXt(depths, dims, in_chans)

    def forward(self, x) -> list[torch.Tensor]:
        return self.arch(x)


# --- pixel decoder -----------------------------------------------------------------------

class PixelShuffleUp(nn.Module):
    """Upstream's CustomPixelShuffle_ICNR: spectral 1x1 conv to out*scale^2 channels (then
    BatchNorm when ``bn``, and no conv bias), ReLU, pixel shuffle, blur."""

    def __init__(self, in_channels: int, out_channels: int, scale: int, bn: bool):
        super().__init__()
        wide = out_channels * scale ** 2
        layers = [SpectralConv2d(in_channels, wide, 1, bias=not bn)]
        if bn:
            layers.append(nn.BatchNorm2d(wide))
        self.conv = nn.Sequential(*layers)
        self.scale = scale

    def forward(self, x):
        return blur(F.pixel_shuffle(F.relu(self.conv(x)), self.scale))


class UnetBlockWide(nn.Module):
    """Up-sample ``up_in`` x2, join the BatchNormed skip feature, ReLU, spectral 3x3 conv,
    ReLU, BatchNorm (keys conv.0 and conv.2)."""

    def __init__(self, up_in_c: int, x_in_c: int, n_out: int):
        super().__init__()
        self.shuf = PixelShuffleUp(up_in_c, n_out, 2, bn=True)
        self.bn = nn.BatchNorm2d(x_in_c)
        self.conv = nn.Sequential(SpectralConv2d(n_out + x_in_c, n_out, 3, bias=False),
                                  nn.ReLU(), nn.BatchNorm2d(n_out))

    def forward(self, up_in, skip):
        joined = F.relu(torch.cat([self.shuf(up_in), self.bn(skip)], dim=1))
        return self.conv(joined)


# --- colour decoder ----------------------------------------------------------------------

class SinePosition:
    """DETR's normalised sine encoding (num_pos_feats = C/2, temperature 10000, scale 2 pi):
    [y part, x part], each sin/cos interleaved. Cached per size, device and dtype."""

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0):
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.cache: dict = {}

    def __call__(self, height: int, width: int, device) -> torch.Tensor:
        """(H*W, 1, 2 * num_pos_feats) float32, sequence-first like the memory tokens."""
        key = (height, width, str(device))
        if key not in self.cache:
            self.cache[key] = self.compute(height, width, device)
        return self.cache[key]

    def compute(self, height: int, width: int, device) -> torch.Tensor:
        scale, eps = 2 * math.pi, 1e-6
        ys = torch.arange(1, height + 1, dtype=torch.float32, device=device)
        xs = torch.arange(1, width + 1, dtype=torch.float32, device=device)
        ys = ys / (ys[-1:] + eps) * scale
        xs = xs / (xs[-1:] + eps) * scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_y = self.interleave(ys[:, None] / dim_t)[:, None, :].expand(height, width, -1)
        pos_x = self.interleave(xs[:, None] / dim_t)[None, :, :].expand(height, width, -1)
        return torch.cat((pos_y, pos_x), dim=-1).reshape(height * width, 1, -1)

    @staticmethod
    def interleave(angles: torch.Tensor) -> torch.Tensor:
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)


class CrossAttentionLayer(nn.Module):
    """Post-norm: LN(queries + attention(queries + query_pos, memory + pos, memory))."""

    def __init__(self, d_model: int, nhead: int):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt, memory, pos, query_pos):
        out = self.multihead_attn(tgt + query_pos, memory + pos, memory, need_weights=False)[0]
        return self.norm(tgt + out)


class SelfAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt, query_pos):
        q = tgt + query_pos
        return self.norm(tgt + self.self_attn(q, q, tgt, need_weights=False)[0])


class FFNLayer(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt):
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


class MLP(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        widths = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(widths, outs))

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


class MultiScaleColorDecoder(nn.Module):
    """Colour queries refined against the pixel decoder's three scales (coarsest first,
    cycling), then embedded and dotted with the full-resolution features: (B, Q, H, W)."""

    def __init__(self, in_channels, hidden_dim=256, num_queries=100, nheads=8,
                 dim_feedforward=2048, dec_layers=9, pre_norm=False, color_embed_dim=256,
                 enforce_input_project=True, num_scales=3):
        super().__init__()
        if pre_norm:
            raise ValueError("pre_norm=True is not a released DDColor configuration")
        if len(in_channels) != num_scales:
            raise ValueError(f"{len(in_channels)} input widths for {num_scales} scales")
        self.num_layers = dec_layers
        self.num_feature_levels = num_scales
        self.pe_layer = SinePosition(hidden_dim // 2)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_scales, hidden_dim)
        self.input_proj = nn.ModuleList(
            nn.Conv2d(c, hidden_dim, 1) if c != hidden_dim or enforce_input_project
            else nn.Sequential() for c in in_channels)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers))
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward) for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.color_embed = MLP(hidden_dim, hidden_dim, color_embed_dim, 3)

    def forward(self, features, img_features):
        return torch.einsum("bqc,bchw->bqhw", self.embeddings(features), img_features)

    def embeddings(self, features) -> torch.Tensor:
        """The colour embeddings (B, Q, color_embed_dim) after every decoder layer."""
        memory, positions = self.memory(features)
        batch = memory[0].shape[1]
        query_pos = self.query_embed.weight.unsqueeze(1).expand(-1, batch, -1)
        output = self.query_feat.weight.unsqueeze(1).expand(-1, batch, -1)
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            output = self.transformer_cross_attention_layers[i](
                output, memory[level], positions[level], query_pos)
            output = self.transformer_self_attention_layers[i](output, query_pos)
            output = self.transformer_ffn_layers[i](output)
        return self.color_embed(self.decoder_norm(output).transpose(0, 1))

    def memory(self, features):
        """Per level: projected tokens + level embedding, and their positions, both (HW, B, C)."""
        if len(features) != self.num_feature_levels:
            raise ValueError(f"{len(features)} feature levels, expected {self.num_feature_levels}")
        memory, positions = [], []
        for i, feature in enumerate(features):
            height, width = feature.shape[-2:]
            tokens = self.input_proj[i](feature).flatten(2) + self.level_embed.weight[i][None, :, None]
            memory.append(tokens.permute(2, 0, 1))
            positions.append(self.pe_layer(height, width, feature.device))
        return memory, positions


class DuelDecoder(nn.Module):
    """The pixel decoder (``layers``, ``last_shuf``) and the colour decoder (upstream's
    spelling of 'dual' is kept: it is the checkpoint's key)."""

    def __init__(self, encoder_dims, nf=512, num_queries=100, num_scales=3, dec_layers=9,
                 color_decoder_kwargs=None):
        super().__init__()
        skips = list(encoder_dims[-2::-1])
        widths = [nf] * (len(skips) - 1) + [nf // 2]
        ins = [encoder_dims[-1]] + widths[:-1]
        self.layers = nn.Sequential(*(UnetBlockWide(i, s, o)
                                      for i, s, o in zip(ins, skips, widths)))
        self.last_shuf = PixelShuffleUp(nf // 2, nf // 2, 4, bn=False)
        kwargs = {"in_channels": [nf, nf, nf // 2], "num_queries": num_queries,
                  "num_scales": num_scales, "dec_layers": dec_layers,
                  **(color_decoder_kwargs or {})}
        self.color_decoder = MultiScaleColorDecoder(**kwargs)

    def pixels(self, features) -> list[torch.Tensor]:
        """out0 (stride 16), out1 (8), out2 (4) and out3 (full resolution)."""
        out0 = self.layers[0](features[3], features[2])
        out1 = self.layers[1](out0, features[1])
        out2 = self.layers[2](out1, features[0])
        return [out0, out1, out2, self.last_shuf(out2)]

    def forward(self, features):
        out0, out1, out2, out3 = self.pixels(features)
        return self.color_decoder([out0, out1, out2], out3)


# --- the model ---------------------------------------------------------------------------

class DDColor(nn.Module):
    """(B, 3, H, W) RGB in [0, 1] -> (B, 2, H, W) predicted a, b in OpenCV float-Lab units.
    H and W must be multiples of 32."""

    def __init__(self, encoder_name="convnext-l", decoder_name="MultiScaleColorDecoder",
                 num_input_channels=3, input_size=(512, 512), nf=512, num_output_channels=2,
                 last_norm="Spectral", do_normalize=False, num_queries=100, num_scales=3,
                 dec_layers=9, encoder_depths=None, encoder_dims=None,
                 MultiScaleColorDecoder=None):
        super().__init__()
        check_supported(encoder_name, decoder_name, last_norm, num_input_channels,
                        num_output_channels, do_normalize)
        depths, dims = ENCODERS[encoder_name]
        depths, dims = list(encoder_depths or depths), list(encoder_dims or dims)
        # Upstream builds with a dummy forward at input_size; the pipeline squashes every
        # image to it. It shapes no weight: kept as the stage's default working size.
        self.input_size = tuple(input_size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.encoder = ImageEncoder(depths, dims, num_input_channels)
        self.decoder = DuelDecoder(dims, nf, num_queries, num_scales, dec_layers,
                                   MultiScaleColorDecoder)
        self.refine_net = nn.Sequential(nn.Sequential(
            SpectralConv2d(num_queries + 3, num_output_channels, 1, bias=True)))

    def normalize(self, x):
        return (x - self.mean) / self.std

    def forward(self, x):
        check_size(*x.shape[-2:])
        x = self.normalize(x)
        return self.refine(self.decoder(self.encoder(x)), x)

    def refine(self, colour_maps, normalized):
        return self.refine_net(torch.cat([colour_maps, normalized], dim=1))


def check_supported(encoder_name, decoder_name, last_norm, num_input_channels,
                    num_output_channels, do_normalize) -> None:
    """The released checkpoints' choices; the others change the layout or the output."""
    if encoder_name not in ENCODERS:
        raise ValueError(f"encoder_name '{encoder_name}' (known: {', '.join(ENCODERS)})")
    if decoder_name != "MultiScaleColorDecoder":
        raise ValueError(f"decoder_name '{decoder_name}': only MultiScaleColorDecoder is released")
    if last_norm != "Spectral":
        raise ValueError(f"last_norm '{last_norm}': the released checkpoints use 'Spectral'")
    if num_input_channels != 3 or num_output_channels != 2 or do_normalize:
        raise ValueError("the released checkpoints take 3 channels in, give 2 (ab) out, "
                         "with do_normalize False")


def check_size(height: int, width: int) -> None:
    if height % 32 or width % 32:
        raise ValueError(f"DDColor needs H and W multiples of 32, got {height}x{width}")


def build_ddcolor(device=None, **kwargs) -> DDColor:
    """The network from kwargs in the authors' names (missing ones: the released
    DDColor-L's), plus the fixtures' knobs; ``device='meta'`` builds without memory."""
    unknown = set(kwargs) - set(OFFICIAL) - {"encoder_depths", "encoder_dims",
                                             "MultiScaleColorDecoder"}
    if unknown:
        raise ValueError(f"unknown DDColor arguments: {', '.join(sorted(unknown))}")
    with torch.device(device or "cpu"):
        return DDColor(**{**OFFICIAL, **kwargs})
