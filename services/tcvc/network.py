"""TCVC's four networks, written here with the parameter names of the authors' checkpoints.

* ``ColorVidNet``: stage 1, colours one grey frame with no exemplar.
* ``VCTran``: stage 2's encoder: a frozen ResNet-101 (FrozenBatchNorm, no max-pool, taps
  inside layer1..layer3), a 3-D sine position encoding and hybrid CNN/transformer layers
  that may cross-attend to a memory carried over from earlier clips.
* ``TransformerDecoderParallel`` (upstream ``Transformer_decoder_parallel``): the semantic
  correspondence warp of the reference colours onto the grey frames, then a colour net fused
  with three transformer layers.
* ``TransformerInternLayer``: updates the memory from clip to clip.

Upstream hard-codes most widths; ``build_networks`` takes the authors' constructor arguments
plus the width knobs the parity fixtures name (``widths``, ``backbone_base_width`` ...),
whose defaults are the released checkpoints' values.
"""
from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from torch import nn

EPS = sys.float_info.epsilon  # upstream adds it to every L2 norm of the warp's features
COLOUR_WIDTHS = (32, 64, 128, 256, 512)


# --------------------------------------------------------------------------- attention

class MultiheadAttention_VC(nn.Module):
    """Upstream's attention: sequence-first, a learned key/value token (``bias_k``/``bias_v``)
    and an all-zero key/value token appended to every key sequence, dropout off at inference."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.bias_k = nn.Parameter(torch.empty(1, 1, embed_dim))
        self.bias_v = nn.Parameter(torch.empty(1, 1, embed_dim))
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.xavier_normal_(self.bias_k)
        nn.init.xavier_normal_(self.bias_v)

    def forward(self, query, key, value):
        e = self.embed_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        q = F.linear(query, w[:e], b[:e])
        k = F.linear(key, w[e:2 * e], b[e:2 * e])
        v = F.linear(value, w[2 * e:], b[2 * e:])
        batch = query.shape[1]
        k = torch.cat([k, self.bias_k.expand(1, batch, e)])
        v = torch.cat([v, self.bias_v.expand(1, batch, e)])
        q, k, v = (self._heads(t) for t in (q, k, v))
        k = F.pad(k, (0, 0, 0, 1))  # the zero-attention token
        v = F.pad(v, (0, 0, 0, 1))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.permute(2, 0, 1, 3).reshape(query.shape[0], batch, e)
        return self.out_proj(out)

    def _heads(self, t):
        length, batch, _ = t.shape
        return t.reshape(length, batch, self.num_heads, -1).permute(1, 2, 0, 3)


class TransformerInternLayer(nn.Module):
    """Post-norm cross-attention of ``src`` (queries) to ``value`` (keys = values), then FFN."""

    def __init__(self, d_model=384, d_model_out=384, nhead=4, dim_feedforward=2048, dropout=0.1):
        super().__init__()
        self.self_attn = MultiheadAttention_VC(d_model, nhead, dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model_out)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model_out)

    def forward(self, src, value):
        src = self.norm1(src + self.self_attn(src, value, value))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class TransformerDecoderLayer(nn.Module):
    """Pre-norm self-attention + FFN (no position encoding)."""

    def __init__(self, d_model, d_model_out, nhead, dim_feedforward=2048, dropout=0.1):
        super().__init__()
        self.self_attn = MultiheadAttention_VC(d_model, nhead, dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model_out)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model_out)

    def forward(self, src):
        x = self.norm1(src)
        src = src + self.self_attn(x, x, x)
        return src + self.linear2(F.relu(self.linear1(self.norm2(src))))


# --------------------------------------------------------------------------- layout helpers

def to_tokens(maps, batch: int):
    """(b*n, C, h, w) maps -> (n*h*w, b, C) tokens in (t, y, x) order."""
    bn, c, h, w = maps.shape
    return maps.reshape(batch, bn // batch, c, h, w).permute(1, 3, 4, 0, 2).reshape(-1, batch, c)


def to_maps(tokens, batch: int, frames: int, h: int, w: int):
    """(n*h*w, b, C) tokens -> (b*n, C, h, w) maps."""
    c = tokens.shape[-1]
    return tokens.reshape(frames, h, w, batch, c).permute(3, 0, 4, 1, 2).reshape(-1, c, h, w)


def sine_position(frames: int, h: int, w: int, num_pos_feats: int, device=None,
                  temperature: float = 10000.0):
    """Upstream's normalised 3-D sine encoding (t, y, x), shape (frames, 3F, h, w)."""
    def axis(length):
        embed = torch.arange(1, length + 1, dtype=torch.float32, device=device)
        embed = embed / (embed[-1:] + 1e-6) * (2 * math.pi)
        dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=device)
        dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
        pos = embed[:, None] / dim_t
        return torch.stack((pos[:, 0::2].sin(), pos[:, 1::2].cos()), dim=2).flatten(1)

    shape = (frames, h, w, num_pos_feats)
    pos = torch.cat((axis(frames)[:, None, None].expand(shape),
                     axis(h)[None, :, None].expand(shape),
                     axis(w)[None, None, :].expand(shape)), dim=3)
    return pos.permute(0, 3, 1, 2)


def position_tokens(frames: int, h: int, w: int, hidden: int, dtype, device):
    """The sine encoding as (frames*h*w, 1, hidden) tokens, as the transformers take it."""
    pos = sine_position(frames, h, w, hidden // 3, device).to(dtype)
    return to_tokens(pos, 1)


# --------------------------------------------------------------------------- colour nets

def _conv(cin, cout, dilation=1):
    return nn.Conv2d(cin, cout, 3, 1, dilation, dilation)


def _up(cin, cout):
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), _conv(cin, cout))


def _first(cin, w0, w1):
    return nn.Sequential(_conv(cin, w0), nn.ReLU(), _conv(w0, w1))


class _ColourTrunk(nn.Module):
    """The layers ColorVidNet and the stage-2 colour net share (upstream names), and their
    down path (conv1..conv4) and up path (conv8..conv10)."""

    def _build_trunk(self, widths):
        w0, w1, w2, w3, w4 = widths
        self.conv1_2 = _conv(w1, w1)
        self.conv1_2norm_ss = nn.Conv2d(w1, w1, 1, 2, bias=False, groups=w1)
        self.conv2_1, self.conv2_2 = _conv(w1, w2), _conv(w2, w2)
        self.conv2_2norm_ss = nn.Conv2d(w2, w2, 1, 2, bias=False, groups=w2)
        self.conv3_1, self.conv3_2, self.conv3_3 = _conv(w2, w3), _conv(w3, w3), _conv(w3, w3)
        self.conv3_3norm_ss = nn.Conv2d(w3, w3, 1, 2, bias=False, groups=w3)
        self.conv4_1, self.conv4_2, self.conv4_3 = _conv(w3, w4), _conv(w4, w4), _conv(w4, w4)
        for i in (5, 6):
            for j in (1, 2, 3):
                setattr(self, f"conv{i}_{j}", _conv(w4, w4, dilation=2))
        for j in (1, 2, 3):
            setattr(self, f"conv7_{j}", _conv(w4, w4))
        self.conv8_1 = _up(w4, w3)
        self.conv3_3_short = _conv(w3, w3)
        self.conv8_2, self.conv8_3 = _conv(w3, w3), _conv(w3, w3)
        self.conv9_1 = _up(w3, w2)
        self.conv2_2_short = _conv(w2, w2)
        self.conv9_2 = _conv(w2, w2)
        self.conv10_1 = _up(w2, w2)
        self.conv1_2_short = _conv(w1, w2)
        self.conv10_2 = _conv(w2, w2)
        self.conv10_ab = nn.Conv2d(w2, 2, 1, 1)

    def _relu_chain(self, x, *names):
        for name in names:
            x = F.relu(getattr(self, name)(x))
        return x

    def _down(self, first):
        """conv1..conv4 from the first block's output: the skips and the 1/8 features."""
        c1 = F.instance_norm(self._relu_chain(F.relu(first), "conv1_2"))
        c2 = F.instance_norm(self._relu_chain(self.conv1_2norm_ss(c1), "conv2_1", "conv2_2"))
        c3 = F.instance_norm(self._relu_chain(self.conv2_2norm_ss(c2), "conv3_1", "conv3_2", "conv3_3"))
        c4 = F.instance_norm(self._relu_chain(self.conv3_3norm_ss(c3), "conv4_1", "conv4_2", "conv4_3"))
        return (c1, c2, c3), c4

    def _up_path(self, skips, x):
        c1, c2, c3 = skips
        x = F.relu(self.conv8_1(x) + self.conv3_3_short(c3))
        x = F.instance_norm(self._relu_chain(x, "conv8_2", "conv8_3"))
        x = F.relu(self.conv9_1(x) + self.conv2_2_short(c2))
        x = F.instance_norm(self._relu_chain(x, "conv9_2"))
        x = F.relu(self.conv10_1(x) + self.conv1_2_short(c1))
        x = F.leaky_relu(self.conv10_2(x), 0.2)
        return torch.tanh(self.conv10_ab(x)) * 128


class ColorVidNet(_ColourTrunk):
    """Stage 1: (b, ic, H, W) -> ab = 128*tanh(...) (b, 2, H, W); H, W multiples of 8."""

    def __init__(self, ic=8, widths=COLOUR_WIDTHS):
        super().__init__()
        self.conv1_1 = _first(ic, widths[0], widths[1])
        self._build_trunk(widths)

    def forward(self, x):
        skips, x = self._down(self.conv1_1(x))
        for i in (5, 6, 7):
            x = F.instance_norm(self._relu_chain(x, f"conv{i}_1", f"conv{i}_2", f"conv{i}_3"))
        return self._up_path(skips, x)


class TransformerDecoder_colorvid(_ColourTrunk):
    """Stage 2's colour net: L/50 and the warped colours in, three transformer layers fused
    at 1/8 resolution with the encoder's tokens."""

    def __init__(self, hidden_dim=384, nhead=8, dim_feedforward=2048, widths=COLOUR_WIDTHS,
                 in_channels=7, dropout=0.1):
        super().__init__()
        w4 = widths[4]
        for i in range(3):
            setattr(self, f"vc_layer{i}", TransformerDecoderLayer(
                hidden_dim, hidden_dim, nhead, dim_feedforward, dropout))
        self.conv_start = _first(in_channels, widths[0], widths[1])
        self._build_trunk(widths)
        for i in (1, 2, 3):
            setattr(self, f"fuse_trans2cnn{i}", nn.Conv2d(w4 + hidden_dim, w4, 1))
            setattr(self, f"fuse_cnn2trans{i}", nn.Linear(w4 + hidden_dim, hidden_dim))

    def forward(self, src, src_trans, tensor_1):
        b, n, _, h, w = tensor_1.shape
        src = torch.cat((tensor_1.flatten(0, 1) / 50.0, src), dim=1)
        skips, x = self._down(self.conv_start(src))
        for i, block in enumerate((5, 6, 7), start=1):
            tokens = torch.cat([to_tokens(x, b), src_trans], dim=2)
            src_trans = getattr(self, f"vc_layer{i - 1}")(getattr(self, f"fuse_cnn2trans{i}")(tokens))
            trans2cnn = to_maps(src_trans, b, n, h // 8, w // 8)
            conv = F.instance_norm(self._relu_chain(x, f"conv{block}_1", f"conv{block}_2", f"conv{block}_3"))
            conv = getattr(self, f"fuse_trans2cnn{i}")(torch.cat([conv, trans2cnn], dim=1))
            x = F.instance_norm(conv + x)
        return self._up_path(skips, x).reshape(b, n, 2, h, w)


# --------------------------------------------------------------------------- backbone

class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine terms (all buffers, as upstream)."""

    def __init__(self, n):
        super().__init__()
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x):
        scale = self.weight * (self.running_var + 1e-5).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3x3 conv)."""

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = FrozenBatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = FrozenBatchNorm2d(out)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False),
                                            FrozenBatchNorm2d(out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNetBody(nn.Module):
    """ResNet-101 layout with base width ``b``. layer4 and fc are kept only so that the
    checkpoint loads strictly: TCVC never runs them."""

    def __init__(self, base_width=64, blocks=(3, 4, 23, 3), num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, base_width, 7, 2, 3, bias=False)
        self.bn1 = FrozenBatchNorm2d(base_width)
        inplanes = base_width
        for i, count in enumerate(blocks):
            planes = base_width * 2 ** i
            layer = [Bottleneck(inplanes, planes, 1 if i == 0 else 2)]
            layer += [Bottleneck(planes * 4, planes) for _ in range(count - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
            inplanes = planes * 4
        self.fc = nn.Linear(inplanes, num_classes)

    def taps(self, x):
        """Upstream's taps (no max-pool): layer1[1], layer2[2], layer3[2], layer3[18].
        Stops at layer3[18], since nothing downstream reads the blocks after it."""
        x = F.relu(self.bn1(self.conv1(x)))
        wanted = {(1, 1), (2, 2), (3, 2), (3, 18)}
        out = []
        for i in (1, 2, 3):
            for j, block in enumerate(getattr(self, f"layer{i}")):
                x = block(x)
                if (i, j) in wanted:
                    out.append(x)
                    if len(out) == len(wanted):
                        return out
        raise ValueError("the backbone needs at least 2/3/19 blocks in layer1/2/3")


class Backbone(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.body = ResNetBody(**kwargs)


class PositionEmbeddingSine(nn.Module):
    """Parameter-free; kept as module ``backbone.1`` so that the layout matches upstream."""

    def __init__(self, num_pos_feats):
        super().__init__()
        self.num_pos_feats = num_pos_feats


# --------------------------------------------------------------------------- encoder

class EncoderLayer(nn.Module):
    """Upstream's encoder ``vc_layer``: a CNN branch and a token branch that exchange
    features (fuse -> norm1 -> attention with position on q, k -> norm2 -> FFN)."""

    def __init__(self, d_model_cnn, d_model_trans, nhead, dim_feedforward=2048, dropout=0.1):
        super().__init__()
        self.self_attn = MultiheadAttention_VC(d_model_trans, nhead, dropout)
        self.linear1 = nn.Linear(d_model_trans, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model_trans)
        c = d_model_cnn
        self.conv = nn.Sequential(
            nn.ReplicationPad2d(2), nn.Conv2d(c, c, 3, dilation=2), nn.ReLU(), nn.InstanceNorm2d(c),
            nn.ReplicationPad2d(1), nn.Conv2d(c, c, 3), nn.ReLU(), nn.InstanceNorm2d(c),
            nn.ReplicationPad2d(2), nn.Conv2d(c, c, 3, dilation=2), nn.ReLU(), nn.InstanceNorm2d(c))
        self.fuse_cnn2trans = nn.Sequential(nn.Linear(c + d_model_trans, d_model_trans))
        self.fuse_trans2cnn = nn.Sequential(nn.Conv2d(c + d_model_trans, c, 1))
        self.norm1 = nn.LayerNorm(d_model_trans)
        self.norm2 = nn.LayerNorm(d_model_trans)

    def forward(self, src_cnn, src_trans, frames, pos):
        b = src_trans.shape[1]
        h, w = src_cnn.shape[-2:]
        src_conv = self.conv(src_cnn)
        src_trans = self.fuse_cnn2trans(torch.cat([src_trans, to_tokens(src_cnn, b)], dim=2))
        x = self.norm1(src_trans)
        qk = x + pos
        src_trans = src_trans + self.self_attn(qk, qk, x)
        src_trans = src_trans + self.linear2(F.relu(self.linear1(self.norm2(src_trans))))
        trans2cnn = to_maps(src_trans, b, frames, h, w)
        src_cnn = F.instance_norm(src_cnn + self.fuse_trans2cnn(torch.cat([src_conv, trans2cnn], dim=1)))
        return src_cnn, src_trans


class TransformerEncoder(nn.Module):
    def __init__(self, layers, tap_channels, hidden_dim, cnn_width, inter_heads, inter_ffn, dropout):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.project2cnn = nn.Conv2d(tap_channels, cnn_width, 1)
        self.project2trans = nn.Linear(tap_channels, hidden_dim)
        self.interlayer_request = TransformerInternLayer(
            hidden_dim, hidden_dim, inter_heads, inter_ffn, dropout)

    def forward(self, src, frames, pos, features_inter=None):
        src_trans = self.project2trans(to_tokens(src, src.shape[0] // frames))
        if features_inter is not None:
            src_trans = self.interlayer_request(src_trans, features_inter)
        src = self.project2cnn(src)
        for layer in self.layers:
            src, src_trans = layer(src, src_trans, frames, pos)
        return src, src_trans


class TransformerEncoderParallel(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder


class VCTran(nn.Module):
    """Stage 2's encoder on one clip of ``n`` frames (reference first), batch of one clip.

    ``forward(rgb, features_inter)`` returns, as upstream: hs (n, cnn, H/8, W/8), the tokens
    (n*H/8*W/8, 1, hidden), the layer1[1] and layer2[2] taps, and the position tokens of
    the layer2[2] and layer3[18] taps. The clip length ``n`` comes from the input, so a
    tail clip needs no change of state (upstream sets ``num_frames`` before the call)."""

    def __init__(self, hidden_dim=384, nheads=8, enc_layers=4, num_frames=4, dropout=0.1,
                 backbone_base_width=64, backbone_blocks=(3, 4, 23, 3), backbone_num_classes=1000,
                 enc_cnn_width=512, enc_ffn=2048, inter_heads=4, inter_ffn=2048):
        super().__init__()
        self.hidden_dim, self.num_frames = hidden_dim, num_frames
        taps = 2 * 16 * backbone_base_width
        layers = [EncoderLayer(enc_cnn_width, hidden_dim, nheads, enc_ffn, dropout)
                  for _ in range(enc_layers)]
        self.transformer = TransformerEncoderParallel(TransformerEncoder(
            layers, taps, hidden_dim, enc_cnn_width, inter_heads, inter_ffn, dropout))
        self.backbone = nn.Sequential(
            Backbone(base_width=backbone_base_width, blocks=tuple(backbone_blocks),
                     num_classes=backbone_num_classes),
            PositionEmbeddingSine(hidden_dim // 3))

    def taps(self, rgb):
        return self.backbone[0].body.taps(rgb)

    def encode(self, taps, features_inter=None):
        frames = taps[0].shape[0]
        tap1, tap2, tap3, tap4 = taps
        hs, out_trans = self.transformer.encoder(
            torch.cat((tap4, tap3), dim=1), frames,
            self._pos(frames, tap4), features_inter)
        return hs, out_trans, [tap1, tap2], [self._pos(frames, tap2), self._pos(frames, tap4)]

    def forward(self, samples, features_inter=None):
        return self.encode(self.taps(samples), features_inter)

    def _pos(self, frames, tap):
        h, w = tap.shape[-2:]
        return position_tokens(frames, h, w, self.hidden_dim, tap.dtype, tap.device)


# --------------------------------------------------------------------------- decoder

class ResBlock(nn.Module):
    def __init__(self, d_model, d_model_out):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(d_model, d_model_out, 3, padding=1), nn.ReLU(),
            nn.Conv2d(d_model_out, d_model_out, 3, padding=1), nn.ReLU(),
            nn.InstanceNorm2d(d_model_out))

    def forward(self, x):
        return self.conv(x) + x


class TransformerMHWarpLayer(nn.Module):
    """The semantic-correspondence warp: for each grey token and head, the reference colour
    at the most similar reference token (cosine of centred features; softmax at temperature
    1e-10, i.e. a hard argmax). Head 1 adds the position to queries and subtracts it from
    keys. Runs in float32 whatever the rest runs in: the argmax gaps can be ~1e-4."""

    def __init__(self, d_model=512, head=2, hidden_dim=384, query_chunk=4096):
        super().__init__()
        self.d_model, self.head = d_model, head
        self.head_dim = d_model // head
        self.d_model_out = 3 * head
        self.query_chunk = query_chunk
        self.theta = nn.Linear(self.head_dim, self.head_dim)
        self.phi = nn.Linear(self.head_dim, self.head_dim)
        self.pos_embed = nn.Linear(hidden_dim, self.head_dim)
        # Stored in the checkpoint, never used by the released inference.
        self.refine_net = nn.Sequential(nn.Linear(d_model + head, head), nn.PReLU())

    def forward(self, src, ref_ab, pos, temperature):
        """src (1, d, n, hw) with the reference at n=0; ref_ab (hw, 1, 2) in ab/128;
        pos (n*hw, 1, hidden). Returns the per-token [ab per head, similarity per head] for
        all n frames, the warped ab (n_q, 1, 2*head) and the similarities (n_q, 1, head)."""
        src = src.float()
        n_k = src.shape[-1]
        tokens = src.flatten(2).permute(2, 0, 1)               # (n*hw, 1, d)
        k, q = tokens[:n_k], tokens[n_k:]
        pos = self.pos_embed(pos.float())
        q = q.reshape(q.shape[0], self.head, self.head_dim).clone()
        k = k.reshape(n_k, self.head, self.head_dim).clone()
        q[:, 1] += pos[n_k:, 0]
        k[:, 1] -= pos[:n_k, 0]
        ab = ref_ab.float()[:, 0]                              # (n_k, 2)
        warped, sim = self._nonlocal(q, k, ab, temperature)
        n_q = q.shape[0]
        warped = warped.permute(1, 0, 2).reshape(n_q, 1, 2 * self.head)
        sim = sim.permute(1, 0).reshape(n_q, 1, self.head)
        ref_part = torch.cat([ab.repeat(1, self.head), torch.ones(n_k, self.head, device=ab.device)], 1)
        out = torch.cat([ref_part[:, None], torch.cat([warped, sim], dim=2)], dim=0)
        return out, warped, sim

    def _nonlocal(self, q, k, ab, temperature):
        theta = self.theta(q).transpose(0, 1)                  # (head, n_q, hd)
        theta = theta - theta.mean(dim=1, keepdim=True)
        theta = theta / (theta.norm(dim=2, keepdim=True) + EPS)
        phi = self.phi(k).permute(1, 2, 0)                     # (head, hd, n_k)
        phi = phi - phi.mean(dim=2, keepdim=True)
        phi = phi / (phi.norm(dim=1, keepdim=True) + EPS)
        warped, sims = [], []
        for start in range(0, theta.shape[1], self.query_chunk):
            f = theta[:, start:start + self.query_chunk] @ phi
            sims.append(f.amax(dim=2))
            warped.append(torch.softmax(f / temperature, dim=2) @ ab)
        return torch.cat(warped, dim=1), torch.cat(sims, dim=1)


class TransformerDecoder_warper(nn.Module):
    def __init__(self, warp_layer, backbone_base_width=64, enc_cnn_width=512):
        super().__init__()
        d = warp_layer.d_model
        self.warp_layer = warp_layer
        self.project_feature1 = nn.Conv2d(8 * backbone_base_width, d // 4, 1)
        self.project_feature2 = nn.Conv2d(4 * backbone_base_width, d // 4, 1)
        self.fuse_conv1_1 = ResBlock(d, d)
        self.fuse_conv1_2 = ResBlock(d, d)
        self.fuse_conv1_3 = ResBlock(d, d)
        self.Conv_up = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(enc_cnn_width, d // 2, 3, 1, 1),
            nn.PReLU(), nn.InstanceNorm2d(d // 2))

    def forward(self, src, ref_ab, features, pos, temperature):
        b, _, _, h, w = ref_ab.shape
        n = src.shape[0] // b
        d = self.warp_layer.d_model
        ref_ab = ref_ab.reshape(b, 2, h, w) / 128.0
        up = self.Conv_up(src)
        feat = F.instance_norm(self.project_feature1(features[-1]))
        feat2 = F.interpolate(F.instance_norm(self.project_feature2(features[-2])), scale_factor=0.5)
        fused = torch.cat((feat2, feat, up), dim=1)
        src1 = self.fuse_conv1_3(self.fuse_conv1_2(self.fuse_conv1_1(fused)))
        src1 = torch.cat((src1[:, :d // 2], 0.2 * src1[:, d // 2:] + 0.8 * fused[:, d // 2:]), dim=1)
        ht, wt = src1.shape[-2:]
        ref_ab_t = F.interpolate(ref_ab, scale_factor=1 / 4).reshape(2, ht * wt).t()[:, None]
        tokens = src1.reshape(n, d, ht * wt).permute(1, 0, 2)[None]   # (1, d, n, hw)
        out, warped, sim = self.warp_layer(tokens, ref_ab_t, pos[0], temperature)
        out = to_maps(out.to(src.dtype), b, n, ht, wt)
        head = self.warp_layer.head
        warped = warped.reshape(n - 1, ht, wt, 2 * head).permute(0, 3, 1, 2)
        warped = warped.reshape((n - 1) * head, 2, ht, wt)
        return out, warped * 128, sim


class TransformerDecoderParallel(nn.Module):
    """Upstream ``Transformer_decoder_parallel``: warp, nearest x4, colour net."""

    def __init__(self, d_model=512, nhead=8, head_warp=2, num_decoder_layers=6, dim_feedforward=2048,
                 dropout=0.1, activation="relu", normalize_before=False, return_intermediate_dec=False,
                 hidden_dim=384, warp_width=512, dec_ffn=2048, dec_colornet_widths=COLOUR_WIDTHS,
                 enc_cnn_width=512, backbone_base_width=64):
        super().__init__()
        if activation != "relu":
            raise ValueError(f"TCVC's decoder uses relu, not {activation}")
        self.d_model, self.nhead = d_model, nhead
        self.decoder = TransformerDecoder_colorvid(
            hidden_dim, nhead, dec_ffn, tuple(dec_colornet_widths), 1 + 3 * head_warp, dropout)
        self.warper = TransformerDecoder_warper(
            TransformerMHWarpLayer(warp_width, head_warp, hidden_dim), backbone_base_width, enc_cnn_width)

    def forward(self, src, src_trans, ref_ab, features, tensor_1, pos, temperature_warp=0.01):
        memory, warped, sim = self.warper(src, ref_ab, features, pos, temperature_warp)
        memory = F.interpolate(memory, scale_factor=4, mode="nearest")
        return self.decoder(memory, src_trans, tensor_1), warped, sim


# --------------------------------------------------------------------------- building

class TCVCNetworks(nn.Module):
    """The four networks under the prefixes of the parity state (colornet., model., decoder.,
    inter_save.); each one's own state dict is the authors' checkpoint layout."""

    def __init__(self, colornet, model, decoder, inter_save):
        super().__init__()
        self.colornet, self.model, self.decoder, self.inter_save = colornet, model, decoder, inter_save


OFFICIAL = {
    "colornet": {"ic": 8},
    "model": {"backbone": "resnet101", "lr_backbone": 0, "masks": False, "dilation": False,
              "position_embedding": "sine", "enc_layers": 4, "dec_layers": 6, "dim_feedforward": 2048,
              "hidden_dim": 384, "dropout": 0.1, "nheads": 8, "pre_norm": False, "nhead_warp": 2,
              "num_frames": 4},
    "decoder": {"d_model": 512, "dropout": 0.1, "nhead": 8, "head_warp": 2, "dim_feedforward": 2048,
                "num_decoder_layers": 6, "normalize_before": False, "return_intermediate_dec": True},
    "inter_save": {"d_model": 384, "d_model_out": 384, "nhead": 4, "dim_feedforward": 2048, "dropout": 0.1},
}

# Arguments upstream's build_model(args) accepts but whose values the networks never read
# (training switches; widths it hard-codes).
_MODEL_UNUSED = {"lr_backbone", "masks", "dec_layers", "dim_feedforward", "pre_norm", "nhead_warp"}


def _check_model_args(kwargs):
    if kwargs.get("backbone", "resnet101") != "resnet101" or kwargs.get("dilation"):
        raise ValueError("TCVC's encoder is a ResNet-101 without dilation")
    if kwargs.get("position_embedding", "sine") not in ("sine", "v2"):
        raise ValueError("TCVC's encoder uses the sine position encoding")


def build_colornet(ic=8, widths=COLOUR_WIDTHS):
    return ColorVidNet(ic, tuple(widths))


def build_model(**kwargs):
    """VCTran from upstream's argparse names (+ the width knobs)."""
    _check_model_args(kwargs)
    own = {k: v for k, v in kwargs.items()
           if k not in _MODEL_UNUSED | {"backbone", "dilation", "position_embedding"}}
    return VCTran(**own)


def build_decoder(**kwargs):
    return TransformerDecoderParallel(**kwargs)


def build_inter_save(d_model=384, d_model_out=384, nhead=4, dim_feedforward=2048, dropout=0.1):
    return TransformerInternLayer(d_model, d_model_out, nhead, dim_feedforward, dropout)


def build_networks(colornet=None, model=None, decoder=None, inter_save=None) -> TCVCNetworks:
    """All four networks; each argument is kwargs in the authors' names, laid over the
    official configuration (None = official). Returned in eval mode."""
    def merged(name, given):
        return {**OFFICIAL[name], **(given or {})}

    nets = TCVCNetworks(build_colornet(**merged("colornet", colornet)),
                        build_model(**merged("model", model)),
                        build_decoder(**merged("decoder", decoder)),
                        build_inter_save(**merged("inter_save", inter_save)))
    return nets.eval()


def kwargs_from_config(config: dict) -> dict:
    """Per-network kwargs from a parity config.json (``tiny_kwargs`` + ``extra_tiny_kwargs``)."""
    out = {}
    for net in config["networks"]:
        extra = {k: v for k, v in net.get("extra_tiny_kwargs", {}).items() if k != "meaning"}
        out[net["name"]] = {**net["tiny_kwargs"], **extra}
    return out
