"""Plain-PyTorch operations the three networks share: warping along a flow, the
forward-backward consistency check, RAFT's all-pairs correlation lookup.

Nothing here is compiled: the modulated deformable convolution comes from
``torchvision.ops.deform_conv2d`` (CPU and CUDA kernels), and RAFT's optional CUDA
correlation (``alternate_corr``) is never used by the authors' inference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_grid(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(H, W, 2) absolute pixel coordinates, channel 0 = x."""
    ys, xs = torch.meshgrid(torch.arange(height, device=like.device),
                            torch.arange(width, device=like.device), indexing="ij")
    return torch.stack((xs, ys), dim=2).to(like.dtype)


def flow_warp(x: torch.Tensor, flow: torch.Tensor, interpolation: str = "bilinear") -> torch.Tensor:
    """Backward-warp ``x`` (N, C, H, W) by ``flow`` (N, H, W, 2) in pixels, zero padding.

    The normalisation divides by max(size - 1, 1) with align_corners=True, as the authors
    do; the hard decisions downstream (nearest sampling, the >0.1 threshold) depend on
    these exact float operations."""
    _, _, height, width = x.shape
    moved = pixel_grid(height, width, x) + flow
    grid_x = 2.0 * moved[:, :, :, 0] / max(width - 1, 1) - 1.0
    grid_y = 2.0 * moved[:, :, :, 1] / max(height - 1, 1) - 1.0
    grid = torch.stack((grid_x, grid_y), dim=3)
    return F.grid_sample(x, grid, mode=interpolation, padding_mode="zeros", align_corners=True)


def length_sq(x: torch.Tensor) -> torch.Tensor:
    return torch.sum(torch.square(x), dim=1, keepdim=True)


def fb_consistent(flow_fw: torch.Tensor, flow_bw: torch.Tensor,
                  alpha1: float = 0.01, alpha2: float = 0.5) -> torch.Tensor:
    """1 where following ``flow_fw`` then ``flow_bw`` comes back near the start."""
    flow_bw_warped = flow_warp(flow_bw, flow_fw.permute(0, 2, 3, 1))
    diff = flow_fw + flow_bw_warped
    threshold = alpha1 * (length_sq(flow_fw) + length_sq(flow_bw_warped)) + alpha2
    return (length_sq(diff) < threshold).to(flow_fw)


def binarise(mask: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    return (mask > threshold).to(mask)


def coords_grid(batch: int, height: int, width: int, device) -> torch.Tensor:
    """(N, 2, H, W) pixel coordinates, channel 0 = x."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device),
                            torch.arange(width, device=device), indexing="ij")
    return torch.stack((xs, ys), dim=0).float()[None].repeat(batch, 1, 1, 1)


def bilinear_sampler(img: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Sample ``img`` at pixel ``coords`` (..., 2 = x, y) with align_corners=True."""
    height, width = img.shape[-2:]
    xgrid, ygrid = coords.split([1, 1], dim=-1)
    xgrid = 2 * xgrid / (width - 1) - 1
    ygrid = 2 * ygrid / (height - 1) - 1
    return F.grid_sample(img, torch.cat([xgrid, ygrid], dim=-1), align_corners=True)


class CorrBlock:
    """RAFT's all-pairs correlation pyramid and its local lookup.

    The lookup offsets are laid out with the x-offset varying slowest (RAFT builds them
    with meshgrid(dy, dx) and reads them as (x, y)); the update block's first conv was
    trained on that order."""

    def __init__(self, fmap1: torch.Tensor, fmap2: torch.Tensor, num_levels: int = 4,
                 radius: int = 4):
        self.num_levels = num_levels
        self.radius = radius
        batch, dim, ht, wd = fmap1.shape
        corr = torch.matmul(fmap1.view(batch, dim, ht * wd).transpose(1, 2),
                            fmap2.view(batch, dim, ht * wd))
        corr = corr / torch.sqrt(torch.tensor(dim).float())
        corr = corr.reshape(batch * ht * wd, 1, ht, wd)
        self.pyramid = [corr]
        for _ in range(num_levels - 1):
            corr = F.avg_pool2d(corr, 2, stride=2)
            self.pyramid.append(corr)
        r = radius
        steps = torch.linspace(-r, r, 2 * r + 1, device=fmap1.device)
        offsets = torch.stack(torch.meshgrid(steps, steps, indexing="ij"), dim=-1)
        self.delta = offsets.view(1, 2 * r + 1, 2 * r + 1, 2)

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        coords = coords.permute(0, 2, 3, 1)
        batch, h1, w1, _ = coords.shape
        centre = coords.reshape(batch * h1 * w1, 1, 1, 2)
        out = []
        for level, corr in enumerate(self.pyramid):
            sampled = bilinear_sampler(corr, centre / 2 ** level + self.delta)
            out.append(sampled.view(batch, h1, w1, -1))
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous().float()
