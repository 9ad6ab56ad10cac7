"""analog/classical: remove tape and film impulses, reduce flicker, on progressive frames.

Interlaced tapes reach it deinterlaced (the ``deinterlace`` task, deinterlace.py, runs
first). One streaming pass, each step a generator over the previous one:

1. Working resolution (``size``): area resampling, when the frames are not there yet.
2. Impulses (dropouts, dirt, scratches): a pixel that differs from both motion-compensated
   neighbours, in the same direction, while they agree with each other, and whose value
   is nowhere around it in either (not a moving edge the flow missed by a pixel), is
   replaced by their average (a motion-aware temporal median).
   VHS dropouts (one-line streaks, vhs.py) are filled from the same neighbours. Before
   this, jittered lines are straightened; after the flicker, the chroma's delay and bleed
   are undone: each VHS repair only where its damage is measured.
3. Flicker: each frame's luminance mean and contrast are pulled to the temporal mean of
   its neighbours', which keeps fades (linear over the window) but removes frame-to-frame
   pumping. The mean, not the median: pumping is independent from frame to frame, and
   the mean of seven frames estimates the steady level with less error (bench/quality.py:
   +3 to +6 dB over the median); a clip never spans a cut, so no outlier frame is there
   to reject.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Iterable, Iterator

import cv2
import numpy as np

from services.stagekit.parallel import PerThread, frame_workers, ordered_map
from services.stagekit.stage import ClipInfo
from services.stagekit.windowing import neighbourhoods

from .common import (ClassicalStage, delivered, grey8, log, luma, mapped, noise_sigma,
                     resample, worked)
from .flow import FlowEstimator, warp
from .vhs import fill_dropouts, mend_colour, straighten_lines

FLICKER_RADIUS = 3
# Levels by which a pixel must stand out from both motion-compensated neighbours to be an
# impulse. Below ~32 most detections on real and simulated tapes are noise, interlacing
# and flow error, whose repair blurs more than it mends: bench/quality.py's analog case
# scores 16 -> 32 at +1.7 dB on cockatoo and +1.9 on bikes, and a slow-pan tape +0.3 dB.
IMPULSE_FLOOR = 32.0
# Pixels around each that an impulse's value must be absent from, by the threshold, in
# both neighbours. Against no such test: -0.1 to +0.7 dB on the analog case, +8 to +10
# dB on clean footage (half the threshold: 0.3 dB more on the analog case, 1 to 5 dB
# less on clean footage).
IMPULSE_REACH = 5


@dataclass(frozen=True)
class AnalogSettings:
    size: tuple[int, int] | None
    clean: bool
    deflicker: bool


class AnalogStage(ClassicalStage):
    task = "analog"
    window = (1, FLICKER_RADIUS + 2)
    max_batch = 8
    params = ("size", "clean", "deflicker")

    def settings(self, info: ClipInfo) -> AnalogSettings:
        self.check_known(info)
        return AnalogSettings(
            size=self.param_size(info),
            clean=self.param_switch(info, "clean"),
            deflicker=self.param_switch(info, "deflicker"))

    def output_info(self, info: ClipInfo) -> ClipInfo:
        width, height = self.settings(info).size or (info.width, info.height)
        return info.replace(width=width, height=height)

    def process(self, info: ClipInfo, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        settings = self.settings(info)
        log.info("%s clip %s: working size %s, impulse removal %s, deflicker %s",
                 self.name, info.clip_id,
                 "x".join(map(str, settings.size)) if settings.size else "unchanged",
                 "on" if settings.clean else "off", "on" if settings.deflicker else "off")
        images = worked(frames)
        if settings.size and settings.size != (info.width, info.height):
            images = mapped(lambda image: resample(image, settings.size), images)
        if settings.clean:
            images = straighten_lines(images, info.clip_id)
            images = remove_impulses(images, info.clip_id)
        if settings.deflicker:
            images = deflicker(images)
        if settings.clean:
            images = mend_colour(images, info.clip_id)
        yield from delivered(images, info.pixel_format)


# ---- 2. impulses -----------------------------------------------------------------------

@dataclass
class Prepared:
    image: np.ndarray
    grey: np.ndarray


def remove_impulses(images: Iterable[np.ndarray], clip_id: str) -> Iterator[np.ndarray]:
    # 'fast' repairs within 0.05 dB of 'medium' at three times its speed (bench/quality.py).
    make_flow = functools.partial(FlowEstimator, "fast", smooth=1.0)
    flow = make_flow()
    items = (Prepared(image, flow.prepare(grey8(image))) for image in images)
    windows = neighbourhoods(items, 1, 1)
    first = next(windows, None)
    if first is None:
        return
    sigma = noise_sigma(luma(first[1].image))
    threshold = max(IMPULSE_FLOOR, 4.0 * sigma)
    log.info("analog/classical clip %s: noise %.1f, impulse threshold %.1f", clip_id, sigma,
             threshold)
    # Each frame is mended from its unmended neighbours alone: frames run side by side.
    flows = PerThread(make_flow)
    repaired_total = 0
    mend = lambda window: repair_impulses(*window, flows.get(), threshold)
    pixels = first[1].image.shape[0] * first[1].image.shape[1]
    for image, repaired in ordered_map(mend, itertools.chain([first], windows),
                                       frame_workers(pixels)):
        repaired_total += repaired
        yield image
    if repaired_total:
        log.info("analog/classical clip %s: %d impulse pixels repaired", clip_id,
                 repaired_total)


def repair_impulses(prev: Prepared, cur: Prepared, nxt: Prepared, flow: FlowEstimator,
                    threshold: float) -> tuple[np.ndarray, int]:
    if prev is cur and nxt is cur:
        return cur.image, 0
    # At the clip's ends the one neighbour there stands for both.
    prev, nxt = (nxt, nxt) if prev is cur else (prev, prev) if nxt is cur else (prev, nxt)
    shape = cur.image.shape[:2]
    p = warp(prev.image, flow(cur.grey, prev.grey, shape))
    n = p if nxt is prev else warp(nxt.image, flow(cur.grey, nxt.grey, shape))
    y, yp, yn = luma(cur.image), luma(p), luma(n)
    image, streaks = fill_dropouts(cur.image, p, n, y, yp, yn)
    if nxt is prev:
        # One neighbour confirms a dropout (a streak is one line), not an impulse.
        return image, streaks
    dp, dn = y - yp, y - yn
    smaller = np.minimum(np.abs(dp), np.abs(dn))
    impulse = ((dp * dn > 0) & (smaller > threshold)
               & (np.abs(yp - yn) < 0.5 * smaller) & aligned(smaller, threshold)
               & unmatched(y, yp, yn, threshold))
    count = int(impulse.sum())
    if count == 0:
        return image, streaks
    # Dirt and dropouts have soft rims below the threshold: grow the mask, then feather.
    mask = cv2.dilate(impulse.astype(np.uint8), np.ones((5, 5), np.uint8))
    weight = cv2.GaussianBlur(mask.astype(np.float32), (5, 5), 0)
    weight = np.maximum(weight, impulse)[..., None]
    return image + weight * ((p + n) / 2.0 - image), count + streaks


def unmatched(y: np.ndarray, yp: np.ndarray, yn: np.ndarray, threshold: float) -> np.ndarray:
    """Where a pixel's value is found nowhere near it in either neighbour.

    Optical flow a pixel or two off at a moving edge puts the value just beside, where
    the warped neighbours differ from it as much as from dirt: replacing those pixels by
    the neighbours' blurred average left clean bikes.mp4 at 41 dB against itself and
    cockatoo at 42 (50 and 50 with this test). Dirt and dropouts put a value that is
    nowhere around."""
    kernel = np.ones((IMPULSE_REACH, IMPULSE_REACH), np.uint8)
    high = cv2.max(cv2.dilate(yp, kernel), cv2.dilate(yn, kernel))
    low = cv2.min(cv2.erode(yp, kernel), cv2.erode(yn, kernel))
    return (y > high + threshold) | (y < low - threshold)


def aligned(smaller: np.ndarray, threshold: float) -> np.ndarray:
    """Where the neighbours' motion compensation held around a pixel.

    Where the flow failed (fast or non-rigid motion), whole areas differ from both warped
    neighbours and would all pass for impulses; a real impulse is small within an area
    that matches. Each pixel's mismatch, capped at the threshold so that an impulse
    weighs little, is averaged over 15x15: an impulse fills at most a third of that."""
    context = cv2.blur(np.minimum(smaller, threshold), (15, 15))
    return context < 0.4 * threshold


# ---- 3. flicker ------------------------------------------------------------------------

def deflicker(images: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    items = ((image, luma_stats(image)) for image in images)
    for window in neighbourhoods(items, FLICKER_RADIUS, FLICKER_RADIUS):
        image, (mean, spread) = window[FLICKER_RADIUS]
        target_mean = float(np.mean([stats[0] for _, stats in window]))
        target_spread = float(np.mean([stats[1] for _, stats in window]))
        gain = float(np.clip(target_spread / max(spread, 1.0), 0.85, 1.18))
        shift = float(np.clip(target_mean - mean, -20.0, 20.0))
        if abs(gain - 1.0) < 1e-3 and abs(shift) < 0.05:
            yield image
        else:
            yield (image - mean) * gain + (mean + shift)


def luma_stats(image: np.ndarray) -> tuple[float, float]:
    mean, spread = cv2.meanStdDev(luma(image))
    return float(mean[0, 0]), float(spread[0, 0])
