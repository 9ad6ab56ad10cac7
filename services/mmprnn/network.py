"""MMP-RNN and its MMP-Net prior, written here with the parameter names of the authors'
checkpoint (``official_keys.json``), so that their released file loads strictly.

Module attribute names (``cell.F_B1.rdb.dense_layers.0.conv`` ...) are the checkpoint's
keys; class names are ours. Beyond upstream there is one knob, ``mmpnet_base_width``: the
authors hard-code the MMP-Net widths (base 16); the parity fixtures scale them down.

The computation is upstream's, reorganised for speed without changing any result: the
parts of the cell that do not depend on the recurrent state (MMP-Net, first conv, MMAM,
the two down-sampling blocks) and the reconstruction of every output frame run batched
over frames, in groups of ``group`` frames (1 on a CPU, where batching only costs; more on
a GPU) so that memory stays bounded.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

OFFICIAL = {"n_features": 18, "n_blocks_a": 9, "n_blocks_b": 10, "past_frames": 2,
            "future_frames": 2, "activation": "gelu", "do_skip": True, "centralize": True,
            "normalize": True, "mmpnet_base_width": 16}

# Upstream's argparse namespace carries these too; they do not shape the network.
_IGNORED = {"model"}


def conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2)


def activation(name: str) -> nn.Module:
    table = {"relu": nn.ReLU, "gelu": nn.GELU, "elu": nn.ELU, "selu": nn.SELU,
             "celu": nn.CELU, "relu6": nn.ReLU6, "tanh": nn.Tanh, "prelu": nn.PReLU,
             "leakyrelu": lambda: nn.LeakyReLU(0.1)}
    if name.lower() not in table:
        raise ValueError(f"unknown activation '{name}' (known: {', '.join(sorted(table))})")
    return table[name.lower()]()


class DenseLayer(nn.Module):
    def __init__(self, in_channels: int, growth: int, act: str):
        super().__init__()
        self.conv = conv(in_channels, growth, 3)
        self.act = activation(act)

    def forward(self, x):
        return torch.cat((x, self.act(self.conv(x))), 1)


class RDB(nn.Module):
    """Residual dense block: dense layers, a 1x1 back to the input width, plus the input."""

    def __init__(self, in_channels: int, growth: int, num_layer: int, act: str = "gelu"):
        super().__init__()
        widths = [in_channels + i * growth for i in range(num_layer + 1)]
        self.dense_layers = nn.Sequential(*(DenseLayer(w, growth, act) for w in widths[:-1]))
        self.conv1x1 = conv(widths[-1], in_channels, 1)

    def forward(self, x):
        return self.conv1x1(self.dense_layers(x)) + x


class RDNet(nn.Module):
    """RDBs in sequence; all their outputs concatenated, fused by 1x1 then 3x3 (no residual)."""

    def __init__(self, in_channels: int, growth: int, num_layer: int, num_blocks: int,
                 act: str = "gelu"):
        super().__init__()
        self.RDBs = nn.ModuleList(RDB(in_channels, growth, num_layer, act)
                                  for _ in range(num_blocks))
        self.conv1x1 = conv(num_blocks * in_channels, in_channels, 1)
        self.conv3x3 = conv(in_channels, in_channels, 3)

    def forward(self, x):
        outs = []
        for block in self.RDBs:
            x = block(x)
            outs.append(x)
        return self.conv3x3(self.conv1x1(torch.cat(outs, 1)))


class DownRDB(nn.Module):
    def __init__(self, in_channels: int, growth: int, out_channels: int, act: str):
        super().__init__()
        self.rdb = RDB(in_channels, growth, 3, act)
        self.down_sampling = conv(in_channels, out_channels, 5, stride=2)

    def forward(self, x):
        return self.down_sampling(self.rdb(x))


# --- MMP-Net: the U-Net that estimates the motion-magnitude prior ----------------------

class DoubleConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True))

    def forward(self, x):
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x):
        return self.maxpool_conv(x)


class Up(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x, skip):
        x = self.up(x)
        dy = skip.shape[2] - x.shape[2]
        dx = skip.shape[3] - x.shape[3]
        # Odd sizes leave the smaller half of the gap on the left/top, as upstream does.
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], 1))


class OutConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        return self.conv(x)


class MMPNet(nn.Module):
    """Per-frame motion-magnitude prior in (0, 1); upstream's ``UNet`` (base width 16)."""

    def __init__(self, base_width: int = 16, n_classes: int = 1):
        super().__init__()
        b = base_width
        self.conv9x9 = nn.Conv2d(3, b, 9, padding=4)
        self.inc = DoubleConv(b, b)
        self.down1 = Down(b, 2 * b)
        self.down2 = Down(2 * b, 4 * b)
        self.down3 = Down(4 * b, 8 * b)
        self.down4 = Down(8 * b, 8 * b)
        self.up1 = Up(16 * b, 4 * b)
        self.up2 = Up(8 * b, 2 * b)
        self.up3 = Up(4 * b, b)
        self.up4 = Up(2 * b, b)
        self.refine = RDB(b, b // 2, 3, "gelu")
        self.outc = OutConv(b, n_classes)

    def forward(self, x):
        x1 = self.inc(self.conv9x9(x))
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x = self.up1(self.down4(x4), x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return torch.sigmoid(self.outc(self.refine(x)))


# --- MMP-RNN ---------------------------------------------------------------------------

class MMAM(nn.Module):
    """Motion-magnitude attention: scales features by (1 + f(prior))."""

    def __init__(self, n_feats: int):
        super().__init__()
        self.MMAM_conv0 = nn.Conv2d(1, n_feats // 2, 1)
        self.MMAM_conv1 = nn.Conv2d(n_feats // 2, n_feats, 1)

    def forward(self, x, mmp):
        scale = self.MMAM_conv1(F.leaky_relu(self.MMAM_conv0(mmp), 0.1))
        return x * (scale + 1)


class ChannelAttention(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1), nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.conv_du(F.adaptive_avg_pool2d(x, 1))


class Fusion(nn.Module):
    """Concatenated hidden states of a frame's neighbourhood -> one feature map."""

    def __init__(self, n_feats: int, frames: int):
        super().__init__()
        self.fusion = conv(frames * 5 * n_feats, 5 * n_feats, 1)
        self.ca = ChannelAttention(frames * 5 * n_feats)

    def forward(self, stacked):
        return self.fusion(self.ca(stacked))


class Cell(nn.Module):
    """The recurrent cell. ``encode`` is its state-free half (one call per frame, batched
    freely); ``step`` is the recurrence on (mid_t, mid_{t-1}, s_{t-1})."""

    def __init__(self, n_feats: int, n_blocks: int, act: str, mmpnet_base_width: int):
        super().__init__()
        f = n_feats
        self.F_B0 = conv(3, f, 5)
        self.MMAM1 = MMAM(f)
        self.F_B1 = DownRDB(f, f, 2 * f, act)
        self.F_B2 = DownRDB(2 * f, int(f * 3 / 2), 2 * f, act)
        self.F_R = RDNet(5 * f, 2 * f, 3, n_blocks, act)
        self.F_h = nn.Sequential(conv(5 * f, f, 3), RDB(f, f, 3, act), conv(f, f, 3))
        self.prior = MMPNet(mmpnet_base_width)

    def encode(self, x):
        out = self.MMAM1(self.F_B0(x), self.prior(x))
        return self.F_B2(self.F_B1(out))

    def step(self, mid, mid_last, s_last):
        h = self.F_R(torch.cat([mid, mid_last, s_last], 1))
        return h, self.F_h(h)


class Reconstructor(nn.Module):
    def __init__(self, n_feats: int, n_blocks: int):
        super().__init__()
        f = n_feats
        # Upstream builds this RDNet with its default activation, whatever para.activation is.
        self.D_Net = RDNet(5 * f, 2 * f, 3, n_blocks, "gelu")
        self.model = nn.Sequential(
            nn.ConvTranspose2d(5 * f, 2 * f, 3, stride=2, padding=1, output_padding=1),
            nn.ConvTranspose2d(2 * f, f, 3, stride=2, padding=1, output_padding=1),
            conv(f, 3, 5))

    def forward(self, x):
        return self.model(self.D_Net(x))


class MMPRNN(nn.Module):
    """Upstream ``model/MMPRNN.py:Model``: (B, T, 3, H, W) normalised frames -> outputs for
    the centre frames past_frames .. T-1-future_frames. The recurrent state starts at
    zero in every call. H and W must be multiples of 4 and at least 16."""

    def __init__(self, n_features=18, n_blocks_a=9, n_blocks_b=10, past_frames=2,
                 future_frames=2, activation="gelu", do_skip=True, centralize=True,
                 normalize=True, mmpnet_base_width=16):
        super().__init__()
        self.n_feats = n_features
        self.past_frames = past_frames
        self.future_frames = future_frames
        self.centralize = centralize
        self.normalize = normalize
        self.group = 1          # frames per batched call; more pays on a GPU, not a CPU
        self.cell = Cell(n_features, n_blocks_a, activation, mmpnet_base_width)
        self.recons = Reconstructor(n_features, n_blocks_b)
        self.fusion = Fusion(n_features, past_frames + 1 + future_frames)
        self.skip = nn.Conv2d(3, 3, 9, padding=4) if do_skip else None

    def forward(self, x):
        hs = [h for h, _, _ in self.cell_states(x)]
        return self.reconstruct(x, hs)

    def cell_states(self, x) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(h_t, s_t, mid_t) for every frame t of the chunk, in order."""
        batch, frames, _, height, width = x.shape
        check_size(height, width)
        state = (batch, self.n_feats, height // 4, width // 4)
        s = x.new_zeros(state)
        mid_last = x.new_zeros((batch, 2 * self.n_feats, height // 4, width // 4))
        for first in range(0, frames, self.group):
            mids = self.cell.encode(x[:, first:first + self.group].flatten(0, 1))
            for mid in mids.unflatten(0, (batch, -1)).unbind(1):
                h, s = self.cell.step(mid, mid_last, s)
                mid_last = mid
                yield h, s, mid

    def reconstruct(self, x, hs: list) -> torch.Tensor:
        span = self.past_frames + 1 + self.future_frames
        centres = range(self.past_frames, x.shape[1] - self.future_frames)
        outs = [self.reconstruct_group(x, hs, centres[i:i + self.group], span)
                for i in range(0, len(centres), self.group)]
        if not outs:
            return x.new_zeros((x.shape[0], 0, *x.shape[2:]))
        return torch.cat(outs, 1)

    def reconstruct_group(self, x, hs, centres, span):
        batch = x.shape[0]
        stacked = torch.cat([torch.cat(hs[i - self.past_frames:i - self.past_frames + span], 1)
                             for i in centres])
        out = self.recons(self.fusion(stacked))
        if self.skip is not None:
            centre_frames = torch.cat([x[:, i] for i in centres])
            out = out + self.skip(centre_frames)
        # Frames were stacked centre-major along the batch axis: (centre, batch) -> (batch, centre)
        return out.unflatten(0, (len(centres), batch)).transpose(0, 1)


def check_size(height: int, width: int) -> None:
    if height % 4 or width % 4 or height < 16 or width < 16:
        raise ValueError(f"MMP-RNN needs H and W multiples of 4 and at least 16, "
                         f"got {height}x{width}")


def build_mmprnn(**kwargs) -> MMPRNN:
    """The network from kwargs in the authors' names (upstream ``para`` attributes, plus
    ``mmpnet_base_width``); missing ones take the released checkpoint's values."""
    known = set(OFFICIAL) | _IGNORED
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"unknown MMP-RNN argument(s): {', '.join(unknown)}")
    args = {**OFFICIAL, **{k: v for k, v in kwargs.items() if k not in _IGNORED}}
    return MMPRNN(**args).eval()


def build_mmpnet(mmpnet_base_width: int = 16, n_channels: int = 3, n_classes: int = 1,
                 bilinear: bool = True) -> MMPNet:
    """The stand-alone MMP-Net (upstream ``UNet(n_channels, n_classes, bilinear)``).

    Upstream ignores n_channels (the first conv is always RGB) and only the bilinear
    variant is the released one."""
    if not bilinear:
        raise ValueError("only the bilinear MMP-Net (the released one) is implemented")
    return MMPNet(mmpnet_base_width, n_classes).eval()
