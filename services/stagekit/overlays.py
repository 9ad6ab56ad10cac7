"""Burned-in overlays (a date stamp) in a clip, as the orchestrator's analysis found them
(ClipInfo.analysis "overlays" and "overlay_mask"), and their protection from temporal work.

An overlay stays still while the picture moves behind it. A stage that mixes frames along
the motion (denoising, interpolation, deinterlacing, recurrent super-resolution) would
drag copies of it along with the background: ghosts. ``OverlayGuard`` keeps the stage's
output out of the overlay: into each output frame it pastes the overlay's pixels of the
input frame of the same moment (resized to the output, when the stage changes the size),
through the text-shaped mask, feathered by a pixel at its rim. The overlay thus comes
out as crisp and single as it went in, whatever the stage did around it."""
from __future__ import annotations

import json
import math
from typing import Iterable, Iterator

import cv2
import numpy as np

from .errors import StageError

KEYS = ("overlays", "overlay_mask")
MARGIN = 2          # pixels of the input around the mask that are kept for pasting


OVERLAY_CHOICES = ("remove", "keep")


def removes_overlays(info, stage: str) -> bool:
    """The ``overlays`` parameter of a stage that can take overlays out (the outpaint
    task): remove (the default) or keep (left in place, protected from ghosting)."""
    value = info.params.get("overlays", "").strip().lower() or "remove"
    if value not in OVERLAY_CHOICES:
        raise StageError(f"{stage}: parameter overlays={info.params['overlays']!r} must be "
                         + " or ".join(OVERLAY_CHOICES))
    return value == "remove"


def guarded(info, out_info, frames, process):
    """The output of ``process(frames)`` with the clip's overlays pasted back from
    ``frames`` (see OverlayGuard); just the output when the clip has none."""
    mask = overlay_mask(info)
    if mask is None or not mask.any():
        return process(frames)
    guard = OverlayGuard(info, out_info)
    return guard.paste(process(guard.watch(frames)))


def without_overlays(info):
    """``info`` with no overlay entries: what a stage that removed them hands on."""
    return info.replace(analysis={k: v for k, v in info.analysis.items() if k not in KEYS})


def overlay_mask(info, size: tuple[int, int] | None = None) -> np.ndarray | None:
    """The clip's overlay mask, uint8 0/255, at ``size`` (W, H; the clip's frame size by
    default), or None when the clip has none."""
    data = info.analysis.get("overlay_mask")
    if not data:
        return None
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        return None
    size = tuple(size or (info.width, info.height))
    if mask.shape[::-1] != size:
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_LINEAR)
    return np.where(mask >= 128, 255, 0).astype(np.uint8)


def presence(info):
    """A function of a moment (seconds from the clip's start) saying whether an overlay
    is shown then."""
    try:
        spans = [(first / float(o["fps"]), last / float(o["fps"]), 0.5 / float(o["fps"]))
                 for o in json.loads(info.analysis.get("overlays", b"[]"))
                 for first, last in [o["frames"]]]
    except (ValueError, KeyError, TypeError, ZeroDivisionError):
        spans = []
    return lambda t: any(a - half <= t <= b + half for a, b, half in spans)


class OverlayGuard:
    """Pastes the input's overlay into each output frame of one clip through one stage.

    ``watch`` the stage's input (it keeps a crop of each frame round the overlay, as long
    as an output may still need it), then ``paste`` over the stage's output."""

    def __init__(self, info, out_info):
        self.info, self.out_info = info, out_info
        mask = overlay_mask(info)
        ys, xs = np.nonzero(mask)
        x0, y0 = max(0, xs.min() - MARGIN), max(0, ys.min() - MARGIN)
        x1, y1 = min(info.width, xs.max() + 1 + MARGIN), min(info.height, ys.max() + 1 + MARGIN)
        self.box = (x0, y0, x1, y1)
        sx, sy = out_info.width / info.width, out_info.height / info.height
        self.out_box = (int(round(x0 * sx)), int(round(y0 * sy)),
                        int(round(x1 * sx)), int(round(y1 * sy)))
        ox0, oy0, ox1, oy1 = self.out_box
        weight = overlay_mask(info, (out_info.width, out_info.height))[oy0:oy1, ox0:ox1]
        # The letters' rims are blended with the picture behind (the font's smoothing, the
        # capture's blur): a pixel more, at the input's scale, is kept, feathered beyond.
        grow = 2 * max(1, round(out_info.width / info.width)) + 1
        weight = cv2.dilate(weight, np.ones((grow, grow), np.uint8)).astype(np.float32) / 255.0
        self.weight = np.maximum(weight, cv2.GaussianBlur(weight, (0, 0), 0.8))[..., None]
        self.shown = presence(info)
        self.crops: dict[int, np.ndarray] = {}

    def watch(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        x0, y0, x1, y1 = self.box
        for index, frame in enumerate(frames):
            self.crops[index] = _unit(frame[y0:y1, x0:x1])
            yield frame

    def paste(self, outputs: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        rate_in, rate_out = float(self.info.fps), float(self.out_info.fps)
        x0, y0, x1, y1 = self.out_box
        for index, frame in enumerate(outputs):
            moment = index / rate_out
            # The input frame of this moment, or the last before it (an in-between frame).
            source = math.floor(moment * rate_in + 1e-6)
            for old in [i for i in self.crops if i < source - 1]:
                del self.crops[old]
            crop = self.crops.get(source)
            if crop is None or not self.shown(moment):
                yield frame
                continue
            if crop.shape[:2] != (y1 - y0, x1 - x0):
                crop = cv2.resize(crop, (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
            frame = frame.copy()
            region = _unit(frame[y0:y1, x0:x1])
            mixed = self.weight * crop + (1.0 - self.weight) * region
            frame[y0:y1, x0:x1] = _back(mixed, frame.dtype)
            yield frame


def _unit(pixels: np.ndarray) -> np.ndarray:
    """float32 in [0, 1] from uint8 or float RGB."""
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0
    return pixels.astype(np.float32)


def _back(pixels: np.ndarray, dtype) -> np.ndarray:
    if dtype == np.uint8:
        return np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.clip(pixels, 0.0, 1.0).astype(dtype)
