"""Optical flow and warping shared by the temporal stages (DIS flow from OpenCV).

A flow field ``f`` from image A to image B is (H, W, 2) float32 in pixels: the content at
``x`` in A is at ``x + f(x)`` in B. ``warp(B, f)`` therefore brings B onto A's grid.
"""
from __future__ import annotations

import functools

import cv2
import numpy as np

PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
           "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
           "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


class FlowEstimator:
    """DIS optical flow on uint8 luma, optionally at a reduced scale and on a smoothed copy.

    One estimator per clip: the OpenCV object keeps buffers and is not shared between
    threads (a service streams several clips at once)."""

    def __init__(self, preset: str = "medium", scale: float = 1.0, smooth: float = 0.0):
        self.dis = cv2.DISOpticalFlow_create(PRESETS[preset])
        self.scale = scale
        self.smooth = smooth

    def prepare(self, grey: np.ndarray) -> np.ndarray:
        """What ``__call__`` takes: compute once per frame and reuse for every pair."""
        if self.scale != 1.0:
            grey = cv2.resize(grey, None, fx=self.scale, fy=self.scale,
                              interpolation=cv2.INTER_AREA)
        if self.smooth > 0:
            grey = cv2.GaussianBlur(grey, (0, 0), self.smooth)
        return grey

    def __call__(self, a: np.ndarray, b: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Flow from prepared ``a`` to prepared ``b``, at full size ``shape`` (H, W)."""
        if a is b:
            return np.zeros((*shape, 2), np.float32)
        flow = self.dis.calc(a, b, None)
        if flow.shape[:2] != tuple(shape):
            sy, sx = shape[0] / flow.shape[0], shape[1] / flow.shape[1]
            flow = cv2.resize(flow, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
            flow[..., 0] *= sx
            flow[..., 1] *= sy
        return flow


@functools.lru_cache(maxsize=8)
def _grid(height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.dstack([xs, ys])


def positions(flow: np.ndarray) -> np.ndarray:
    """Where each pixel goes: x + f(x), as a float32 (H, W, 2) map for cv2.remap."""
    return _grid(*flow.shape[:2]) + flow


def warp(image: np.ndarray, flow: np.ndarray, border=cv2.BORDER_REPLICATE) -> np.ndarray:
    """Sample ``image`` at x + flow(x) (bilinear): bring it onto the flow's source grid."""
    return cv2.remap(image, positions(flow), None, cv2.INTER_LINEAR, borderMode=border)


def occlusion(forward: np.ndarray, backward: np.ndarray,
              alpha: float = 0.01, beta: float = 0.5) -> np.ndarray:
    """True where the forward flow is not confirmed by the backward flow (Sundaram et al.).

    A pixel that stays visible goes to x + F(x) and comes back with B there: F + B ~ 0.
    Occluded pixels (and flow errors) fail that, by a margin that grows with the motion."""
    back = warp(backward, forward)
    mismatch = np.sum((forward + back) ** 2, axis=2)
    allowed = alpha * (np.sum(forward ** 2, axis=2) + np.sum(back ** 2, axis=2)) + beta
    return mismatch > allowed


def outside(flow: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """True where x + flow(x) falls outside the image (nothing there to sample)."""
    height, width = flow.shape[:2]
    target = positions(flow)
    return ((target[..., 0] < -margin) | (target[..., 0] > width - 1 + margin)
            | (target[..., 1] < -margin) | (target[..., 1] > height - 1 + margin))
