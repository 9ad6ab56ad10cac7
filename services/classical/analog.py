"""analog/classical: deinterlace, remove tape and film impulses, reduce flicker.

One streaming pass, each step a generator over the previous one:

1. Deinterlacing (``field_order`` tff or bff) to the field rate, every field at its true
   vertical position. Missing lines get bwdif's decision rule applied to motion-compensated
   neighbouring fields: the temporal estimate (the two opposite-parity fields warped onto
   this one by optical flow) is trusted exactly as far as the warped fields and this
   field's own rows confirm it; elsewhere the spatial estimate (a 4-tap interpolator, with
   the neighbours' high frequencies on moving edges) wins. Where the flow is right this
   weaves full vertical detail even under motion, where yadif and bwdif fall back to
   interpolation.
2. Working resolution (``size``): area resampling once the frames are progressive.
3. Impulses (dropouts, dirt, scratches): a pixel that differs from both motion-compensated
   neighbours, in the same direction, while they agree with each other, is replaced by
   their average (a motion-aware temporal median).
4. Flicker: each frame's luminance mean and contrast are pulled to the temporal mean of
   its neighbours', which keeps fades (linear over the window) but removes frame-to-frame
   pumping. The mean, not the median: pumping is independent from frame to frame, and
   the mean of seven frames estimates the steady level with less error (bench/quality.py:
   +3 to +6 dB over the median); a clip never spans a cut, so no outlier frame is there
   to reject.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Iterable, Iterator

import cv2
import numpy as np

from services.stagekit.stage import ClipInfo
from services.stagekit.windowing import neighbourhoods

from .common import (ClassicalStage, delivered, grey8, log, luma, mapped, noise_sigma,
                     worked)
from .flow import FlowEstimator, warp

FIELD_ORDERS = ("progressive", "tff", "bff")
FLICKER_RADIUS = 3


@dataclass(frozen=True)
class AnalogSettings:
    field_order: str
    size: tuple[int, int] | None
    clean: bool
    deflicker: bool

    @property
    def interlaced(self) -> bool:
        return self.field_order != "progressive"


class AnalogStage(ClassicalStage):
    task = "analog"
    window = (1, FLICKER_RADIUS + 2)
    max_batch = 8
    params = ("field_order", "size", "clean", "deflicker")

    def settings(self, info: ClipInfo) -> AnalogSettings:
        self.check_known(info)
        return AnalogSettings(
            field_order=self.param_choice(info, "field_order", FIELD_ORDERS),
            size=self.param_size(info),
            clean=self.param_switch(info, "clean"),
            deflicker=self.param_switch(info, "deflicker"))

    def param_size(self, info: ClipInfo) -> tuple[int, int] | None:
        value = info.params.get("size", "").strip().lower()
        if not value:
            return None
        match = re.fullmatch(r"(\d+)x(\d+)", value)
        if not match or not all(0 < int(v) <= 16384 for v in match.groups()):
            raise self.fail("size", info.params["size"], "WxH, e.g. 360x240")
        return int(match[1]), int(match[2])

    def output_info(self, info: ClipInfo) -> ClipInfo:
        settings = self.settings(info)
        width, height = settings.size or (info.width, info.height)
        factor = 2 if settings.interlaced else 1
        count = None if info.frame_count is None else info.frame_count * factor
        return info.replace(width=width, height=height, fps=info.fps * factor,
                            frame_count=count)

    def process(self, info: ClipInfo, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        settings = self.settings(info)
        log.info("%s clip %s: %s, working size %s, impulse removal %s, deflicker %s",
                 self.name, info.clip_id,
                 f"deinterlacing {settings.field_order} to the field rate"
                 if settings.interlaced else "progressive input",
                 "x".join(map(str, settings.size)) if settings.size else "unchanged",
                 "on" if settings.clean else "off", "on" if settings.deflicker else "off")
        images = worked(frames)
        if settings.interlaced:
            images = deinterlace(images, top_first=settings.field_order == "tff")
        if settings.size and settings.size != (info.width, info.height):
            images = mapped(lambda image: resample(image, settings.size), images)
        if settings.clean:
            images = remove_impulses(images, info.clip_id)
        if settings.deflicker:
            images = deflicker(images)
        yield from delivered(images, info.pixel_format)


def resample(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    shrinking = size[0] <= image.shape[1] and size[1] <= image.shape[0]
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrinking
                      else cv2.INTER_CUBIC)


# ---- 1. deinterlacing ------------------------------------------------------------------

# bwdif's filters (in 1/8192): a 4-tap vertical interpolator for the spatial estimate, and
# for moving edges a low-pass of this field plus the high-pass of the temporal neighbours.
SPATIAL = (5077 / 8192, 981 / 8192)
LOW = (4309 / 8192, 213 / 8192)
HIGH = (5570 / 8192, 3801 / 8192, 1016 / 8192)


@dataclass
class Field:
    parity: int          # 0: the frame's even rows (top field), 1: its odd rows
    bob: np.ndarray      # full height: the field's rows exact, the others interpolated
    grey: np.ndarray     # prepared for the flow estimator


def deinterlace(frames: Iterable[np.ndarray], top_first: bool) -> Iterator[np.ndarray]:
    """Two progressive frames per interlaced frame, one per field, in time order."""
    # Fields one 60th of a second apart move little: the coarsest DIS preset at full size
    # is as accurate here as 'medium' at half size, and faster (bench/quality.py).
    flow = FlowEstimator("ultrafast")
    for window in neighbourhoods(fields(frames, top_first, flow), 1, 1):
        yield weave(window, flow)


def fields(frames: Iterable[np.ndarray], top_first: bool,
           flow: FlowEstimator) -> Iterator[Field]:
    order = (0, 1) if top_first else (1, 0)
    for frame in frames:
        for parity in order:
            bob = spatial_fill(frame, parity)
            yield Field(parity, bob, flow.prepare(grey8(bob)))


def spatial_fill(frame: np.ndarray, parity: int) -> np.ndarray:
    """The field's own rows kept, the rows between them interpolated vertically."""
    out = frame.copy()
    height = frame.shape[0]
    count = missing_rows(height, parity).size
    padded = frame[edge_map(height)]
    c, e, c3, e3 = (shifted(padded, parity, count, k) for k in (-1, 1, -3, 3))
    out[1 - parity::2] = SPATIAL[0] * (c + e) - SPATIAL[1] * (c3 + e3)
    return out


def missing_rows(height: int, parity: int) -> np.ndarray:
    return np.arange(1 - parity, height, 2)


def around(rows: np.ndarray, height: int, offsets: tuple[int, ...]) -> list[np.ndarray]:
    """Row indices at the offsets, reflected at the frame's edges into rows of the same
    parity, so that a real row stays a real row."""
    out = []
    for offset in offsets:
        index = rows + offset
        index = np.where(index < 0, index + 2 * ((-index + 1) // 2), index)
        index = np.where(index >= height, index - 2 * ((index - height) // 2 + 1), index)
        out.append(np.clip(index, 0, height - 1))
    return out


EDGE = 4   # rows of padding: the filters reach four rows up and down


@functools.lru_cache(maxsize=16)
def edge_map(height: int) -> np.ndarray:
    """Rows -EDGE .. height+EDGE-1 as ``around`` reflects them: one gather pads a frame,
    and every row offset of the missing rows is then a strided view, not a copy."""
    return around(np.arange(-EDGE, height + EDGE), height, (0,))[0]


def shifted(padded: np.ndarray, parity: int, count: int, offset: int) -> np.ndarray:
    """Rows ``missing_rows + offset`` of the frame that ``padded`` pads."""
    start = 1 - parity + offset + EDGE
    return padded[start:start + 2 * count:2]


def weave(window: list[Field], flow: FlowEstimator) -> np.ndarray:
    """The centre field as a frame: bwdif's rule applied to motion-compensated neighbours.

    The missing rows of this field are real rows of the fields before and after it. Warped
    onto this one by optical flow, their average is the temporal estimate; it is trusted
    as far as the warped fields agree with each other and with this field's own rows
    (yadif's spatial check), and the spatial estimate is clamped to that range."""
    before, cur, after = window
    height = cur.bob.shape[0]
    shape = cur.bob.shape[:2]
    prev = warp(before.bob, flow(cur.grey, before.grey, shape))
    nxt = warp(after.bob, flow(cur.grey, after.grey, shape))
    count = missing_rows(height, cur.parity).size
    if count == 0:
        return cur.bob
    rows = edge_map(height)
    at = functools.partial(shifted, parity=cur.parity, count=count)
    prev, nxt, bob = prev[rows], nxt[rows], cur.bob[rows]
    c, e, c3, e3 = (at(bob, offset=k) for k in (-1, 1, -3, 3))
    p, n = at(prev, offset=0), at(nxt, offset=0)
    d = (p + n) / 2.0
    changed = np.abs(p - n)
    diff = np.maximum.reduce([
        changed / 2.0,
        (np.abs(at(prev, offset=-1) - c) + np.abs(at(prev, offset=1) - e)) / 2.0,
        (np.abs(at(nxt, offset=-1) - c) + np.abs(at(nxt, offset=1) - e)) / 2.0])
    b = (at(prev, offset=-2) + at(nxt, offset=-2)) / 2.0
    f = (at(prev, offset=2) + at(nxt, offset=2)) / 2.0
    high = np.maximum.reduce([d - e, d - c, np.minimum(b - c, f - e)])
    low = np.minimum.reduce([d - e, d - c, np.maximum(b - c, f - e)])
    diff = np.maximum.reduce([diff, low, -high])
    far = (at(prev, offset=-4) + at(nxt, offset=-4)
           + at(prev, offset=4) + at(nxt, offset=4)) / 2.0
    detailed = (LOW[0] * (c + e) - LOW[1] * (c3 + e3)
                + (HIGH[0] * d - HIGH[1] * (b + f) + HIGH[2] * far) / 2.0)
    spatial = np.where(np.abs(c - e) > changed, detailed,
                       SPATIAL[0] * (c + e) - SPATIAL[1] * (c3 + e3))
    out = cur.bob.copy()
    out[1 - cur.parity::2] = np.clip(spatial, d - diff, d + diff)
    return out


# ---- 3. impulses -----------------------------------------------------------------------

@dataclass
class Prepared:
    image: np.ndarray
    grey: np.ndarray


def remove_impulses(images: Iterable[np.ndarray], clip_id: str) -> Iterator[np.ndarray]:
    # 'fast' repairs within 0.05 dB of 'medium' at three times its speed (bench/quality.py).
    flow = FlowEstimator("fast", smooth=1.0)
    items = (Prepared(image, flow.prepare(grey8(image))) for image in images)
    threshold = None
    repaired_total = 0
    for prev, cur, nxt in neighbourhoods(items, 1, 1):
        if threshold is None:
            sigma = noise_sigma(luma(cur.image))
            threshold = max(16.0, 4.0 * sigma)
            log.info("analog/classical clip %s: noise %.1f, impulse threshold %.1f",
                     clip_id, sigma, threshold)
        image, repaired = repair_impulses(prev, cur, nxt, flow, threshold)
        repaired_total += repaired
        yield image
    if repaired_total:
        log.info("analog/classical clip %s: %d impulse pixels repaired", clip_id,
                 repaired_total)


def repair_impulses(prev: Prepared, cur: Prepared, nxt: Prepared, flow: FlowEstimator,
                    threshold: float) -> tuple[np.ndarray, int]:
    if prev is cur or nxt is cur:
        return cur.image, 0
    shape = cur.image.shape[:2]
    p = warp(prev.image, flow(cur.grey, prev.grey, shape))
    n = warp(nxt.image, flow(cur.grey, nxt.grey, shape))
    y, yp, yn = luma(cur.image), luma(p), luma(n)
    dp, dn = y - yp, y - yn
    smaller = np.minimum(np.abs(dp), np.abs(dn))
    impulse = ((dp * dn > 0) & (smaller > threshold)
               & (np.abs(yp - yn) < 0.5 * smaller) & aligned(smaller, threshold))
    count = int(impulse.sum())
    if count == 0:
        return cur.image, 0
    # Dirt and dropouts have soft rims below the threshold: grow the mask, then feather.
    mask = cv2.dilate(impulse.astype(np.uint8), np.ones((5, 5), np.uint8))
    weight = cv2.GaussianBlur(mask.astype(np.float32), (5, 5), 0)
    weight = np.maximum(weight, impulse)[..., None]
    return cur.image + weight * ((p + n) / 2.0 - cur.image), count


def aligned(smaller: np.ndarray, threshold: float) -> np.ndarray:
    """Where the neighbours' motion compensation held around a pixel.

    Where the flow failed (fast or non-rigid motion), whole areas differ from both warped
    neighbours and would all pass for impulses; a real impulse is small within an area
    that matches. Each pixel's mismatch, capped at the threshold so that an impulse
    weighs little, is averaged over 15x15: an impulse fills at most a third of that."""
    context = cv2.blur(np.minimum(smaller, threshold), (15, 15))
    return context < 0.4 * threshold


# ---- 4. flicker ------------------------------------------------------------------------

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
