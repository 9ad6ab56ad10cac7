"""ProPainter's three networks, written here with the authors' parameter names.

* ``RAFT``: optical flow (Teed & Deng, ECCV 2020), the "things" model the authors ship.
* ``RecurrentFlowCompleteNet``: completes the flow inside the holes.
* ``InpaintGenerator``: image propagation (no weights), learnable feature propagation
  with deformable alignment, the sparse video transformer and the decoder.

The authors hard-code every width; here each network takes an ``arch`` dict whose
names and meanings are those of the parity README (``enc``, ``hidden`` ...), with the
released checkpoints' values as defaults, so the tiny parity nets and the official ones
are the same code. ``build`` makes all three from kwargs in the authors' names.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from .ops import CorrBlock, binarise, coords_grid, fb_consistent, flow_warp

OFFICIAL_ARCH = {
    "raft": {"enc": [64, 96, 128], "fnet_out": 256, "hdim": 128, "cdim": 128,
             "motion": [256, 192, 128, 64, 128], "flow_head": 256, "mask_hidden": 256},
    "flow_complete": {"ch": [32, 64, 128], "deform_groups": 16, "edge_mid": 16},
    "propainter": {"enc": [64, 64, 128, 256, 384, 512, 384, 256, 128], "hidden": 512,
                   "dec": [128, 64, 64], "deform_groups": 16, "depths": 8, "num_heads": 4,
                   "ffn_hidden": 1960},
}


def _lrelu(slope: float) -> nn.LeakyReLU:
    return nn.LeakyReLU(slope, inplace=True)


# --------------------------------------------------------------------------------------
# RAFT
# --------------------------------------------------------------------------------------

def _norm(kind: str, planes: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(planes)
    if kind == "instance":
        return nn.InstanceNorm2d(planes)
    return nn.Sequential()


class ResidualBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, norm_fn: str, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.norm1 = _norm(norm_fn, planes)
        self.norm2 = _norm(norm_fn, planes)
        self.downsample = None
        if stride != 1:
            # The same module under two names: the checkpoint stores it twice.
            self.norm3 = _norm(norm_fn, planes)
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride), self.norm3)

    def forward(self, x):
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class BasicEncoder(nn.Module):
    def __init__(self, output_dim: int, norm_fn: str, widths=(64, 96, 128)):
        super().__init__()
        self.norm1 = _norm(norm_fn, widths[0])
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3)
        self.relu1 = nn.ReLU(inplace=True)
        self.layer1 = self._layer(widths[0], widths[0], norm_fn, 1)
        self.layer2 = self._layer(widths[0], widths[1], norm_fn, 2)
        self.layer3 = self._layer(widths[1], widths[2], norm_fn, 2)
        self.conv2 = nn.Conv2d(widths[2], output_dim, kernel_size=1)

    @staticmethod
    def _layer(in_planes, planes, norm_fn, stride):
        return nn.Sequential(ResidualBlock(in_planes, planes, norm_fn, stride),
                             ResidualBlock(planes, planes, norm_fn, 1))

    def forward(self, x):
        x = self.relu1(self.norm1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.conv2(x)


class BasicMotionEncoder(nn.Module):
    def __init__(self, cor_planes: int, motion):
        super().__init__()
        c1, c2, f1, f2, out = motion
        self.convc1 = nn.Conv2d(cor_planes, c1, 1, padding=0)
        self.convc2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.convf1 = nn.Conv2d(2, f1, 7, padding=3)
        self.convf2 = nn.Conv2d(f1, f2, 3, padding=1)
        self.conv = nn.Conv2d(c2 + f2, out - 2, 3, padding=1)

    def forward(self, flow, corr):
        cor = F.relu(self.convc2(F.relu(self.convc1(corr))))
        flo = F.relu(self.convf2(F.relu(self.convf1(flow))))
        out = F.relu(self.conv(torch.cat([cor, flo], dim=1)))
        return torch.cat([out, flow], dim=1)


class SepConvGRU(nn.Module):
    def __init__(self, hidden_dim: int, input_dim: int):
        super().__init__()
        both = hidden_dim + input_dim
        self.convz1 = nn.Conv2d(both, hidden_dim, (1, 5), padding=(0, 2))
        self.convr1 = nn.Conv2d(both, hidden_dim, (1, 5), padding=(0, 2))
        self.convq1 = nn.Conv2d(both, hidden_dim, (1, 5), padding=(0, 2))
        self.convz2 = nn.Conv2d(both, hidden_dim, (5, 1), padding=(2, 0))
        self.convr2 = nn.Conv2d(both, hidden_dim, (5, 1), padding=(2, 0))
        self.convq2 = nn.Conv2d(both, hidden_dim, (5, 1), padding=(2, 0))

    @staticmethod
    def _step(h, x, convz, convr, convq):
        hx = torch.cat([h, x], dim=1)
        z = torch.sigmoid(convz(hx))
        r = torch.sigmoid(convr(hx))
        q = torch.tanh(convq(torch.cat([r * h, x], dim=1)))
        return (1 - z) * h + z * q

    def forward(self, h, x):
        h = self._step(h, x, self.convz1, self.convr1, self.convq1)
        return self._step(h, x, self.convz2, self.convr2, self.convq2)


class FlowHead(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(input_dim, hidden_dim, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden_dim, 2, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.conv2(self.relu(self.conv1(x)))


class BasicUpdateBlock(nn.Module):
    def __init__(self, cor_planes: int, arch: dict):
        super().__init__()
        hdim, cdim = arch["hdim"], arch["cdim"]
        self.encoder = BasicMotionEncoder(cor_planes, arch["motion"])
        self.gru = SepConvGRU(hidden_dim=hdim, input_dim=arch["motion"][4] + cdim)
        self.flow_head = FlowHead(hdim, hidden_dim=arch["flow_head"])
        self.mask = nn.Sequential(
            nn.Conv2d(hdim, arch["mask_hidden"], 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(arch["mask_hidden"], 64 * 9, 1, padding=0))

    def forward(self, net, inp, corr, flow):
        motion = self.encoder(flow, corr)
        net = self.gru(net, torch.cat([inp, motion], dim=1))
        return net, self.flow_head(net)

    def upsampling_mask(self, net):
        # The authors scale the mask logits to balance gradients; the softmax sees it.
        return 0.25 * self.mask(net)


class RAFT(nn.Module):
    """RAFT (not the small variant), all-pairs correlation; input RGB in [-1, 1]."""

    def __init__(self, small=False, mixed_precision=False, alternate_corr=False, dropout=0,
                 corr_levels=4, corr_radius=4, arch=None):
        super().__init__()
        if small or alternate_corr or mixed_precision:
            raise ValueError("only RAFT(small=False, alternate_corr=False, "
                             "mixed_precision=False) is used by ProPainter")
        arch = {**OFFICIAL_ARCH["raft"], **(arch or {})}
        self.hidden_dim, self.context_dim = arch["hdim"], arch["cdim"]
        self.corr_levels, self.corr_radius = corr_levels, corr_radius
        cor_planes = corr_levels * (2 * corr_radius + 1) ** 2
        self.fnet = BasicEncoder(arch["fnet_out"], "instance", arch["enc"])
        self.cnet = BasicEncoder(arch["hdim"] + arch["cdim"], "batch", arch["enc"])
        self.update_block = BasicUpdateBlock(cor_planes, arch)

    @staticmethod
    def upsample_flow(flow, mask):
        """(N, 2, H, W) -> (N, 2, 8H, 8W): each fine pixel a convex mix of 3x3 coarse ones."""
        n, _, h, w = flow.shape
        mask = torch.softmax(mask.view(n, 1, 9, 8, 8, h, w), dim=2)
        up = F.unfold(8 * flow, [3, 3], padding=1).view(n, 2, 9, 1, 1, h, w)
        up = torch.sum(mask * up, dim=2).permute(0, 1, 4, 2, 5, 3)
        return up.reshape(n, 2, 8 * h, 8 * w)

    def forward(self, image1, image2, iters=12, flow_init=None, test_mode=True):
        """(flow at 1/8 resolution, convex-upsampled flow of the last iteration)."""
        image1, image2 = image1.contiguous(), image2.contiguous()
        fmap1, fmap2 = self.fnet(torch.cat([image1, image2], dim=0)).float().chunk(2, dim=0)
        corr_fn = CorrBlock(fmap1, fmap2, self.corr_levels, self.corr_radius)
        net, inp = torch.split(self.cnet(image1), [self.hidden_dim, self.context_dim], dim=1)
        net, inp = torch.tanh(net), torch.relu(inp)
        n, _, h, w = image1.shape
        coords0 = coords_grid(n, h // 8, w // 8, image1.device)
        coords1 = coords0.clone() if flow_init is None else coords0 + flow_init
        for _ in range(iters):
            corr = corr_fn(coords1)
            net, delta_flow = self.update_block(net, inp, corr, coords1 - coords0)
            coords1 = coords1 + delta_flow
        # Only the last iteration's upsampled flow is used at inference; the authors
        # compute it every iteration and drop the rest.
        flow_up = self.upsample_flow(coords1 - coords0, self.update_block.upsampling_mask(net))
        return coords1 - coords0, flow_up


# --------------------------------------------------------------------------------------
# Deformable alignment (shared by flow completion and the generator)
# --------------------------------------------------------------------------------------

class ModulatedDeformConv2d(nn.Module):
    """The parameters of a modulated deformable conv; the op is torchvision's."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, deform_groups=1, bias=True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (kernel_size, kernel_size)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.deform_groups = deform_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups,
                                               *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        bound = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)

    def _offset_head(self, in_channels: int) -> nn.Sequential:
        c = self.out_channels
        head = nn.Sequential(
            nn.Conv2d(in_channels, c, 3, 1, 1), _lrelu(0.1),
            nn.Conv2d(c, c, 3, 1, 1), _lrelu(0.1),
            nn.Conv2d(c, c, 3, 1, 1), _lrelu(0.1),
            nn.Conv2d(c, 27 * self.deform_groups, 3, 1, 1))
        nn.init.zeros_(head[-1].weight)
        nn.init.zeros_(head[-1].bias)
        return head

    def _deform(self, x, offset, mask):
        return torchvision.ops.deform_conv2d(x, offset, self.weight, self.bias, self.stride,
                                             self.padding, self.dilation, mask)


class SecondOrderDeformableAlignment(ModulatedDeformConv2d):
    """Flow completion's alignment: offsets from features only, at most 5 px."""

    def __init__(self, *args, max_residue_magnitude=5, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_residue_magnitude = max_residue_magnitude
        self.conv_offset = self._offset_head(3 * self.out_channels)

    def forward(self, x, extra_feat):
        o1, o2, mask = torch.chunk(self.conv_offset(extra_feat), 3, dim=1)
        offset = self.max_residue_magnitude * torch.tanh(torch.cat((o1, o2), dim=1))
        return self._deform(x, offset, torch.sigmoid(mask))


class DeformableAlignment(ModulatedDeformConv2d):
    """The generator's alignment: the flow plus a residual of at most 3 px."""

    def __init__(self, *args, max_residue_magnitude=3, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_residue_magnitude = max_residue_magnitude
        self.conv_offset = self._offset_head(2 * self.out_channels + 2 + 1 + 2)

    def forward(self, x, cond_feat, flow):
        o1, o2, mask = torch.chunk(self.conv_offset(cond_feat), 3, dim=1)
        offset = self.max_residue_magnitude * torch.tanh(torch.cat((o1, o2), dim=1))
        # deform_conv2d wants (y, x) per tap and group; flows are (x, y).
        offset = offset + flow.flip(1).repeat(1, offset.size(1) // 2, 1, 1)
        return self._deform(x, offset, torch.sigmoid(mask))


# --------------------------------------------------------------------------------------
# Recurrent flow completion
# --------------------------------------------------------------------------------------

class FlowPropagation(nn.Module):
    """Flow completion's second-order bidirectional propagation (upstream's
    ``BidirectionalPropagation`` in recurrent_flow_completion.py)."""

    def __init__(self, channel: int, deform_groups: int):
        super().__init__()
        self.channel = channel
        self.deform_align = nn.ModuleDict()
        self.backbone = nn.ModuleDict()
        for i, name in enumerate(("backward_", "forward_")):
            self.deform_align[name] = SecondOrderDeformableAlignment(
                2 * channel, channel, 3, padding=1, deform_groups=deform_groups)
            self.backbone[name] = nn.Sequential(
                nn.Conv2d((2 + i) * channel, channel, 3, 1, 1), _lrelu(0.1),
                nn.Conv2d(channel, channel, 3, 1, 1))
        self.fusion = nn.Conv2d(2 * channel, channel, 1, 1, 0)

    def _direction(self, name, spatial, earlier):
        """One recurrent pass; ``earlier`` holds the other passes' features per frame."""
        t = len(spatial)
        order = range(t - 1, -1, -1) if name == "backward_" else range(t)
        out = []
        feat_prop = spatial[0].new_zeros(spatial[0].shape)
        for i, idx in enumerate(order):
            current = spatial[idx]
            if i > 0:
                feat_n2 = out[-2] if i > 1 else torch.zeros_like(feat_prop)
                cond = torch.cat([feat_prop, current, feat_n2], dim=1)
                feat_prop = self.deform_align[name](torch.cat([feat_prop, feat_n2], dim=1), cond)
            feat = torch.cat([current] + [e[idx] for e in earlier] + [feat_prop], dim=1)
            feat_prop = feat_prop + self.backbone[name](feat)
            out.append(feat_prop)
        return out[::-1] if name == "backward_" else out

    def forward(self, x):
        spatial = list(x.unbind(1))
        backward = self._direction("backward_", spatial, [])
        forward = self._direction("forward_", spatial, [backward])
        fused = [self.fusion(torch.cat([b, f], dim=1)) for b, f in zip(backward, forward)]
        return torch.stack(fused, dim=1) + x


class deconv(nn.Module):  # noqa: N801 - the authors' class; its name is in no key
    def __init__(self, input_channel, output_channel, kernel_size=3, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(input_channel, output_channel, kernel_size=kernel_size,
                              stride=1, padding=padding)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))


class P3DBlock(nn.Module):
    """A (1, k, k) spatial conv then a dilated (3, 1, 1) temporal conv."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, kernel_size=(1, kernel_size, kernel_size),
                      stride=(1, stride, stride), padding=(0, padding, padding)),
            _lrelu(0.2))
        self.conv2 = nn.Sequential(
            nn.Conv3d(out_channels, out_channels, kernel_size=(3, 1, 1), stride=(1, 1, 1),
                      padding=(2, 0, 0), dilation=(2, 1, 1)))

    def forward(self, feats):
        return self.conv2(self.conv1(feats))


class EdgeDetection(nn.Module):
    """Only trained with; kept because the checkpoint carries it."""

    def __init__(self, in_ch=2, out_ch=1, mid_ch=16):
        super().__init__()
        self.projection = nn.Sequential(nn.Conv2d(in_ch, mid_ch, 3, 1, 1), _lrelu(0.2))
        self.mid_layer_1 = nn.Sequential(nn.Conv2d(mid_ch, mid_ch, 3, 1, 1), _lrelu(0.2))
        self.mid_layer_2 = nn.Sequential(nn.Conv2d(mid_ch, mid_ch, 3, 1, 1))
        self.l_relu = nn.LeakyReLU(0.01, inplace=True)
        self.out_layer = nn.Conv2d(mid_ch, out_ch, 1, 1, 0)

    def forward(self, flow):
        flow = self.projection(flow)
        edge = self.l_relu(flow + self.mid_layer_2(self.mid_layer_1(flow)))
        return torch.sigmoid(self.out_layer(edge))


class RecurrentFlowCompleteNet(nn.Module):
    def __init__(self, model_path=None, arch=None):
        super().__init__()
        arch = {**OFFICIAL_ARCH["flow_complete"], **(arch or {})}
        c1, c2, c3 = arch["ch"]
        self.channel = c3
        self.downsample = nn.Sequential(
            nn.Conv3d(3, c1, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 2, 2),
                      padding_mode="replicate"),
            _lrelu(0.2))
        self.encoder1 = nn.Sequential(P3DBlock(c1, c1, 3, 1, 1), _lrelu(0.2),
                                      P3DBlock(c1, c2, 3, 2, 1), _lrelu(0.2))
        self.encoder2 = nn.Sequential(P3DBlock(c2, c2, 3, 1, 1), _lrelu(0.2),
                                      P3DBlock(c2, c3, 3, 2, 1), _lrelu(0.2))
        self.mid_dilation = nn.Sequential(*[
            layer for d in (3, 2, 1) for layer in (
                nn.Conv3d(c3, c3, (1, 3, 3), (1, 1, 1), padding=(0, d, d), dilation=(1, d, d)),
                _lrelu(0.2))])
        self.feat_prop_module = FlowPropagation(c3, arch["deform_groups"])
        self.decoder2 = nn.Sequential(nn.Conv2d(c3, c3, 3, 1, 1), _lrelu(0.2),
                                      deconv(c3, c2, 3, 1), _lrelu(0.2))
        self.decoder1 = nn.Sequential(nn.Conv2d(c2, c2, 3, 1, 1), _lrelu(0.2),
                                      deconv(c2, c1, 3, 1), _lrelu(0.2))
        self.upsample = nn.Sequential(nn.Conv2d(c1, c1, 3, padding=1), _lrelu(0.2),
                                      deconv(c1, 2, 3, 1))
        self.edgeDetector = EdgeDetection(in_ch=2, out_ch=1, mid_ch=arch["edge_mid"])

    def forward(self, masked_flows, masks):
        """(B, T-1, 2, H, W) flows with holes zeroed and their masks -> completed flows."""
        b, t, _, h, w = masked_flows.shape
        inputs = torch.cat((masked_flows, masks), dim=2).permute(0, 2, 1, 3, 4)
        x = self.downsample(inputs)
        feat_e1 = self.encoder1(x)
        feat_mid = self.mid_dilation(self.encoder2(feat_e1)).permute(0, 2, 1, 3, 4)
        feat_prop = self.feat_prop_module(feat_mid).reshape(-1, self.channel, h // 8, w // 8)
        _, c, _, h_f, w_f = feat_e1.shape
        feat_e1 = feat_e1.permute(0, 2, 1, 3, 4).reshape(-1, c, h_f, w_f)
        feat_d1 = self.decoder1(self.decoder2(feat_prop) + feat_e1)
        return self.upsample(feat_d1).view(b, t, 2, h, w)

    def forward_bidirect_flow(self, masked_flows_bi, masks):
        """Both directions, each with its own masks; the backward flows run time-reversed
        through the same weights. Returns the raw predictions (forward, backward)."""
        masks_f, masks_b = masks[:, :-1], masks[:, 1:]
        pred_f = self.forward(masked_flows_bi[0] * (1 - masks_f), masks_f)
        flipped = self.forward(torch.flip(masked_flows_bi[1] * (1 - masks_b), dims=[1]),
                               torch.flip(masks_b, dims=[1]))
        return pred_f, torch.flip(flipped, dims=[1])

    @staticmethod
    def combine_flow(flows_bi, pred_flows_bi, masks):
        """Keep the measured flow outside the holes."""
        masks_f, masks_b = masks[:, :-1], masks[:, 1:]
        return (pred_flows_bi[0] * masks_f + flows_bi[0] * (1 - masks_f),
                pred_flows_bi[1] * masks_b + flows_bi[1] * (1 - masks_b))


# --------------------------------------------------------------------------------------
# ProPainter's InpaintGenerator
# --------------------------------------------------------------------------------------

class ImagePropagation(nn.Module):
    """Dual-domain propagation in the image domain (no weights): a backward then a forward
    pass fill hole pixels from their neighbour along the completed flow where the flow is
    forward-backward consistent and the source pixel is known."""

    def _direction(self, frames, masks, flows_prop, flows_check, backward, interpolation):
        t = len(frames)
        order = range(t - 1, -1, -1) if backward else range(t)
        out_frames, out_masks = [], []
        for i, idx in enumerate(order):
            current, mask_current = frames[idx], masks[idx]
            if i == 0:
                feat, mask = current, mask_current
            else:
                k = idx if backward else idx - 1
                flow, check = flows_prop[:, k], flows_check[:, k]
                valid = fb_consistent(flow, check)
                grid_flow = flow.permute(0, 2, 3, 1)
                warped = flow_warp(feat, grid_flow, interpolation)
                known = 1 - binarise(flow_warp(mask, grid_flow))
                take = binarise(mask_current * valid * known)
                feat = take * warped + (1 - take) * current
                mask = binarise(mask_current * (1 - valid * known))
            out_frames.append(feat)
            out_masks.append(mask)
        if backward:
            return out_frames[::-1], out_masks[::-1]
        return out_frames, out_masks

    def forward(self, frames, flows_forward, flows_backward, masks, interpolation="nearest"):
        frames_b, masks_b = self._direction(list(frames.unbind(1)), list(masks.unbind(1)),
                                            flows_forward, flows_backward, True, interpolation)
        frames_f, masks_f = self._direction(frames_b, masks_b, flows_backward, flows_forward,
                                            False, interpolation)
        return torch.stack(frames_f, dim=1), torch.stack(masks_f, dim=1)


class FeaturePropagation(nn.Module):
    """Learnable bidirectional feature propagation with flow-guided deformable alignment
    (upstream's ``BidirectionalPropagation(learnable=True)`` in propainter.py)."""

    def __init__(self, channel: int, deform_groups: int):
        super().__init__()
        self.channel = channel
        self.deform_align = nn.ModuleDict()
        self.backbone = nn.ModuleDict()
        for name in ("backward_1", "forward_1"):
            self.deform_align[name] = DeformableAlignment(
                channel, channel, 3, padding=1, deform_groups=deform_groups)
            self.backbone[name] = nn.Sequential(
                nn.Conv2d(2 * channel + 2, channel, 3, 1, 1), _lrelu(0.2),
                nn.Conv2d(channel, channel, 3, 1, 1))
        self.fuse = nn.Sequential(
            nn.Conv2d(2 * channel + 2, channel, 3, 1, 1), _lrelu(0.2),
            nn.Conv2d(channel, channel, 3, 1, 1))

    def _direction(self, name, feats, masks, flows_prop, flows_check, interpolation):
        backward = name == "backward_1"
        t = len(feats)
        order = range(t - 1, -1, -1) if backward else range(t)
        out = []
        for i, idx in enumerate(order):
            current, mask_current = feats[idx], masks[idx]
            if i == 0:
                feat_prop = current
            else:
                k = idx if backward else idx - 1
                flow = flows_prop[:, k]
                valid = fb_consistent(flow, flows_check[:, k])
                warped = flow_warp(feat_prop, flow.permute(0, 2, 3, 1), interpolation)
                cond = torch.cat([current, warped, flow, valid, mask_current], dim=1)
                feat_prop = self.deform_align[name](feat_prop, cond, flow)
            feat = torch.cat([current, feat_prop, mask_current], dim=1)
            feat_prop = feat_prop + self.backbone[name](feat)
            out.append(feat_prop)
        return out[::-1] if backward else out

    def forward(self, x, flows_forward, flows_backward, mask, interpolation="bilinear"):
        b, t, c, h, w = x.shape
        masks = list(mask.unbind(1))
        backward = self._direction("backward_1", list(x.unbind(1)), masks,
                                   flows_forward, flows_backward, interpolation)
        forward = self._direction("forward_1", backward, masks,
                                  flows_backward, flows_forward, interpolation)
        outputs_b = torch.stack(backward, dim=1).view(-1, c, h, w)
        outputs_f = torch.stack(forward, dim=1).view(-1, c, h, w)
        fused = self.fuse(torch.cat([outputs_b, outputs_f, mask.view(-1, 2, h, w)], dim=1))
        return (fused + x.view(-1, c, h, w)).view(b, t, c, h, w)


class Encoder(nn.Module):
    """Nine 3x3 convs to 1/4 resolution; the last four are grouped, each fed the
    group-wise interleave of the fifth conv's input and the previous output."""

    GROUPS = (1, 2, 4, 8, 1)

    def __init__(self, enc):
        super().__init__()
        e = enc
        specs = [(5, e[0], 2, 1), (e[0], e[1], 1, 1), (e[1], e[2], 2, 1), (e[2], e[3], 1, 1),
                 (e[3], e[4], 1, 1), (e[3] + e[4], e[5], 1, 2), (e[3] + e[5], e[6], 1, 4),
                 (e[3] + e[6], e[7], 1, 8), (e[3] + e[7], e[8], 1, 1)]
        layers = []
        for c_in, c_out, stride, groups in specs:
            layers += [nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1,
                                 groups=groups), _lrelu(0.2)]
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        bt = x.shape[0]
        out = x
        for i, layer in enumerate(self.layers):
            if i == 8:
                x0 = out
                _, _, h, w = x0.shape
            if i > 8 and i % 2 == 0:
                g = self.GROUPS[(i - 8) // 2]
                out = torch.cat([x0.view(bt, g, -1, h, w), out.view(bt, g, -1, h, w)],
                                dim=2).view(bt, -1, h, w)
            out = layer(out)
        return out


class SoftSplit(nn.Module):
    """Overlapping 7x7 patches (stride 3) of the features, each embedded as a token."""

    def __init__(self, channel, hidden, kernel_size, stride, padding):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.t2t = nn.Unfold(kernel_size=kernel_size, stride=stride, padding=padding)
        self.embedding = nn.Linear(reduce(lambda a, b: a * b, kernel_size) * channel, hidden)

    def forward(self, x, b, output_size):
        f_h, f_w = token_grid(output_size, self.kernel_size, self.stride, self.padding)
        feat = self.embedding(self.t2t(x).permute(0, 2, 1))
        return feat.view(b, -1, f_h, f_w, feat.size(2))


class SoftComp(nn.Module):
    """Tokens back to features: embed, fold (overlaps summed), 3x3 conv."""

    def __init__(self, channel, hidden, kernel_size, stride, padding):
        super().__init__()
        self.relu = nn.LeakyReLU(0.2, inplace=True)
        self.embedding = nn.Linear(hidden, reduce(lambda a, b: a * b, kernel_size) * channel)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.bias_conv = nn.Conv2d(channel, channel, kernel_size=3, stride=1, padding=1)

    def forward(self, x, t, output_size):
        b_, _, _, _, c_ = x.shape
        feat = self.embedding(x.view(b_, -1, c_))
        b, _, c = feat.shape
        feat = feat.view(b * t, -1, c).permute(0, 2, 1)
        feat = F.fold(feat, output_size=output_size, kernel_size=self.kernel_size,
                      stride=self.stride, padding=self.padding)
        return self.bias_conv(feat)


def token_grid(size, kernel_size, stride, padding):
    return tuple(int((size[i] + 2 * padding[i] - (kernel_size[i] - 1) - 1) / stride[i] + 1)
                 for i in range(2))


class FusionFeedForward(nn.Module):
    """Linear, then fold/unfold with overlap-count normalisation so neighbouring tokens
    exchange information, GELU, linear."""

    def __init__(self, dim, hidden_dim=1960, t2t_params=None):
        super().__init__()
        self.fc1 = nn.Sequential(nn.Linear(dim, hidden_dim))
        self.fc2 = nn.Sequential(nn.GELU(), nn.Linear(hidden_dim, dim))
        self.t2t_params = t2t_params
        self.kernel_shape = reduce(lambda a, b: a * b, t2t_params["kernel_size"])

    def forward(self, x, output_size):
        p = self.t2t_params
        f_h, f_w = token_grid(output_size, p["kernel_size"], p["stride"], p["padding"])
        n_vecs = f_h * f_w
        x = self.fc1(x)
        b, n, c = x.shape
        ones = x.new_ones(b, n, self.kernel_shape).view(-1, n_vecs, self.kernel_shape)
        normalizer = F.fold(ones.permute(0, 2, 1), output_size=output_size, **p)
        x = F.fold(x.view(-1, n_vecs, c).permute(0, 2, 1), output_size=output_size, **p)
        x = F.unfold(x / normalizer, **p).permute(0, 2, 1).contiguous().view(b, n, c)
        return self.fc2(x)


def window_partition(x, window_size, n_head):
    """(B, T, H, W, C) -> (B, nH, nW, heads, T, wh, ww, C / heads); heads split C
    contiguously."""
    b, t, h, w, c = x.shape
    x = x.view(b, t, h // window_size[0], window_size[0], w // window_size[1], window_size[1],
               n_head, c // n_head)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).contiguous()


class SparseWindowAttention(nn.Module):
    """Window attention over (5, 9) token windows. Windows with a hole in a local frame
    attend, across every second frame, to their own tokens, to the tokens of four
    diagonally rolled copies and to pooled tokens of the whole frame; the others attend
    only within themselves, frame by frame."""

    def __init__(self, dim, n_head, window_size, pool_size=(4, 4)):
        super().__init__()
        self.key = nn.Linear(dim, dim)
        self.query = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.n_head = n_head
        self.window_size = window_size
        self.pool_layer = nn.Conv2d(dim, dim, kernel_size=pool_size, stride=pool_size,
                                    padding=(0, 0), groups=dim)
        nn.init.constant_(self.pool_layer.weight, 1.0 / (pool_size[0] * pool_size[1]))
        nn.init.zeros_(self.pool_layer.bias)
        self.expand_size = tuple((i + 1) // 2 for i in window_size)
        self.register_buffer("valid_ind_rolled", self._rolled_indices())
        self.max_pool = nn.MaxPool2d(window_size, window_size, (0, 0))

    def _rolled_indices(self) -> torch.Tensor:
        """Which tokens of the four rolled windows are not already in the window."""
        wh, ww = self.window_size
        eh, ew = self.expand_size
        masks = [torch.ones(wh, ww) for _ in range(4)]
        masks[0][:-eh, :-ew] = 0
        masks[1][:-eh, ew:] = 0
        masks[2][eh:, :-ew] = 0
        masks[3][eh:, ew:] = 0
        return torch.stack(masks, 0).flatten(0).nonzero(as_tuple=False).view(-1)

    def _windows(self, x, b, n_win, t):
        wh, ww = self.window_size
        c_head = x.shape[-1] // self.n_head
        return window_partition(x, self.window_size, self.n_head).view(
            b, n_win, self.n_head, t, wh * ww, c_head)

    def _rolled(self, k, b, n_win, t):
        eh, ew = self.expand_size
        rolled = [self._windows(torch.roll(k, shifts=s, dims=(2, 3)), b, n_win, t)
                  for s in ((-eh, -ew), (-eh, ew), (eh, -ew), (eh, ew))]
        return torch.cat(rolled, dim=4)[:, :, :, :, self.valid_ind_rolled]

    def _pooled(self, proj, pool_x, b, n_win, t):
        _, _, p_h, p_w, c = pool_x.shape
        tokens = proj(pool_x).unsqueeze(1).expand(b, n_win, t, p_h, p_w, c)
        tokens = tokens.reshape(b, n_win, t, p_h, p_w, self.n_head, c // self.n_head)
        return tokens.permute(0, 1, 5, 2, 3, 4, 6).reshape(
            b, n_win, self.n_head, t, p_h * p_w, c // self.n_head)

    def forward(self, x, mask=None, T_ind=None):  # noqa: N803 - the authors' name
        b, t, h, w, c = x.shape
        wh, ww = self.window_size
        c_head = c // self.n_head
        n_wh, n_ww = math.ceil(h / wh), math.ceil(w / ww)
        new_h, new_w = n_wh * wh, n_ww * ww
        pad_r, pad_b = new_w - w, new_h - h
        if pad_r > 0 or pad_b > 0:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b, 0, 0), mode="constant", value=0)
            mask = F.pad(mask, (0, 0, 0, pad_r, 0, pad_b, 0, 0), mode="constant", value=0)
        n_win = n_wh * n_ww
        q, k, v = self.query(x), self.key(x), self.value(x)
        win_q = self._windows(q, b, n_win, t)
        win_k = torch.cat((self._windows(k, b, n_win, t), self._rolled(k, b, n_win, t)), dim=4)
        win_v = torch.cat((self._windows(v, b, n_win, t), self._rolled(v, b, n_win, t)), dim=4)
        pool_x = self.pool_layer(x.view(b * t, new_h, new_w, c).permute(0, 3, 1, 2))
        pool_x = pool_x.permute(0, 2, 3, 1).view(b, t, pool_x.shape[2], pool_x.shape[3], c)
        win_k = torch.cat((win_k, self._pooled(self.key, pool_x, b, n_win, t)), dim=4)
        win_v = torch.cat((win_v, self._pooled(self.value, pool_x, b, n_win, t)), dim=4)

        l_t = mask.shape[1]
        holes = self.max_pool(mask.view(b * l_t, new_h, new_w)).view(b, l_t, n_win).sum(dim=1)
        out = torch.zeros_like(win_q)
        scale = 1.0 / math.sqrt(c_head)
        n_own = wh * ww
        for i in range(b):
            masked = holes[i].nonzero(as_tuple=False).view(-1)
            if len(masked) > 0:
                n = len(masked)
                q_t = win_q[i, masked].view(n, self.n_head, t * n_own, c_head)
                k_t = win_k[i, masked][:, :, T_ind.view(-1)].reshape(n, self.n_head, -1, c_head)
                v_t = win_v[i, masked][:, :, T_ind.view(-1)].reshape(n, self.n_head, -1, c_head)
                att = torch.softmax((q_t @ k_t.transpose(-2, -1)) * scale, dim=-1)
                out[i, masked] = (att @ v_t).view(-1, self.n_head, t, n_own, c_head)
            unmasked = (holes[i] == 0).nonzero(as_tuple=False).view(-1)
            q_s = win_q[i, unmasked]
            att = torch.softmax((q_s @ win_k[i, unmasked, :, :, :n_own].transpose(-2, -1))
                                * scale, dim=-1)
            out[i, unmasked] = att @ win_v[i, unmasked, :, :, :n_own]
        out = out.view(b, n_wh, n_ww, self.n_head, t, wh, ww, c_head)
        out = out.permute(0, 4, 1, 5, 2, 6, 3, 7).contiguous().view(b, t, new_h, new_w, c)
        if pad_r > 0 or pad_b > 0:
            out = out[:, :, :h, :w, :]
        return self.proj(out)


class TemporalSparseTransformer(nn.Module):
    def __init__(self, dim, n_head, window_size, pool_size, ffn_hidden, t2t_params):
        super().__init__()
        self.window_size = window_size
        self.attention = SparseWindowAttention(dim, n_head, window_size, pool_size)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FusionFeedForward(dim, hidden_dim=ffn_hidden, t2t_params=t2t_params)

    def forward(self, x, fold_x_size, mask=None, T_ind=None):  # noqa: N803
        b, t, h, w, c = x.shape
        x = x + self.attention(self.norm1(x), mask, T_ind)
        y = self.norm2(x)
        return x + self.mlp(y.view(b, t * h * w, c), fold_x_size).view(b, t, h, w, c)


class TemporalSparseTransformerBlock(nn.Module):
    def __init__(self, dim, n_head, window_size, pool_size, depths, ffn_hidden, t2t_params):
        super().__init__()
        self.transformer = nn.Sequential(*[
            TemporalSparseTransformer(dim, n_head, window_size, pool_size, ffn_hidden,
                                      t2t_params)
            for _ in range(depths)])
        self.depths = depths

    def forward(self, x, fold_x_size, l_mask=None, t_dilation=2):
        if self.depths % t_dilation:
            raise ValueError(f"t_dilation {t_dilation} must divide depths {self.depths}")
        t = x.shape[1]
        # Masked windows of block i draw keys from frames i, i + d, i + 2d, ... (mod d).
        frames = [torch.arange(i, t, t_dilation, device=x.device) for i in range(t_dilation)]
        for i, block in enumerate(self.transformer):
            x = block(x, fold_x_size, l_mask, frames[i % t_dilation])
        return x


class InpaintGenerator(nn.Module):
    KERNEL, STRIDE, PADDING = (7, 7), (3, 3), (3, 3)
    WINDOW, POOL = (5, 9), (4, 4)

    def __init__(self, init_weights=True, model_path=None, arch=None):
        super().__init__()
        arch = {**OFFICIAL_ARCH["propainter"], **(arch or {})}
        if arch["ffn_hidden"] % 49:
            raise ValueError(f"ffn_hidden {arch['ffn_hidden']} must be a multiple of 49")
        enc, hidden, dec = arch["enc"], arch["hidden"], arch["dec"]
        channel = enc[8]
        self.encoder = Encoder(enc)
        self.decoder = nn.Sequential(
            deconv(channel, dec[0], kernel_size=3, padding=1), _lrelu(0.2),
            nn.Conv2d(dec[0], dec[1], kernel_size=3, stride=1, padding=1), _lrelu(0.2),
            deconv(dec[1], dec[2], kernel_size=3, padding=1), _lrelu(0.2),
            nn.Conv2d(dec[2], 3, kernel_size=3, stride=1, padding=1))
        t2t = {"kernel_size": self.KERNEL, "stride": self.STRIDE, "padding": self.PADDING}
        self.ss = SoftSplit(channel, hidden, self.KERNEL, self.STRIDE, self.PADDING)
        self.sc = SoftComp(channel, hidden, self.KERNEL, self.STRIDE, self.PADDING)
        self.max_pool = nn.MaxPool2d(self.KERNEL, self.STRIDE, self.PADDING)
        self.img_prop_module = ImagePropagation()
        self.feat_prop_module = FeaturePropagation(channel, arch["deform_groups"])
        self.transformers = TemporalSparseTransformerBlock(
            dim=hidden, n_head=arch["num_heads"], window_size=self.WINDOW,
            pool_size=self.POOL, depths=arch["depths"], ffn_hidden=arch["ffn_hidden"],
            t2t_params=t2t)

    def img_propagation(self, masked_frames, completed_flows, masks, interpolation="nearest"):
        """(propagated frames, masks of the pixels still unfilled)."""
        return self.img_prop_module(masked_frames, completed_flows[0], completed_flows[1],
                                    masks, interpolation)

    def forward(self, masked_frames, completed_flows, masks_in, masks_updated,
                num_local_frames, interpolation="bilinear", t_dilation=2):
        """Frames (B, T, 3, H, W) in [-1, 1], the first ``num_local_frames`` local and the
        rest references; flows between consecutive local frames; masks 1 = hole.
        Returns the local frames, tanh in [-1, 1]."""
        l_t = num_local_frames
        b, t, _, ori_h, ori_w = masked_frames.shape
        enc_feat = self.encoder(torch.cat([masked_frames.view(b * t, 3, ori_h, ori_w),
                                           masks_in.view(b * t, 1, ori_h, ori_w),
                                           masks_updated.view(b * t, 1, ori_h, ori_w)], dim=1))
        _, c, h, w = enc_feat.shape
        enc_feat = enc_feat.view(b, t, c, h, w)
        local_feat, ref_feat = enc_feat[:, :l_t], enc_feat[:, l_t:]
        ds_flows = [self._quarter_flow(f, b, l_t - 1, h, w) for f in completed_flows]
        ds_mask_in = F.interpolate(masks_in.reshape(-1, 1, ori_h, ori_w), scale_factor=1 / 4,
                                   mode="nearest").view(b, t, 1, h, w)[:, :l_t]
        ds_mask_updated = F.interpolate(
            masks_updated[:, :l_t].reshape(-1, 1, ori_h, ori_w), scale_factor=1 / 4,
            mode="nearest").view(b, l_t, 1, h, w)
        mask_pool = self.max_pool(ds_mask_in.reshape(-1, 1, h, w))
        mask_pool = mask_pool.view(b, l_t, 1, mask_pool.shape[-2], mask_pool.shape[-1])
        local_feat = self.feat_prop_module(local_feat, ds_flows[0], ds_flows[1],
                                           torch.cat([ds_mask_in, ds_mask_updated], dim=2),
                                           interpolation)
        enc_feat = torch.cat((local_feat, ref_feat), dim=1)
        trans_feat = self.ss(enc_feat.view(-1, c, h, w), b, (h, w))
        trans_feat = self.transformers(trans_feat, (h, w),
                                       mask_pool.permute(0, 1, 3, 4, 2).contiguous(),
                                       t_dilation=t_dilation)
        enc_feat = enc_feat + self.sc(trans_feat, t, (h, w)).view(b, t, -1, h, w)
        output = self.decoder(enc_feat[:, :l_t].reshape(-1, c, h, w))
        return torch.tanh(output).view(b, l_t, 3, ori_h, ori_w)

    @staticmethod
    def _quarter_flow(flow, b, n, h, w):
        if n == 0:  # a single local frame has no flow to propagate along
            return flow.new_zeros(b, 0, 2, h, w)
        _, _, _, ori_h, ori_w = flow.shape
        small = F.interpolate(flow.reshape(-1, 2, ori_h, ori_w), scale_factor=1 / 4,
                              mode="bilinear", align_corners=False)
        return small.view(b, n, 2, h, w) / 4.0


# --------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------

class ProPainterNetworks(nn.Module):
    """The three networks under the prefixes the parity state uses (``raft.``,
    ``flow_complete.``, ``propainter.``)."""

    def __init__(self, raft: RAFT, flow_complete: RecurrentFlowCompleteNet,
                 propainter: InpaintGenerator):
        super().__init__()
        self.raft = raft
        self.flow_complete = flow_complete
        self.propainter = propainter


@dataclass(frozen=True)
class NetworkKwargs:
    """Constructor kwargs in the authors' names, per network; ``arch`` gives the widths."""

    raft: dict
    flow_complete: dict
    propainter: dict


def official_kwargs() -> NetworkKwargs:
    return NetworkKwargs(
        raft={"small": False, "mixed_precision": False, "alternate_corr": False,
              "arch": OFFICIAL_ARCH["raft"]},
        flow_complete={"arch": OFFICIAL_ARCH["flow_complete"]},
        propainter={"init_weights": True, "arch": OFFICIAL_ARCH["propainter"]})


def build(kwargs: NetworkKwargs | None = None) -> ProPainterNetworks:
    """All three networks, in eval mode; ``kwargs`` None = the released configuration.
    ``model_path`` kwargs are ignored: weights are loaded by the stage, strictly."""
    kwargs = kwargs or official_kwargs()
    drop = {"model_path"}
    nets = ProPainterNetworks(
        RAFT(**{k: v for k, v in kwargs.raft.items() if k not in drop}),
        RecurrentFlowCompleteNet(**{k: v for k, v in kwargs.flow_complete.items()
                                    if k not in drop}),
        InpaintGenerator(**{k: v for k, v in kwargs.propainter.items() if k not in drop}))
    return nets.eval()


def kwargs_from_config(config: dict) -> NetworkKwargs:
    """Kwargs from a parity ``config.json`` (``networks``: tiny_kwargs + extra arch) or from
    a plain ``{"raft": {...arch}, "flow_complete": {...}, "propainter": {...}}``."""
    if "networks" in config:
        found = {}
        for net in config["networks"]:
            extra = net.get("extra_tiny_kwargs", {})
            found[net["name"]] = {**net.get("tiny_kwargs", {}),
                                  **({"arch": extra["arch"]} if "arch" in extra else {})}
        raft_kwargs = {k: v for k, v in found["raft"].items()
                       if k in ("small", "mixed_precision", "alternate_corr", "dropout",
                                "corr_levels", "corr_radius", "arch")}
        return NetworkKwargs(raft_kwargs, found["flow_complete"], found["propainter"])
    arch = {"raft": config.get("raft", {}),
            "flow_complete": config.get("flow_complete", config.get("flowcomp", {})),
            "propainter": config.get("propainter", {})}
    base = official_kwargs()
    return NetworkKwargs({**base.raft, "arch": {**OFFICIAL_ARCH["raft"], **arch["raft"]}},
                         {"arch": {**OFFICIAL_ARCH["flow_complete"], **arch["flow_complete"]}},
                         {**base.propainter,
                          "arch": {**OFFICIAL_ARCH["propainter"], **arch["propainter"]}})
