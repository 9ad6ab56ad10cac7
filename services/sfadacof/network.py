"""The SF-AdaCoF network (``AdaCoFNet`` and its ``KernelEstimation``), written for this
project with the parameter names of the authors' checkpoint, and the AdaCoF operation in
plain PyTorch.

Upstream hard-codes the channel widths for a base width of 16; ``base_channels`` only
exists so the parity fixtures can use a tiny network with the same structure.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from services.stagekit.neural import config_kwargs, read_config

OFFICIAL_KWARGS = {"kernel_size": 5, "dilation": 1}
# Per-channel RGB means the authors subtract before the kernel estimator (no std division).
MEAN_RGB = (0.4631, 0.4352, 0.3990)
LEVELS = (1, 2, 3, 4, 5)


def _conv(cin: int, cout: int, size: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=size, stride=1, padding=size // 2)


def _upsample() -> nn.Upsample:
    return nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)


def basic(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(_conv(cin, cout), nn.ReLU(), _conv(cout, cout), nn.ReLU(),
                         _conv(cout, cout), nn.ReLU())


def flow_estimation(channels: int) -> nn.Sequential:
    return nn.Sequential(_conv(channels, channels), nn.ReLU(), _conv(channels, 1, size=1), nn.ReLU())


def upsample(channels: int) -> nn.Sequential:
    return nn.Sequential(_upsample(), _conv(channels, channels), nn.ReLU())


class KernelEstimation(nn.Module):
    """The Siamese U-Net: both frames share every encoder/decoder weight; each encoder level
    appends two frame-difference-gated flow maps to both branches before a learned pooling."""

    def __init__(self, kernel_size: int = 5, base_channels: int = 16):
        super().__init__()
        self.kernel_size = kernel_size
        c = base_channels
        widths = {level: c * 2 ** (level - 1) for level in LEVELS}  # after the flow maps
        for level in LEVELS:
            cin = 3 if level == 1 else widths[level - 1]
            feat = widths[level] - 2
            setattr(self, f"moduleConv{level}", basic(cin, feat))
            setattr(self, f"modulePool{level}",
                    nn.Conv2d(widths[level], widths[level], kernel_size=2, stride=2))
            for branch in ("FD", "pr", "ne"):
                setattr(self, f"flowconv{level}_{branch}", flow_estimation(feat))
        for level in (5, 4, 3, 2):
            cin = widths[5] if level == 5 else widths[level + 1]
            setattr(self, f"moduleDeconv{level}", basic(cin, widths[level]))
            setattr(self, f"moduleUpsample{level}", upsample(widths[level]))
        taps = kernel_size ** 2
        combined = 2 * widths[2]
        for side in ("1", "2"):
            setattr(self, f"moduleWeight{side}", self._head(combined, taps, nn.Softmax(dim=1)))
            setattr(self, f"moduleAlpha{side}", self._head(combined, taps))
            setattr(self, f"moduleBeta{side}", self._head(combined, taps))
        self.moduleOcclusion = nn.Sequential(
            _conv(combined, combined), nn.ReLU(), _conv(combined, combined), nn.ReLU(),
            _conv(combined, combined), nn.ReLU(), _upsample(), _conv(combined, 1), nn.Sigmoid())

    @staticmethod
    def _head(channels: int, taps: int, last: nn.Module | None = None) -> nn.Sequential:
        layers = [_conv(channels, channels), nn.ReLU(), _conv(channels, channels), nn.ReLU(),
                  _conv(channels, taps), nn.ReLU(), _upsample(), _conv(taps, taps)]
        return nn.Sequential(*layers, *([last] if last is not None else []))

    def forward(self, rfield0: torch.Tensor, rfield2: torch.Tensor):
        """(Weight1, Alpha1, Beta1, Weight2, Alpha2, Beta2, Occlusion) at the input size."""
        batch = rfield0.shape[0]
        # Both branches share weights, so they run as one batch of 2B.
        features = torch.cat([rfield0, rfield2], 0)
        skips = {}
        for level in LEVELS:
            skips[level] = self._encode(level, features)
            features = getattr(self, f"modulePool{level}")(skips[level])
        for level in (5, 4, 3, 2):
            features = getattr(self, f"moduleDeconv{level}")(features)
            features = getattr(self, f"moduleUpsample{level}")(features) + skips[level]
        combined = torch.cat([features[:batch], features[batch:]], 1)
        return tuple(getattr(self, name)(combined) for name in (
            "moduleWeight1", "moduleAlpha1", "moduleBeta1",
            "moduleWeight2", "moduleAlpha2", "moduleBeta2", "moduleOcclusion"))

    def _encode(self, level: int, features: torch.Tensor) -> torch.Tensor:
        """One encoder level for the stacked (prev, next) batch, flow maps appended."""
        conv = getattr(self, f"moduleConv{level}")(features)
        prev, nxt = conv.chunk(2, 0)
        gate = getattr(self, f"flowconv{level}_FD")(torch.abs(nxt - prev))
        flow_pr = getattr(self, f"flowconv{level}_pr")(prev) * gate
        flow_ne = getattr(self, f"flowconv{level}_ne")(nxt) * gate
        flows = torch.cat([flow_pr, flow_ne], 1)
        return torch.cat([conv, torch.cat([flows, flows], 0)], 1)


def adacof(frame: torch.Tensor, weight: torch.Tensor, offset_i: torch.Tensor,
           offset_j: torch.Tensor, dilation: int) -> torch.Tensor:
    """The AdaCoF operation exactly as the authors' CUDA kernel computes it.

    ``frame`` is already replication-padded by (F-1)*d/2. Offsets are truncated toward zero
    (the kernel's ``(int)`` cast), so negative fractional offsets extrapolate from rows
    a and a+1 instead of interpolating from floor; each corner index is clamped to the
    padded frame on its own. Taps are accumulated k-major in the kernel's float order.
    """
    batch, channels, h_in, w_in = frame.shape
    _, taps, height, width = weight.shape
    size = round(taps ** 0.5)
    flat = frame.reshape(batch, channels, h_in * w_in)
    rows = torch.arange(height, device=frame.device).view(1, height, 1)
    cols = torch.arange(width, device=frame.device).view(1, 1, width)
    out = None
    for k in range(size):
        for l in range(size):
            t = k * size + l
            sample = _bilinear_tap(flat, offset_i[:, t], offset_j[:, t],
                                   rows + k * dilation, cols + l * dilation, h_in, w_in)
            term = weight[:, t:t + 1] * sample
            out = term if out is None else out + term
    return out


def _bilinear_tap(flat: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                  rows: torch.Tensor, cols: torch.Tensor, h_in: int, w_in: int) -> torch.Tensor:
    """One tap: the four clamped corners around (rows + alpha, cols + beta), truncation-based."""
    batch, channels, _ = flat.shape
    whole_i, whole_j = torch.trunc(alpha), torch.trunc(beta)
    frac_i, frac_j = (alpha - whole_i).unsqueeze(1), (beta - whole_j).unsqueeze(1)
    row0 = rows + whole_i.long()
    col0 = cols + whole_j.long()
    r0, r1 = row0.clamp(0, h_in - 1) * w_in, (row0 + 1).clamp(0, h_in - 1) * w_in
    c0, c1 = col0.clamp(0, w_in - 1), (col0 + 1).clamp(0, w_in - 1)
    shape = (batch, channels) + tuple(alpha.shape[1:])

    def corner(index: torch.Tensor) -> torch.Tensor:
        index = index.reshape(batch, 1, -1).expand(batch, channels, -1)
        return flat.gather(2, index).view(shape)

    keep_i, keep_j = 1 - frac_i, 1 - frac_j
    return (corner(r0 + c0) * keep_i * keep_j + corner(r1 + c0) * frac_i * keep_j
            + corner(r0 + c1) * keep_i * frac_j + corner(r1 + c1) * frac_i * frac_j)


def normalize(frame: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN_RGB, dtype=frame.dtype, device=frame.device).view(1, 3, 1, 1)
    return frame - mean


def pad_to_multiple(frame: torch.Tensor, multiple: int = 32) -> torch.Tensor:
    """Reflect-pad at the bottom, then on the right, to a multiple of 32 (as the authors)."""
    height, width = frame.shape[-2:]
    if height % multiple:
        frame = F.pad(frame, (0, 0, 0, multiple - height % multiple), mode="reflect")
    if width % multiple:
        frame = F.pad(frame, (0, multiple - width % multiple, 0, 0), mode="reflect")
    return frame


def min_side(multiple: int = 32) -> int:
    """The smallest height/width the reflect padding accepts (pad must be < size)."""
    return multiple // 2 + 1


class AdaCoFNet(nn.Module):
    """frame1 = V * AdaCoF(frame0) + (1 - V) * AdaCoF(frame2), eval-mode forward.

    The kernel estimator runs in its own parameters' dtype (half on CUDA, say) while the
    padding, the AdaCoF op and the blend stay in the frames' dtype, because truncating
    offsets is discontinuous and half precision would move samples across it."""

    def __init__(self, kernel_size: int = 5, dilation: int = 1, base_channels: int = 16):
        super().__init__()
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.kernel_pad = int(((kernel_size - 1) * dilation) / 2.0)
        self.get_kernel = KernelEstimation(kernel_size, base_channels)

    def forward(self, frame0: torch.Tensor, frame2: torch.Tensor) -> torch.Tensor:
        return self.trace(frame0, frame2)["out"]

    def trace(self, frame0: torch.Tensor, frame2: torch.Tensor) -> dict[str, torch.Tensor]:
        """The output and the intermediates the parity fixtures record."""
        if frame0.shape != frame2.shape:
            raise ValueError(f"frame sizes do not match: {tuple(frame0.shape)} "
                             f"vs {tuple(frame2.shape)}")
        height, width = frame0.shape[-2:]
        frame0, frame2 = pad_to_multiple(frame0), pad_to_multiple(frame2)
        kernels = self.estimate(frame0, frame2)
        pad = [self.kernel_pad] * 4
        padded0, padded2 = F.pad(frame0, pad, mode="replicate"), F.pad(frame2, pad, mode="replicate")
        weight1, alpha1, beta1, weight2, alpha2, beta2, occlusion = kernels
        warped1 = adacof(padded0, weight1, alpha1, beta1, self.dilation)
        warped2 = adacof(padded2, weight2, alpha2, beta2, self.dilation)
        out = occlusion * warped1 + (1 - occlusion) * warped2
        names = ("Weight1", "Alpha1", "Beta1", "Weight2", "Alpha2", "Beta2", "Occlusion")
        return {"out": out[:, :, :height, :width], "padded_frame0": padded0,
                "padded_frame2": padded2, "adacof1": warped1, "adacof2": warped2,
                **{f"kernel_{name}": value for name, value in zip(names, kernels)}}

    def estimate(self, frame0: torch.Tensor, frame2: torch.Tensor) -> tuple[torch.Tensor, ...]:
        dtype = next(self.get_kernel.parameters()).dtype
        kernels = self.get_kernel(normalize(frame0).to(dtype), normalize(frame2).to(dtype))
        return tuple(kernel.to(frame0.dtype) for kernel in kernels)


def build_network(kernel_size: int = 5, dilation: int = 1, base_channels: int = 16) -> AdaCoFNet:
    """AdaCoFNet from the authors' argparse names; the defaults are the released model's."""
    return AdaCoFNet(kernel_size=kernel_size, dilation=dilation, base_channels=base_channels)


def kwargs_from_arch(arch: dict) -> dict:
    """Network kwargs from a parity ``config.json`` (tiny kwargs plus the scratch-only
    ``base_channels``) or from a plain JSON object of kwargs."""
    return config_kwargs(arch)


def load_arch(arch: Path | str | dict | None) -> dict:
    """Kwargs from an --arch JSON file (or its parsed contents); None is the official model."""
    return dict(OFFICIAL_KWARGS) if arch is None else kwargs_from_arch(read_config(arch))
