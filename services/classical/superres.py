"""superres/classical: 2x or 4x (param ``scale``, default 4) by lanczos and iterative
back-projection.

The low-resolution frame is modelled as the area (box) downscale of the wanted one, the
model the orchestrator itself uses to find a tape's working resolution. Starting from a
lanczos upscale, each back-projection step downscales the estimate by that model and
spreads the difference to the input back up (Irani & Peleg, 1991), so the result is
consistent with the input while keeping lanczos's edges; a last clamp to the range of each
output pixel's input neighbourhood removes the ringing that lanczos and the back-projection
leave next to edges.

The steps run on the low-resolution grid: for an integer scale, the lanczos upscale
followed by the area downscale is one fixed separable filter there, so a step costs a
small convolution of the input's size, and the input with the summed correction is
upscaled once, by that lanczos: one resize at the output size (upscaling the correction
by a cubic of its own, then adding, costs 1.3x as much for +0.01 to +0.02 dB,
bench/quality.py).

Every output pixel depends on input pixels at most TILE_MARGIN away, so a large frame is
upscaled in tiles of ``tile`` input pixels (param, default TILE; 0: whole frames) with that
margin: the same result to float rounding, with a tile's temporaries instead of a 4x
frame's.
"""
from __future__ import annotations

import functools
import threading
from typing import Iterable, Iterator

import cv2
import numpy as np

from services.stagekit.parallel import frame_workers, ordered_map
from services.stagekit.stage import ClipInfo
from services.stagekit.tiling import tiled

from .common import ClassicalStage, from_work, log, to_work

SCALE = 4
SCALES = ("4", "2")
STEPS = 3
OVERSHOOT = 2.0   # 8-bit levels an output may leave its input neighbourhood's range by
TILE = 256        # input pixels a side of a tile
TILE_MARGIN = 24  # input pixels an output pixel reaches: lanczos 4 + 3 round trips + clamp


class SuperresStage(ClassicalStage):
    task = "superres"
    scale = SCALE
    window = (0, 0)
    max_batch = 4
    params = ("scale", "tile")

    def settings(self, info: ClipInfo) -> tuple[int, int]:
        self.check_known(info)
        return (int(self.param_choice(info, "scale", SCALES)),
                self.param_int(info, "tile", TILE, 0, 1 << 16))

    def output_info(self, info: ClipInfo) -> ClipInfo:
        factor, _ = self.settings(info)
        return info.replace(width=info.width * factor, height=info.height * factor)

    def process(self, info: ClipInfo, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        factor, tile = self.settings(info)
        log.info("%s clip %s: %dx%d -> %dx%d, lanczos + %d back-projection steps",
                 self.name, info.clip_id, info.width, info.height, info.width * factor,
                 info.height * factor, STEPS)

        def one(frame: np.ndarray) -> np.ndarray:
            if frame.dtype == np.uint8:
                work = lambda part: upscale_eight(part, factor)
            else:
                work = lambda part: from_work(upscale(to_work(part), factor), info.pixel_format)
            # A frame no larger than one tile with its margins holds no more than a tile
            # does: whole, it skips the margins' repeated work (a 360x240 frame: 13%).
            whole = frame.shape[0] * frame.shape[1] <= (tile + 2 * TILE_MARGIN) ** 2
            return tiled(work, frame, 0 if whole else tile, TILE_MARGIN, factor)
        # Every frame is upscaled alone: frames run side by side.
        yield from ordered_map(one, frames, frame_workers())


def upscale(image: np.ndarray, factor: int = SCALE) -> np.ndarray:
    estimate = back_projected(image, factor)
    size = estimate.shape[1::-1]
    kernel = np.ones((3, 3), np.uint8)
    low = cv2.resize(cv2.erode(image, kernel) - OVERSHOOT, size, interpolation=cv2.INTER_NEAREST)
    high = cv2.resize(cv2.dilate(image, kernel) + OVERSHOOT, size, interpolation=cv2.INTER_NEAREST)
    np.maximum(estimate, low, out=estimate)
    return np.minimum(estimate, high, out=estimate)


def upscale_eight(frame: np.ndarray, factor: int = SCALE) -> np.ndarray:
    """``upscale`` of a uint8 frame, rounded to uint8, bit for bit: the clamp's bounds are
    whole levels then, so clamping after rounding is the same as before, and it runs on
    uint8 at the output size (a quarter of the float32 traffic).

    The output-size temporaries are the thread's own, reused from frame to frame: fresh
    ones cost more in page faults (a 1440x960 float32 frame is 4,000 pages touched anew)
    than the lanczos costs."""
    height, width = frame.shape[:2]
    size = (width * factor, height * factor)
    scratch = _scratch((size[1], size[0]) + frame.shape[2:])
    upscaled = back_projected(frame.astype(np.float32), factor, out=scratch.upscaled)
    estimate = cv2.convertScaleAbs(cv2.max(upscaled, 0.0, dst=upscaled))   # common.to_eight, in place
    kernel = np.ones((3, 3), np.uint8)
    low = cv2.resize(cv2.subtract(cv2.erode(frame, kernel), (OVERSHOOT,) * 4), size,
                     dst=scratch.low, interpolation=cv2.INTER_NEAREST)
    high = cv2.resize(cv2.add(cv2.dilate(frame, kernel), (OVERSHOOT,) * 4), size,
                      dst=scratch.high, interpolation=cv2.INTER_NEAREST)
    return cv2.min(cv2.max(estimate, low, dst=estimate), high, dst=estimate)


class _Scratch:
    def __init__(self, shape: tuple[int, ...]):
        self.upscaled = np.empty(shape, np.float32)
        self.low = np.empty(shape, np.uint8)
        self.high = np.empty(shape, np.uint8)


_SCRATCH = threading.local()


def _scratch(shape: tuple[int, ...]) -> _Scratch:
    """The calling thread's output-size temporaries for frames (or tiles) of ``shape``: a
    tiled frame has a few tile shapes, each kept; a new clip's sizes replace the old."""
    held = _SCRATCH.__dict__.setdefault("by_shape", {})
    if shape not in held:
        if len(held) >= 9:      # a 3x3 grid's tile shapes at most
            held.clear()
        held[shape] = _Scratch(shape)
    return held[shape]


def back_projected(image: np.ndarray, factor: int, out: np.ndarray | None = None) -> np.ndarray:
    """The lanczos upscale of float32 ``image`` corrected by the back-projection steps
    (not yet clamped), into ``out`` if given."""
    height, width = image.shape[:2]
    taps = round_trip_taps(factor)
    seen = cv2.sepFilter2D(image, -1, taps, taps, borderType=cv2.BORDER_REPLICATE)
    corrected = image.copy()
    for _ in range(STEPS):
        error = image - seen
        corrected += error
        seen += cv2.sepFilter2D(error, -1, taps, taps, borderType=cv2.BORDER_REPLICATE)
    # The correction is upscaled by the same lanczos as the input, so both go up at once.
    return cv2.resize(corrected, (width * factor, height * factor), dst=out,
                      interpolation=cv2.INTER_LANCZOS4)


@functools.cache
def round_trip_taps(factor: int = SCALE) -> np.ndarray:
    """The low-resolution filter equal to the lanczos upscale by ``factor`` then the area
    downscale: read off as the round trip's response to an impulse (cv2's own kernels,
    exactly)."""
    impulse = np.zeros((1, 17), np.float32)
    impulse[0, 8] = 1.0
    up = cv2.resize(impulse, (17 * factor, factor), interpolation=cv2.INTER_LANCZOS4)
    response = cv2.resize(up, (17, 1), interpolation=cv2.INTER_AREA)[0]
    support = np.flatnonzero(np.abs(response) > 1e-7)
    reach = max(8 - support[0], support[-1] - 8)
    return np.ascontiguousarray(response[8 - reach:8 + reach + 1])
