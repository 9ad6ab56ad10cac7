"""Temporal smoothing of predicted chroma along optical flow, and the flicker it removes.

DDColor colours each frame on its own, so the same object's a/b drift from frame to frame
(flicker). Within a clip (one shot) the smoother blends each frame's predicted a/b with the
previous smoothed a/b carried along the motion: a recursive (causal) filter, so it needs no
future frames and holds one previous frame. Where the flow is not trusted (the carried
lightness disagrees with this frame's, or the motion leaves the image) the frame keeps its
own prediction, so occlusions and new objects do not smear.

Flicker is measured as the mean |a/b change| between consecutive frames along the same
flow, over the trusted pixels, in Lab units.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

LIGHTNESS_TOLERANCE = 4.0   # L units (0..100) a carried pixel may differ by and be trusted


@functools.lru_cache(maxsize=4)
def _grid(height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.dstack([xs, ys])


def carry(image: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``image`` sampled (bilinear) at ``positions`` (H, W, 2) x, y."""
    return cv2.remap(image, positions, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


@dataclass
class Motion:
    """Where each pixel of the current frame was in the previous one, and whether to trust it."""

    positions: np.ndarray   # (H, W, 2) float32
    trusted: np.ndarray     # (H, W) bool


class FlowTracker:
    """DIS optical flow from each frame to the one before it, on 8-bit lightness. One per
    clip: OpenCV's DIS object keeps buffers and must not be shared between threads."""

    def __init__(self, tolerance: float = LIGHTNESS_TOLERANCE):
        self.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        self.tolerance = tolerance

    def motion(self, lightness: np.ndarray, previous: np.ndarray) -> Motion:
        flow = self.dis.calc(to_8bit(lightness), to_8bit(previous), None)
        height, width = lightness.shape
        positions = _grid(height, width) + flow
        inside = ((positions[..., 0] >= 0) & (positions[..., 0] <= width - 1)
                  & (positions[..., 1] >= 0) & (positions[..., 1] <= height - 1))
        agrees = np.abs(carry(previous, positions) - lightness) < self.tolerance
        return Motion(positions, inside & agrees)


def to_8bit(lightness: np.ndarray) -> np.ndarray:
    return np.clip(lightness * 2.55 + 0.5, 0, 255).astype(np.uint8)


class ChromaSmoother:
    """ab_out = ab + strength * trusted * (carried previous ab_out - ab), frame by frame.

    Also measures the flicker of its input and of its output along the same motion."""

    def __init__(self, strength: float, tolerance: float = LIGHTNESS_TOLERANCE):
        if not 0.0 <= strength < 1.0:
            raise ValueError(f"smoothing strength must be in [0, 1), not {strength}")
        self.strength = strength
        self.tracker = FlowTracker(tolerance)
        self.previous: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.flicker_in = FlickerMeter()
        self.flicker_out = FlickerMeter()

    def __call__(self, lightness: np.ndarray, ab: np.ndarray) -> np.ndarray:
        """The smoothed (H, W, 2) float32 ab of the next frame, given its L (H, W)."""
        if self.previous is None:
            smoothed = ab
        else:
            prev_l, prev_ab, prev_out = self.previous
            motion = self.tracker.motion(lightness, prev_l)
            carried = carry(prev_out, motion.positions)
            weight = (self.strength * motion.trusted).astype(np.float32)[..., None]
            smoothed = ab + weight * (carried - ab)
            self.flicker_in.add(ab, carry(prev_ab, motion.positions), motion.trusted)
            self.flicker_out.add(smoothed, carried, motion.trusted)
        self.previous = (lightness, ab, smoothed)
        return smoothed


class FlickerMeter:
    """Mean |ab_t - ab_{t-1} carried along the motion| over trusted pixels, averaged over
    the frame pairs seen."""

    def __init__(self):
        self.total = 0.0
        self.pairs = 0

    def add(self, ab: np.ndarray, carried: np.ndarray, trusted: np.ndarray) -> None:
        if trusted.any():
            self.total += float(np.abs(ab - carried)[trusted].mean())
            self.pairs += 1

    @property
    def value(self) -> float:
        return self.total / self.pairs if self.pairs else 0.0
