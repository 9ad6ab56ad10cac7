"""The tape's real resolution: how much detail a capture actually holds.

A 720x480 capture of a VHS tape holds about 360x240 of detail: the capture card
oversampled it. Restoring from the real resolution is faster and better (the 4x model
sees the detail scale it was trained on). We measure, per axis, how much of the
spectrum's upper half carries energy compared with the band below it: an image
upsampled 2x has almost none there."""
from __future__ import annotations

import numpy as np

RATIO_EMPTY = 0.06  # upper/lower band energy below which the upper band is empty


def band_ratio(luma: np.ndarray, axis: int) -> float:
    """Energy in (N/2, N] over (N/4, N/2] of the spectrum along ``axis`` (N = Nyquist)."""
    signal = luma - luma.mean(axis=axis, keepdims=True)
    window = np.hanning(signal.shape[axis]).reshape([-1 if a == axis else 1 for a in range(2)])
    power = np.abs(np.fft.rfft(signal * window, axis=axis)) ** 2
    power = power.mean(axis=1 - axis)
    n = len(power)
    lower = power[n // 4:n // 2].sum()
    upper = power[n // 2:].sum()
    return float(upper / max(lower, 1e-9))


def native_size(frames: list[np.ndarray], interlaced: bool) -> tuple[int, int]:
    """(width, height) of the detail the frames hold; fields count for interlaced frames."""
    height, width = frames[0].shape[:2]
    lumas = [f.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) for f in frames]
    if interlaced:
        lumas = [luma[0::2] for luma in lumas]  # one field: the real vertical sampling
        height //= 2
    scale_x = _factor(lumas, axis=1)
    scale_y = _factor(lumas, axis=0)
    return _even(width // scale_x), _even(height // scale_y)


def _factor(lumas: list[np.ndarray], axis: int) -> int:
    ratio = float(np.median([band_ratio(luma, axis) for luma in lumas]))
    return 2 if ratio < RATIO_EMPTY else 1


def _even(value: int) -> int:
    return value - value % 2
