"""The resampling and activation ops of the StyleGAN2-ADA family, in plain PyTorch.

MAT's layers call ``bias_act``, ``upfirdn2d`` and ``conv2d_resample``. Upstream compiles
CUDA kernels for the first two but falls back to pure-PyTorch reference paths, which is
what runs on the CPU (and what the parity fixtures were made with). These are our own
versions of those reference paths, the same arithmetic on every device, so no custom
extension is ever built.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LRELU_ALPHA = 0.2
# The activations MAT uses, with the default gains that keep the activations' variance at 1.
ACTIVATION_GAINS = {"linear": 1.0, "lrelu": math.sqrt(2)}


def activation_gain(act: str) -> float:
    if act not in ACTIVATION_GAINS:
        raise ValueError(f"activation {act!r} is not one of {', '.join(ACTIVATION_GAINS)}")
    return ACTIVATION_GAINS[act]


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1, act: str = "linear",
             gain: float | None = None, clamp: float | None = None) -> torch.Tensor:
    """x + b (broadcast along ``dim``), then the activation, then times ``gain``.

    After the first new tensor, the steps work in place: these are the largest tensors
    of the network, and the passes over memory cost more than the arithmetic."""
    gain = activation_gain(act) if gain is None else float(gain)
    fresh = b is not None
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    if act == "lrelu":
        x = F.leaky_relu_(x, LRELU_ALPHA) if fresh else F.leaky_relu(x, LRELU_ALPHA)
        fresh = True
    if gain != 1:
        x = x.mul_(gain) if fresh else x * gain
        fresh = True
    if clamp is not None and clamp >= 0:
        x = x.clamp_(-clamp, clamp) if fresh else x.clamp(-clamp, clamp)
    return x


def setup_filter(taps=(1, 3, 3, 1)) -> torch.Tensor:
    """The 2-D low-pass filter used for every resampling: the outer product of ``taps``,
    normalised to unit DC gain (a 4x4 float32 tensor for the default [1, 3, 3, 1])."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up: int = 1, down: int = 1,
              padding=(0, 0, 0, 0), gain: float = 1) -> torch.Tensor:
    """Upsample by zero insertion, pad (negative crops), convolve with ``f``, downsample.

    ``padding`` is (x0, x1, y0, y1) in upsampled pixels, as upstream orders it."""
    batch, channels, height, width = x.shape
    px0, px1, py0, py1 = padding
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    if up > 1:
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(batch, channels, height * up, width * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0):x.shape[2] - max(-py1, 0), max(-px0, 0):x.shape[3] - max(-px1, 0)]
    # Convolution, not correlation: the filter is flipped (a no-op for symmetric taps).
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype).flip([0, 1])
    weight = f[None, None].repeat(channels, 1, 1, 1)
    x = F.conv2d(x, weight, groups=channels)
    return x[:, :, ::down, ::down]


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """2x upsampling with the low-pass filter, keeping the signal's magnitude."""
    fh, fw = f.shape
    padding = ((fw + up - 1) // 2, (fw - up) // 2, (fh + up - 1) // 2, (fh - up) // 2)
    return upfirdn2d(x, f, up=up, padding=padding, gain=up * up)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None,
                    up: int = 1, down: int = 1, padding: int = 0, groups: int = 1) -> torch.Tensor:
    """A correlation with ``w`` combined with up- or downsampling through ``f``.

    The three cases MAT's layers need, each computed as upstream does it: strided
    transpose convolution then filtering (up), filtering then strided convolution (down),
    and a plain padded convolution."""
    out_channels, in_per_group, kh, kw = w.shape
    fh, fw = (1, 1) if f is None else f.shape
    px0 = px1 = py0 = py1 = padding
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2
    if up > 1 and down == 1:
        return _transposed_up(x, w, f, up, groups, (px0, px1, py0, py1))
    if down > 1 and up == 1 and not (kh == 1 and kw == 1):
        x = upfirdn2d(x, f, padding=(px0, px1, py0, py1))
        return F.conv2d(x, w, stride=down, groups=groups)
    if up == 1 and down == 1 and px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return F.conv2d(x, w, padding=(py0, px0), groups=groups)
    raise ValueError(f"conv2d_resample: up={up} down={down} kernel {kh}x{kw} is not used by MAT")


def _transposed_up(x, w, f, up, groups, padding):
    out_channels, in_per_group, kh, kw = w.shape
    px0, px1, py0, py1 = padding
    if groups == 1:
        w = w.transpose(0, 1)
    else:
        w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
        w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
    px0 -= kw - 1
    px1 -= kw - up
    py0 -= kh - 1
    py1 -= kh - up
    pxt = max(min(-px0, -px1), 0)
    pyt = max(min(-py0, -py1), 0)
    # A transpose convolution computes a convolution: flip the kernel to keep correlation.
    x = F.conv_transpose2d(x, w.flip([2, 3]), stride=up, padding=(pyt, pxt), groups=groups)
    return upfirdn2d(x, f, padding=(px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt), gain=up * up)
