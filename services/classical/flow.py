"""Optical flow and warping shared by the temporal stages (DIS flow from OpenCV).

A flow field ``f`` from image A to image B is (H, W, 2) float32 in pixels: the content at
``x`` in A is at ``x + f(x)`` in B. ``warp(B, f)`` therefore brings B onto A's grid.
"""
from __future__ import annotations

import functools

import cv2
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

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

    def __call__(self, a: np.ndarray, b: np.ndarray, shape: tuple[int, int],
                 initial: np.ndarray | None = None) -> np.ndarray:
        """Flow from prepared ``a`` to prepared ``b``, at full size ``shape`` (H, W).

        ``initial`` (a flow field of any size, in its own pixels) is where DIS starts, at
        its coarsest level, instead of zero: its pyramid alone loses motions larger than
        a few patches there (see ``search``)."""
        if a is b:
            return np.zeros((*shape, 2), np.float32)
        if initial is not None:
            initial = resized(initial, a.shape[:2])
        flow = self.dis.calc(a, b, initial)
        return resized(flow, shape) if flow.shape[:2] != tuple(shape) else flow


def resized(flow: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``flow`` on a grid of ``shape`` (H, W), its vectors in that grid's pixels."""
    sy, sx = shape[0] / flow.shape[0], shape[1] / flow.shape[1]
    flow = cv2.resize(flow, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    flow[..., 0] *= sx
    flow[..., 1] *= sy
    return flow


def search(a: np.ndarray, b: np.ndarray, radius: tuple[int, int], box: int = 3,
           penalty: float = 0.2) -> np.ndarray:
    """Flow from ``a`` to ``b`` by exhaustive block matching over whole-pixel shifts up to
    ``radius`` (x, y): meant for thumbnails (some 40 pixels wide), as a seed for DIS.

    DIS refines from zero by gradient descent, so a fast object (a vehicle crossing a
    fifth of the frame between two frames) falls into whatever nearer shift looks alike;
    trying every shift cannot miss it. The cost is the mean absolute difference over
    ``box`` x ``box`` pixels, plus ``penalty`` levels per pixel of shift so that flat
    areas, where every shift ties, keep still rather than take the first shift tried."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    height, width = a.shape
    rx, ry = radius
    padded = cv2.copyMakeBorder(b, ry, ry, rx, rx, cv2.BORDER_REPLICATE)
    shifted = sliding_window_view(padded, (height, width))        # (2ry+1, 2rx+1, H, W)
    cost = np.abs(shifted - a).reshape(-1, height * width)
    # One box filter over all shifts at once, a pass per direction, each on a stack of
    # the cost maps along which no map runs into the next: (shifts * H, W) for the
    # horizontal pass, (H, shifts * W) for the vertical one.
    cost = cv2.blur(cost.reshape(-1, width), (box, 1), borderType=cv2.BORDER_REPLICATE)
    cost = cost.reshape(-1, height, width).transpose(1, 0, 2).reshape(height, -1)
    cost = cv2.blur(np.ascontiguousarray(cost), (1, box), borderType=cv2.BORDER_REPLICATE)
    cost = cost.reshape(height, -1, width)                        # (H, shifts, W)
    dy, dx = np.mgrid[-ry:ry + 1, -rx:rx + 1].reshape(2, -1)
    cost += (penalty * (np.abs(dx) + np.abs(dy))).astype(np.float32)[None, :, None]
    best = cost.argmin(axis=1)
    return np.dstack([dx[best], dy[best]]).astype(np.float32)


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
