"""The tape's real resolution: how much detail a capture actually holds.

A 720x480 capture of a VHS tape holds about 360x240 of detail: the capture card
oversampled it. Restoring from the real resolution is faster and better (the 4x model
sees the detail scale it was trained on).

The test, per axis: halve the picture and double it back, once on the pixel grid and
once shifted by one pixel. Content that was itself doubled from half the size survives
the round trip far better on its own grid than off it; natural detail does about equally
badly on both. Noise and compression that came after the doubling only blur the contrast,
so the threshold sits well between the two."""
from __future__ import annotations

import cv2
import numpy as np

GRID_RATIO = 0.72  # on-grid / off-grid round-trip error below which the axis is doubled


def round_trip_error(luma: np.ndarray, shift: int) -> float:
    """Mean squared error of halving then doubling the columns, starting at ``shift``."""
    luma = luma[:, shift:]
    width = luma.shape[1] // 2 * 2
    luma = luma[:, :width]
    half = cv2.resize(luma, (width // 2, luma.shape[0]), interpolation=cv2.INTER_AREA)
    back = cv2.resize(half, (width, luma.shape[0]), interpolation=cv2.INTER_LINEAR)
    return float(((luma - back)[:, 4:-4] ** 2).mean())


def grid_ratio(luma: np.ndarray, axis: int) -> float:
    """Near 1 for natural detail along ``axis``, well below for doubled content."""
    if axis == 0:
        luma = np.ascontiguousarray(luma.T)
    on, off = round_trip_error(luma, 0), round_trip_error(luma, 1)
    return min(on, off) / max(on, off, 1e-9)


def native_size(frames: list[np.ndarray], interlaced: bool) -> tuple[int, int]:
    """(width, height) of the detail the frames hold; fields count for interlaced frames."""
    height, width = frames[0].shape[:2]
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    lumas = [f.astype(np.float32) @ weights for f in frames]
    if interlaced:
        lumas = [luma[0::2] for luma in lumas]  # one field: the real vertical sampling
        height //= 2
    scale_x = _factor(lumas, axis=1)
    scale_y = _factor(lumas, axis=0)
    return _even(width // scale_x), _even(height // scale_y)


def _factor(lumas: list[np.ndarray], axis: int) -> int:
    ratio = float(np.median([grid_ratio(luma, axis) for luma in lumas]))
    return 2 if ratio < GRID_RATIO else 1


def _even(value: int) -> int:
    return value - value % 2
