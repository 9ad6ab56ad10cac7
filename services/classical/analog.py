"""analog/classical: deinterlace, remove tape and film impulses, reduce flicker.

One streaming pass, each step a generator over the previous one:

1. Deinterlacing (``field_order`` tff or bff) to the field rate, every field at its true
   vertical position. Missing lines get bwdif's decision rule applied to motion-compensated
   neighbouring fields: the temporal estimate (the two opposite-parity fields warped onto
   this one by optical flow) is trusted exactly as far as the warped fields and this
   field's own rows confirm it; elsewhere the spatial estimate (a 4-tap interpolator, with
   the neighbours' high frequencies on moving edges) wins. Where the flow is right this
   weaves full vertical detail even under motion, where yadif and bwdif fall back to
   interpolation. (bwdif's spatial interlacing check is left out: with motion
   compensation it costs quality.) One flow estimate per pair of consecutive fields serves
   both ways, and the weave works on field planes (one parity's rows, contiguous).
2. Working resolution (``size``): area resampling once the frames are progressive.
3. Impulses (dropouts, dirt, scratches): a pixel that differs from both motion-compensated
   neighbours, in the same direction, while they agree with each other, and whose value
   is nowhere around it in either (not a moving edge the flow missed by a pixel), is
   replaced by their average (a motion-aware temporal median).
   VHS dropouts (one-line streaks, vhs.py) are filled from the same neighbours. Before
   this, jittered lines are straightened; after the flicker, the chroma's delay and bleed
   are undone: each VHS repair only where its damage is measured.
4. Flicker: each frame's luminance mean and contrast are pulled to the temporal mean of
   its neighbours', which keeps fades (linear over the window) but removes frame-to-frame
   pumping. The mean, not the median: pumping is independent from frame to frame, and
   the mean of seven frames estimates the steady level with less error (bench/quality.py:
   +3 to +6 dB over the median); a clip never spans a cut, so no outlier frame is there
   to reject.
"""
from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass
from typing import Iterable, Iterator

import cv2
import numpy as np

from services.stagekit.parallel import PerThread, frame_workers, ordered_map
from services.stagekit.stage import ClipInfo
from services.stagekit.windowing import neighbourhoods

from .common import (ClassicalStage, delivered, grey8, log, luma, mapped, noise_sigma,
                     worked)
from .flow import FlowEstimator, positions, warp
from .vhs import fill_dropouts, mend_colour, straighten_lines

FIELD_ORDERS = ("progressive", "tff", "bff")
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
            images = straighten_lines(images, info.clip_id)
            images = remove_impulses(images, info.clip_id)
        if settings.deflicker:
            images = deflicker(images)
        if settings.clean:
            images = mend_colour(images, info.clip_id)
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

# The filters reach four frame rows up and down: two rows of a field. The weave works on
# field planes (one parity's rows, contiguous) padded by repeating their end rows, so that
# every row offset is a contiguous slice, and a real row of a field stays one.
PAD = 2


@dataclass
class Field:
    parity: int          # 0: the frame's even rows (top field), 1: its odd rows
    rows: np.ndarray     # its own rows, a padded plane
    fill: np.ndarray     # the other parity's rows, interpolated from its own, padded
    sums: tuple[np.ndarray, np.ndarray]   # the own rows 1, and 3, frame rows either side
                                          # of each missing row, summed
    bob: np.ndarray      # rows and fill interleaved, RGBA: what neighbours warp
    grey: np.ndarray     # prepared for the flow estimator


@dataclass
class Planes:
    """A field (warped onto another) as that field's padded missing and own planes."""
    missing: np.ndarray
    own: np.ndarray


@dataclass
class Pair:
    """Two consecutive fields, each warped onto the other."""
    first: Field
    second: Field
    onto_first: Planes
    onto_second: Planes


def deinterlace(frames: Iterable[np.ndarray], top_first: bool) -> Iterator[np.ndarray]:
    """Two progressive frames per interlaced frame, one per field, in time order."""
    # Fields one 60th of a second apart move little: the coarsest DIS preset at full size
    # is as accurate here as 'medium' at half size, and faster (bench/quality.py). Its
    # patches 6 pixels apart instead of 4 take a third off the flow's time, for -0.08 to
    # +0.02 dB.
    flow = FlowEstimator("ultrafast")
    flow.dis.setPatchStride(6)
    # Motion compensation (flow and warps, all in OpenCV, which lets go of the GIL) runs
    # on a worker thread one pair of fields ahead of the weave: on two idle cores, a third
    # off the time. One worker per clip: DIS runs there alone (its object is not to be
    # shared between threads), and the pairs come out in order.
    pairs = ordered_map(lambda two: compensate(*two, flow),
                        itertools.pairwise(fields(frames, top_first, flow)), workers=1, ahead=1)
    last = None
    for pair in pairs:
        before = last.onto_second if last else itself(pair.first)
        yield weave(pair.first, before, pair.onto_first)
        last = pair
    if last:
        yield weave(last.second, last.onto_second, itself(last.second))


def fields(frames: Iterable[np.ndarray], top_first: bool,
           flow: FlowEstimator) -> Iterator[Field]:
    order = (0, 1) if top_first else (1, 0)
    for frame in frames:
        for parity in order:
            yield split(frame, parity, flow)


def split(frame: np.ndarray, parity: int, flow: FlowEstimator) -> Field:
    """One field of the frame: its rows kept, the rows between them interpolated."""
    rows = pad(frame[parity::2])
    up, down = neighbour_shifts(parity)
    at = functools.partial(field_rows, count=missing_count(frame.shape[0], parity))
    sums = (at(rows, up) + at(rows, down), at(rows, up - 1) + at(rows, down + 1))
    fill = cv2.addWeighted(sums[0], SPATIAL[0], sums[1], -SPATIAL[1], 0)
    bob = np.empty_like(frame)
    bob[parity::2] = frame[parity::2]
    bob[1 - parity::2] = fill
    # RGBA because cv2.remap has a vectorised path for four channels, not three: twice
    # as fast, the padding channel included.
    return Field(parity, rows, pad(fill), sums, cv2.cvtColor(bob, cv2.COLOR_RGB2RGBA),
                 flow.prepare(grey8(bob)))


def pad(plane: np.ndarray) -> np.ndarray:
    return cv2.copyMakeBorder(plane, PAD, PAD, 0, 0, cv2.BORDER_REPLICATE)


def missing_count(height: int, parity: int) -> int:
    """How many rows of the other parity a field of this parity misses."""
    return (height - (1 - parity) + 1) // 2


def neighbour_shifts(parity: int) -> tuple[int, int]:
    """Where, in the field's own rows, the rows just above and below its k-th missing row
    are: rows k + up and k + down (missing rows lie below own rows for the top field)."""
    return (0, 1) if parity == 0 else (-1, 0)


def field_rows(plane: np.ndarray, shift: int, count: int) -> np.ndarray:
    """Rows k + shift of a padded field plane, for k in 0 .. count - 1."""
    start = PAD + shift
    return plane[start:start + count]


def compensate(first: Field, second: Field, flow: FlowEstimator) -> Pair:
    """Each field warped onto the other by one flow estimate: the flow back is the
    reverse of the flow forward, within 0.02 dB of estimating both (bench/quality.py),
    since fields a 60th of a second apart move smoothly."""
    forward = flow(first.grey, second.grey, first.bob.shape[:2])
    return Pair(first, second, warped(second.bob, positions(forward), first.parity),
                warped(first.bob, positions(-forward), second.parity))


def warped(bob: np.ndarray, where: np.ndarray, parity: int) -> Planes:
    """``bob`` sampled at ``where``, as planes for a field of this parity."""
    image = cv2.cvtColor(cv2.remap(bob, where, None, cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REPLICATE), cv2.COLOR_RGBA2RGB)
    return Planes(pad(image[1 - parity::2]), pad(image[parity::2]))


def itself(field: Field) -> Planes:
    """The field as its own neighbour (at the clip's ends), unwarped."""
    return Planes(field.fill, field.rows)


def weave(cur: Field, prev: Planes, nxt: Planes) -> np.ndarray:
    """The centre field as a frame: bwdif's rule applied to motion-compensated neighbours.

    The missing rows of this field are real rows of the fields before and after it. Warped
    onto this one by optical flow, their average is the temporal estimate; it is trusted
    as far as the warped fields agree with each other and with this field's own rows
    (yadif's temporal differences), and the spatial estimate is clamped to that range.

    Names as in bwdif, all on the missing rows: c and e the own rows above and below, d
    the temporal estimate, b and f the temporal estimates two frame rows up and down."""
    count = missing_count(cur.bob.shape[0], cur.parity)
    up, down = neighbour_shifts(cur.parity)
    at = functools.partial(field_rows, count=count)
    c, e = at(cur.rows, up), at(cur.rows, down)
    temporal = cv2.addWeighted(prev.missing, 0.5, nxt.missing, 0.5, 0)
    d, b, f = at(temporal, 0), at(temporal, -1), at(temporal, 1)
    changed = cv2.absdiff(at(prev.missing, 0), at(nxt.missing, 0))
    prev_off = cv2.absdiff(prev.own, cur.rows)
    next_off = cv2.absdiff(nxt.own, cur.rows)
    diff = cv2.max(cv2.max(at(prev_off, up) + at(prev_off, down),
                           at(next_off, up) + at(next_off, down)), changed)
    diff *= 0.5
    # bwdif and yadif then widen that range where d is a vertical extremum between c and
    # e (their spatial interlacing check, which yadif's 'nospatial' modes skip). On
    # motion-compensated fields that only lets the spatial estimate stray where the
    # temporal one is right: skipping it gains 0.01 and 0.04 dB (bench/quality.py) and
    # a third of the weave's time.
    near, far = cur.sums
    half = HIGH[2] / 2
    detailed = cv2.addWeighted(near, LOW[0], far, -LOW[1], 0)
    detailed += cv2.addWeighted(d, HIGH[0] / 2, b + f, -HIGH[1] / 2, 0)
    detailed += cv2.addWeighted(at(temporal, -2), half, at(temporal, 2), half, 0)
    # cv2's masked copy: numpy's (where=, np.where) is twenty times slower on a mask this
    # irregular, slower than all the rest of the weave.
    edge = cv2.compare(cv2.absdiff(c, e), changed, cv2.CMP_GT)
    spatial = cv2.copyTo(detailed, edge, at(cur.fill, 0).copy())
    out = np.empty((*cur.bob.shape[:2], 3), np.float32)
    out[cur.parity::2] = cur.rows[PAD:-PAD]
    out[1 - cur.parity::2] = cv2.min(cv2.max(spatial, d - diff), d + diff)
    return out


# ---- 3. impulses -----------------------------------------------------------------------

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
