"""How noisy a clip is: one estimator for every part that asks (the classical denoiser and
analog restorer, RVRT's noise level, the orchestrator's analysis), so they agree.

Immerkaer's operator measures white noise; it is what RVRT was trained on (additive white
Gaussian noise at a given sigma), so for that network it is also the right quantity.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import cv2
import numpy as np

ANALYSIS_KEY = "noise_sigma"      # ClipInfo.analysis: the orchestrator's measurement, text
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


def noise_sigma(y: np.ndarray) -> float:
    """Standard deviation of white noise in a luma image (Immerkaer's operator).

    The operator cancels smooth content; texture and edges would still inflate a plain
    mean, so only the flattest half of the image (by gradient) votes, through a median."""
    y = y.astype(np.float32)
    response = np.abs(cv2.filter2D(y, -1, _NOISE_KERNEL, borderType=cv2.BORDER_REFLECT))
    # Flatness is judged on a smoothed copy, so the noise itself does not pick the voters.
    smooth = cv2.GaussianBlur(y, (0, 0), 2.0)
    gradient = (np.abs(cv2.Sobel(smooth, cv2.CV_32F, 1, 0))
                + np.abs(cv2.Sobel(smooth, cv2.CV_32F, 0, 1)))
    flat = gradient[1:-1, 1:-1] <= np.median(gradient[1:-1, 1:-1])
    votes = response[1:-1, 1:-1][flat]
    if votes.size == 0:
        return 0.0
    # |N(0, 36 s^2)| has median 0.6745 * 6 s.
    return float(np.median(votes) / (0.6745 * 6.0))


def frame_sigma(frame: np.ndarray) -> float:
    """The noise sigma per colour channel of an RGB frame (uint8, or float in [0, 1]), in
    8-bit levels: the mean over R, G and B, as a network trained on noise added to each
    channel reads it (luma would average independent channel noise down by a third)."""
    rgb = frame.astype(np.float32) * (255.0 if frame.dtype != np.uint8 else 1.0)
    return float(np.mean([noise_sigma(rgb[..., c]) for c in range(3)]))


def clip_sigma(frames: Iterable[np.ndarray]) -> float:
    """The median of the frames' noise sigmas (8-bit levels): one level for a clip, so a
    filter sized by it does not flicker."""
    values = [frame_sigma(frame) for frame in frames]
    return float(np.median(values)) if values else 0.0


def analysed_sigma(analysis: Mapping[str, bytes]) -> float | None:
    """The orchestrator's measured sigma from a clip header's analysis, if it sent one."""
    raw = analysis.get(ANALYSIS_KEY)
    if raw is None:
        return None
    try:
        value = float(raw.decode() if isinstance(raw, bytes) else raw)
    except ValueError:
        return None
    return value if np.isfinite(value) and value >= 0 else None
