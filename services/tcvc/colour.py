"""Colour spaces and resizing exactly as TCVC's scripts use them, without scikit-image.

The authors convert with ``skimage.color`` (sRGB, D65, 2 degrees) in float64, resize frames
with ``skimage.transform.resize`` (order 1, mode 'reflect', anti-aliasing, no clipping) and
feed the backbone their own float32 torch Lab->RGB. These are the same formulas in torch, so
they run on the model's device too.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423],
                         [0.212671, 0.715160, 0.072169],
                         [0.019334, 0.119193, 0.950227]])
RGB_FROM_XYZ = np.linalg.inv(XYZ_FROM_RGB)
WHITE_D65 = (0.95047, 1.0, 1.08883)
# The rounded inverse the authors hard-code for the backbone's reference image.
AUTHORS_RGB_FROM_XYZ = np.array([[3.24048134, -0.96925495, 0.05564664],
                                 [-1.53715152, 1.87599, -0.20404134],
                                 [-0.49853633, 0.04155593, 1.05731107]])


def rgb2lab(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3) RGB in [0, 1] -> (..., 3) Lab (L in [0, 100]), as skimage.color.rgb2lab."""
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = lin @ torch.as_tensor(XYZ_FROM_RGB.T, dtype=rgb.dtype, device=rgb.device)
    xyz = xyz / torch.as_tensor(WHITE_D65, dtype=rgb.dtype, device=rgb.device)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=0) ** (1 / 3), 7.787 * xyz + 16.0 / 116.0)
    x, y, z = f.unbind(-1)
    return torch.stack((116.0 * y - 16.0, 500.0 * (x - y), 200.0 * (y - z)), dim=-1)


def lab2rgb(lab: torch.Tensor) -> torch.Tensor:
    """(..., 3) Lab -> (..., 3) RGB clipped to [0, 1], as skimage.color.lab2rgb."""
    L, a, b = lab.unbind(-1)
    y = (L + 16.0) / 116.0
    xyz = torch.stack((a / 500.0 + y, y, (y - b / 200.0).clamp(min=0)), dim=-1)
    xyz = torch.where(xyz > 0.2068966, xyz ** 3, (xyz - 16.0 / 116.0) / 7.787)
    xyz = xyz * torch.as_tensor(WHITE_D65, dtype=lab.dtype, device=lab.device)
    lin = xyz @ torch.as_tensor(RGB_FROM_XYZ.T, dtype=lab.dtype, device=lab.device)
    rgb = torch.where(lin > 0.0031308, 1.055 * lin.clamp(min=0) ** (1 / 2.4) - 0.055, lin * 12.92)
    return rgb.clamp(0, 1)


def backbone_lab2rgb(lab: torch.Tensor) -> torch.Tensor:
    """(n, 3, h, w) Lab -> RGB in [0, 1] the way the authors feed the backbone (their
    ``tensor_lab2rgb``: rounded matrix, no white scaling of Y, in the tensor's dtype)."""
    L, a, b = lab.unbind(1)
    y = (L + 16.0) / 116.0
    xyz = torch.stack((a / 500.0 + y, y, (y - b / 200.0).clamp(min=0)), dim=-1)
    xyz = torch.where(xyz > 0.2068966, xyz ** 3, (xyz - 16.0 / 116.0) / 7.787)
    xyz = xyz * torch.tensor([WHITE_D65[0], 1.0, WHITE_D65[2]], dtype=lab.dtype, device=lab.device)
    lin = xyz @ torch.as_tensor(AUTHORS_RGB_FROM_XYZ, dtype=lab.dtype, device=lab.device)
    rgb = torch.where(lin > 0.0031308, 1.055 * lin.clamp(min=0) ** (1 / 2.4) - 0.055, lin * 12.92)
    return rgb.clamp(0, 1).permute(0, 3, 1, 2)


def unit_rgb(frame: np.ndarray, device=None) -> torch.Tensor:
    """A frame as float64 RGB in [0, 1], (H, W, 3); grey (H, W) or (H, W, 1) is spread."""
    arr = np.asarray(frame)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    t = torch.from_numpy(np.ascontiguousarray(arr)).to(device)
    return t.double() / 255.0 if arr.dtype == np.uint8 else t.double()


def to_pixels(rgb: torch.Tensor, dtype) -> np.ndarray:
    """RGB in [0, 1] -> the clip's pixel format; uint8 truncates, as the authors save PNGs."""
    if np.dtype(dtype) == np.uint8:
        return (rgb.clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()
    return rgb.clamp(0, 1).to(torch.float16).cpu().numpy()


# --------------------------------------------------------------------------- skimage resize

def _mirror_index(idx: np.ndarray, n: int) -> np.ndarray:
    """scipy.ndimage 'mirror' (numpy 'reflect'): d c b | a b c d | c b a."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.abs(idx) % period
    return np.where(idx >= n, period - idx, idx)


def _gaussian_axis(img: torch.Tensor, axis: int, sigma: float) -> torch.Tensor:
    """scipy.ndimage.gaussian_filter1d (truncate 4) with mode 'mirror' along ``axis``."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 / sigma ** 2 * x ** 2)
    weights /= weights.sum()
    n = img.shape[axis]
    out = torch.zeros_like(img)
    for offset, weight in zip(range(-radius, radius + 1), weights):
        idx = torch.from_numpy(_mirror_index(np.arange(n) + offset, n))
        out += weight * img.index_select(axis, idx.to(img.device))
    return out


def _zoom_axis(n: int, size: int):
    """Per output index along one axis: the two input indices and their weights, computed
    as scipy.ndimage.zoom(order=1, grid_mode=True, mode='mirror') does, rounding included."""
    coord = (np.arange(size, dtype=np.float64) + 0.5) * (n / size) - 0.5
    coord = np.where(coord < 0, -coord, coord)  # scipy mirrors a coordinate below 0 only
    lo = np.floor(coord)
    w0 = 1.0 - (coord - lo)
    w1 = 1.0 - w0
    lo = lo.astype(np.int64)
    return _mirror_index(lo, n), _mirror_index(lo + 1, n), w0, w1


def skimage_resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """skimage.transform.resize(img (H, W, C), size, order=1, mode='reflect',
    anti_aliasing=True, preserve_range=True, clip=False) in float64. Upscaling is exact to
    the last bit (the uint8 truncation that follows needs it); the anti-aliasing blur of a
    downscale may differ by rounding."""
    img = img.double()
    for axis, out in enumerate(size):
        factor = img.shape[axis] / out
        if factor > 1:
            img = _gaussian_axis(img, axis, (factor - 1) / 2)
    y0, y1, wy0, wy1 = (torch.from_numpy(v).to(img.device) for v in _zoom_axis(img.shape[0], size[0]))
    x0, x1, wx0, wx1 = (torch.from_numpy(v).to(img.device) for v in _zoom_axis(img.shape[1], size[1]))
    wy0, wy1 = wy0[:, None, None], wy1[:, None, None]
    wx0, wx1 = wx0[None, :, None], wx1[None, :, None]
    rows0, rows1 = img[y0], img[y1]
    # scipy sums the neighbours in this order, each as value * y-weight * x-weight.
    return (rows0[:, x0] * wy0 * wx0 + rows0[:, x1] * wy0 * wx1
            + rows1[:, x0] * wy1 * wx0 + rows1[:, x1] * wy1 * wx1)


def center_pad(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The authors' 'CenterPad' (a resize and centre crop, despite the name) of a uint8
    (H, W, 3) frame to ``size``; the resize is truncated to uint8 as theirs is."""
    height, width = size
    h0, w0 = frame.shape[:2]
    if h0 / w0 == height / width:
        if h0 == height:
            return frame
        return _resized_uint8(frame, (height, int(w0 * height / h0)))
    if h0 / w0 > height / width:
        resized = _resized_uint8(frame, (int(h0 * width / w0), int(w0 * width / w0)))
        top = (resized.shape[0] - height) // 2
        return resized[top:top + height]
    resized = _resized_uint8(frame, (int(h0 * height / h0), int(w0 * height / h0)))
    left = (resized.shape[1] - width) // 2
    return resized[:, left:left + width]


def _resized_uint8(frame: np.ndarray, size) -> np.ndarray:
    out = skimage_resize(torch.from_numpy(np.ascontiguousarray(frame)), size).numpy()
    # astype(uint8) of a float array: truncation toward zero, wrapping outside [0, 255].
    return out.astype(np.int64).astype(np.uint8)


def chroma_spread(rgb: torch.Tensor) -> float:
    """Standard deviation of a and b over a frame (Lab units): ~0 for black-and-white and
    for tinted monochrome (sepia), typically > 10 for colour footage."""
    step = max(1, int(math.sqrt(rgb.shape[0] * rgb.shape[1] / 40000)))
    lab = rgb2lab(rgb[::step, ::step])
    return float(lab[..., 1:].reshape(-1, 2).std(dim=0).max())
