"""outpaint/classical: burned-in overlays (a date stamp) taken out of the picture.

The orchestrator's analysis found the overlay and sent its text-shaped mask with the clip
(ClipInfo.analysis). The overlay stays still while the picture moves behind it, so what it
hides in one frame is in view in the frames around it: for each frame, the motion to each
neighbour is measured around the overlay (DIS optical flow; inside the mask the flow
would follow the still letters, so it is filled in from the flow around them) and the
neighbour's pixels are fetched along it wherever they come from outside the neighbour's
own overlay; the median of those that agree with the frame around the mask fills it.
What no neighbour saw (a still stretch) is filled spatially (Telea's inpainting).

Only a crop around the overlay is read and written: the rest of each frame is untouched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import cv2
import numpy as np

from services.stagekit.overlays import overlay_mask, presence
from services.stagekit.stage import ClipInfo
from services.stagekit.windowing import neighbourhoods

from .common import from_work, luma, noise_sigma, to_work

RADIUS = 6          # neighbouring frames each way the hidden picture is fetched from
GROW = 2            # pixels the mask is widened by: the letters' blur and rim go too
REACH = 40          # pixels of picture around the overlay the motion is measured on
FLOW_SPREAD = 4.0   # pixels (sigma) the flow around the letters is spread into them by
AGREE = 12.0        # mean |difference| (levels) round the mask of a neighbour that fits,
                    # at least; more on a noisy clip (two noisy views of one thing differ)


@dataclass
class _Frame:
    frame: np.ndarray          # as it came
    crop: np.ndarray           # float32 RGB on the working scale [0, 255], around the overlay
    grey: np.ndarray           # uint8, for the flow
    shown: bool                # whether the overlay is in this frame


class OverlayRemover:
    """Fills one clip's overlay from the frames around each frame, then spatially."""

    def __init__(self, info: ClipInfo):
        self.info = info
        mask = overlay_mask(info)
        self.active = mask is not None and bool(mask.any())
        if not self.active:
            return
        mask = cv2.dilate(mask, np.ones((2 * GROW + 1, 2 * GROW + 1), np.uint8))
        ys, xs = np.nonzero(mask)
        self.x0, self.y0 = max(0, xs.min() - REACH), max(0, ys.min() - REACH)
        self.x1 = min(info.width, xs.max() + 1 + REACH)
        self.y1 = min(info.height, ys.max() + 1 + REACH)
        self.hole = mask[self.y0:self.y1, self.x0:self.x1] > 0
        ring = cv2.dilate(self.hole.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        self.ring = ring & ~self.hole
        self.outside = (~self.hole).astype(np.float32)
        self.reach = np.maximum(cv2.GaussianBlur(self.outside, (0, 0), FLOW_SPREAD), 1e-3)
        self.near = np.maximum(cv2.GaussianBlur(self.outside, (0, 0), FLOW_SPREAD / 2), 1e-3)
        height, width = self.hole.shape
        self.grid = np.dstack(np.meshgrid(np.arange(width, dtype=np.float32),
                                          np.arange(height, dtype=np.float32)))
        self.shown = presence(info)
        self.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
        self.agree = AGREE          # set from the clip's noise at its first frame

    def run(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        if not self.active:
            yield from frames
            return
        for window in neighbourhoods(self._read(frames), RADIUS, RADIUS):
            yield self._fill(window)

    def _read(self, frames: Iterable[np.ndarray]) -> Iterator[_Frame]:
        for index, frame in enumerate(frames):
            part = frame[self.y0:self.y1, self.x0:self.x1]
            crop = to_work(part)
            if index == 0:
                self.agree = max(AGREE, 1.5 * noise_sigma(luma(to_work(frame))))
            grey = cv2.cvtColor(np.clip(crop, 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)
            yield _Frame(frame, crop, grey, self.shown(index / float(self.info.fps)))

    def _fill(self, window: list[_Frame]) -> np.ndarray:
        centre = window[RADIUS]
        if not centre.shown:
            return centre.frame
        fetched = [self._fetch(centre, other) for other in
                   _distinct(window[RADIUS - 1::-1], centre) + _distinct(window[RADIUS + 1:], centre)]
        fetched = [f for f in fetched if f is not None]
        filled = centre.crop.copy()
        known = np.zeros(self.hole.shape, bool)
        if fetched:
            values = np.stack([v for v, _ in fetched])
            valid = np.stack([ok for _, ok in fetched])
            # The median of the neighbours that saw each pixel (NaN where none did).
            stacked = np.where(valid[..., None], values, np.nan)
            count = valid.sum(axis=0)
            known = self.hole & (count > 0)
            if known.any():
                filled[known] = _seen_median(stacked[:, known], count[known])
        rest = self.hole & ~known
        if rest.any():
            eight = np.clip(filled, 0, 255).astype(np.uint8)
            filled = cv2.inpaint(eight, rest.astype(np.uint8) * 255, 3,
                                 cv2.INPAINT_TELEA).astype(np.float32)
        out = centre.frame.copy()
        region = out[self.y0:self.y1, self.x0:self.x1]
        region[self.hole] = from_work(filled[self.hole], self.info.pixel_format)
        return out

    def _fetch(self, centre: _Frame, other: _Frame):
        """``other``'s pixels for the centre's hole, fetched along the motion, and where
        they are usable (they came from outside ``other``'s overlay); None when ``other``,
        so moved, does not fit the centre round the hole."""
        flow = self.dis.calc(centre.grey, other.grey, None)
        # Inside the hole the flow follows the still letters: taken from around it instead
        # (a normalised blur of the flow outside it: the letters' strokes are thin).
        spread = cv2.GaussianBlur(flow * self.outside[..., None], (0, 0), FLOW_SPREAD)
        flow = np.where(self.hole[..., None], spread / self.reach[..., None], flow)
        where = self.grid + flow
        moved = cv2.remap(other.crop, where, None, cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
        if float(np.abs(moved[self.ring] - centre.crop[self.ring]).mean()) > self.agree:
            return None
        # Pixel by pixel too: how well the moved neighbour fits the picture just round
        # each hole pixel (the error outside the hole, spread into it like the flow).
        error = np.abs(moved - centre.crop).mean(axis=2) * self.outside
        fits = cv2.GaussianBlur(error, (0, 0), FLOW_SPREAD / 2) / self.near < self.agree
        height, width = self.hole.shape
        inside = ((where[..., 0] >= 0) & (where[..., 0] <= width - 1)
                  & (where[..., 1] >= 0) & (where[..., 1] <= height - 1))
        if other.shown:
            covered = cv2.remap(self.hole.astype(np.uint8) * 255, where, None, cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=255) > 0
            inside &= ~covered
        return moved, inside & fits & self.hole


def _distinct(side: list[_Frame], centre: _Frame) -> list[_Frame]:
    """The neighbours on one side, nearest first, up to the clip's end (where the window
    repeats a frame)."""
    out, last = [], centre
    for other in side:
        if other is last:
            break
        out.append(other)
        last = other
    return out


def _seen_median(stacked: np.ndarray, count: np.ndarray) -> np.ndarray:
    """np.nanmedian over axis 0 where ``count`` (at least 1) values per column are not NaN,
    the same numbers at a fifth of its time: a sort puts the NaNs last, so the median of
    the ``count`` seen ones sits at the middle of the first ``count``."""
    ordered = np.sort(stacked, axis=0)
    low, high = (np.take_along_axis(ordered, np.broadcast_to(
        middle[None, :, None], (1, *ordered.shape[1:])), 0)[0]
        for middle in ((count - 1) // 2, count // 2))
    return (low + high) / 2
