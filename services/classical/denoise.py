"""denoise/classical: motion-compensated temporal denoising, then a light spatial pass.

Each frame's neighbours up to two frames away are warped onto it by optical flow
(measured on smoothed luma, so that the noise does not steer it). Each warped pixel is
weighted by how well a small patch around it matches the frame, beyond what the noise
alone explains (a temporal non-local mean): pixels that were occluded, or whose motion
the flow missed, fall out of the average. The frame itself always counts. What noise is
left is then reduced spatially by OpenCV's non-local means, sized to that residual.

``strength`` is the noise sigma in 8-bit levels (default: estimated once per clip from its
first frame and the next one aligned to it, so the filter is the same over the clip and
does not flicker).
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Iterable, Iterator

import cv2
import numpy as np

from services.stagekit.stage import ClipInfo
from services.stagekit.parallel import PerThread, frame_workers, ordered_map
from services.stagekit.windowing import neighbourhoods

from .common import (ClassicalStage, from_work, grey8, log, luma, noise_sigma, to_eight,
                     worked)
from .flow import FlowEstimator, warp

RADIUS = 2
PATCH = 5            # patch side for the match between a warped neighbour and the frame
MATCH = 2.0          # patch distance, in noise variances, at which a neighbour's weight is 1/e
SPATIAL = 1.0        # spatial h, per sigma of residual noise
# 5x5 search rather than OpenCV's 21 (or 11): after the temporal average the residual is
# weak and local; bench/quality.py scores 7 +0.1 dB above 11 at 1.6x the speed, and 5
# within -0.02..+0.04 dB of 7 at half the spatial pass's time.
SEARCH = 5
# The colour's search 3x3: its residual noise is smoother still. bench/quality.py: +0.07 and
# +0.03 dB over 5x5 (cockatoo, bikes), chroma error within 0.002, 2/3 of the spatial pass's
# time; 1x1 (no search) loses 0.4 dB.
CHROMA_SEARCH = 3


@dataclass
class Item:
    image: np.ndarray
    grey: np.ndarray


class DenoiseStage(ClassicalStage):
    task = "denoise"
    window = (RADIUS, RADIUS)
    max_batch = 8
    params = ("strength",)

    def settings(self, info: ClipInfo) -> float | None:
        self.check_known(info)
        return self.param_float(info, "strength", None, 0.0, 100.0)

    def process(self, info: ClipInfo, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        sigma = self.settings(info)
        # DIS's fast preset: the patch test below rejects what the flow gets wrong, so the
        # medium preset's accuracy buys 0.1 dB (bench/quality.py) for 1.7x the time.
        make_flow = functools.partial(FlowEstimator, "fast", scale=min(1.0, 480 / info.width),
                                      smooth=1.0)
        flow = make_flow()
        items = (Item(image, flow.prepare(grey8(image))) for image in worked(frames))
        windows = neighbourhoods(items, RADIUS, RADIUS)
        first = next(windows, None)
        if first is None:
            return
        if sigma is None:
            sigma = clip_sigma(first, flow)
            log.info("%s clip %s: noise sigma %.2f (estimated)", self.name, info.clip_id, sigma)
        # Each frame is denoised from its own window alone: frames run side by side.
        flows = PerThread(make_flow)
        one = lambda window: delivered_one(denoise(window, flows.get(), sigma), info.pixel_format)
        yield from ordered_map(one, itertools.chain([first], windows),
                               frame_workers(info.width * info.height))


def delivered_one(image: np.ndarray, pixel_format: str) -> np.ndarray:
    """The denoised frame in the clip's format: the spatial pass's uint8 as it is."""
    if image.dtype == np.uint8:
        return image if pixel_format == "rgb24" else from_work(image.astype(np.float32), pixel_format)
    return from_work(image, pixel_format)


def clip_sigma(window: list[Item], flow: FlowEstimator) -> float:
    """The noise sigma of the clip, from its first frame and the next one warped onto it.

    Grain is spatially correlated, which a single-image estimator (built for white noise)
    reads as picture and underestimates, about by half for film-like grain; the
    difference of two aligned frames is twice the per-pixel noise variance whatever its
    spatial spectrum. Only the flattest half of the frame votes, through a median, so
    texture the flow misses does not count. A repeated frame (telecine, a freeze) repeats
    its noise too, so the single-image estimate stays the floor; it is all a one-frame
    clip has."""
    centre = window[RADIUS]
    other = next((item for item in window[RADIUS + 1:] if item is not centre), None)
    y = luma(centre.image)
    floor = noise_sigma(y)
    if other is None:
        return floor
    moved = luma(warp(other.image, flow(centre.grey, other.grey, y.shape)))
    smooth = cv2.GaussianBlur(y, (0, 0), 2.0)
    gradient = (np.abs(cv2.Sobel(smooth, cv2.CV_32F, 1, 0))
                + np.abs(cv2.Sobel(smooth, cv2.CV_32F, 0, 1)))
    flat = gradient <= np.median(gradient)
    difference = (moved - y)[flat]
    # A median absolute deviation of 0.6745 s is a normal's; the difference holds two.
    temporal = np.median(np.abs(difference - np.median(difference))) / (0.6745 * np.sqrt(2.0))
    return float(max(temporal, floor))


def denoise(window: list[Item], flow: FlowEstimator, sigma: float) -> np.ndarray:
    centre = window[RADIUS]
    image = centre.image
    if sigma < 0.5:
        return image
    shape = image.shape[:2]
    y = luma(image)
    total = image.copy()
    weight = np.ones(shape, np.float32)
    squared = np.ones(shape, np.float32)      # sum of squared weights: the noise left
    seen = {id(centre)}
    for other in window:
        if id(other) in seen:
            continue     # the clip's ends repeat a frame: it would count twice
        seen.add(id(other))
        moved = warp(other.image, flow(centre.grey, other.grey, shape))
        distance = cv2.blur((luma(moved) - y) ** 2, (PATCH, PATCH))
        # Two independent noisy samples differ by 2 sigma^2 on average.
        excess = np.maximum(distance / (sigma * sigma) - 2.0, 0.0)
        w = np.exp(-excess / MATCH).astype(np.float32)
        total += w[..., None] * moved
        weight += w
        squared += w * w
    out = total / weight[..., None]
    return spatial(out, sigma * np.sqrt(squared) / weight)


def spatial(image: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """Non-local means sized to the noise the temporal average left (its mean level).

    5x5 patches rather than OpenCV's default 3x3: grain is correlated over a few pixels,
    and smaller patches match its blobs instead of the picture."""
    level = float(np.mean(residual))
    if level < 0.75:
        return image
    h = SPATIAL * level
    # OpenCV's fastNlMeansDenoisingColored, step by step (bit for bit with equal searches):
    # Lab, then lightness and colour apart, so that the colour gets its own, smaller search.
    lab = cv2.cvtColor(to_eight(image), cv2.COLOR_LBGR2Lab)
    lightness = cv2.fastNlMeansDenoising(np.ascontiguousarray(lab[..., 0]), None, h, 5, SEARCH)
    colour = cv2.fastNlMeansDenoising(np.ascontiguousarray(lab[..., 1:]), None, h, 5,
                                      CHROMA_SEARCH)
    # uint8 out, as it comes: converting it to float32 and back would change nothing.
    return cv2.cvtColor(np.dstack([lightness, colour]), cv2.COLOR_Lab2LBGR)
