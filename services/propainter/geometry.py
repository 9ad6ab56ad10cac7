"""Putting a clip's frames on the processing canvas with their masks, and back.

Two ways to rebuild damaged borders:

* band completion (``BandPlan``): the frame keeps its size; the damaged band (and any
  extra holes) is the hole mask of the authors' ``video_inpainting`` mode, dilated
  ``mask_dilation`` times for both the flow and the compositing mask.
* outpainting (``OutpaintPlan``): the band is cropped and the picture is grown back to
  the target size, exactly the authors' ``video_outpainting`` mode but with the target
  size given directly (their ``int(scale * size)`` truncates: 360/336 gives 352) and
  without their final squeeze of the result back to the input size.

Canvas padding (to multiples of 8 and at least 128 for RAFT) is black and a hole in both
masks, added after dilation so that no real pixel is regenerated because of it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .borders import Band, canvas_size
from .pipeline import ClipFrame, dilate

OUTPAINT_FLOW_MARGIN = 4        # the authors' flow mask reaches this far into the picture
OUTPAINT_MARGIN_MIN_BAND = 10   # ... on axes where the grown band is wider than this


@dataclass(frozen=True)
class BandPlan:
    height: int
    width: int
    dilation: int

    @property
    def canvas(self) -> tuple[int, int]:
        return canvas_size(self.height, self.width)

    @property
    def output_size(self) -> tuple[int, int]:
        return self.height, self.width

    def clip_frame(self, frame: np.ndarray, hole: np.ndarray) -> ClipFrame:
        """``hole``: this frame's hole mask (band and boxes), input coordinates."""
        ch, cw = self.canvas
        image = np.zeros((ch, cw, 3), dtype=np.uint8)
        image[:self.height, :self.width] = frame
        mask = np.ones((ch, cw), dtype=bool)
        mask[:self.height, :self.width] = dilate(hole, self.dilation)
        return ClipFrame(image, mask, mask)

    def crop(self, frame: np.ndarray) -> np.ndarray:
        return frame[:self.height, :self.width]


@dataclass(frozen=True)
class OutpaintPlan:
    """The picture (the input inside ``band``) centred on a ``target``-sized frame."""

    height: int
    width: int
    band: Band
    target: tuple[int, int]
    dilation: int

    def __post_init__(self):
        ph, pw = self.band.picture(self.height, self.width)
        if ph <= 0 or pw <= 0:
            raise ValueError(f"band {self.band} leaves nothing of a {self.width}x{self.height} frame")
        if self.target[0] < ph or self.target[1] < pw:
            raise ValueError(f"outpainting grows a frame: target {self.target[1]}x{self.target[0]} "
                             f"is smaller than the picture {pw}x{ph}")

    @property
    def canvas(self) -> tuple[int, int]:
        return canvas_size(*self.target)

    @property
    def output_size(self) -> tuple[int, int]:
        return self.target

    @property
    def picture(self) -> tuple[int, int]:
        return self.band.picture(self.height, self.width)

    @property
    def offset(self) -> tuple[int, int]:
        """Where the picture goes: centred, rounded down (the authors' int((new - old) / 2))."""
        ph, pw = self.picture
        return (self.target[0] - ph) // 2, (self.target[1] - pw) // 2

    def _masks(self) -> tuple[np.ndarray, np.ndarray]:
        (ph, pw), (y0, x0) = self.picture, self.offset
        mask = np.ones(self.canvas, dtype=bool)
        mask[y0:y0 + ph, x0:x0 + pw] = False
        dy = OUTPAINT_FLOW_MARGIN if y0 > OUTPAINT_MARGIN_MIN_BAND else 0
        dx = OUTPAINT_FLOW_MARGIN if x0 > OUTPAINT_MARGIN_MIN_BAND else 0
        flow_mask = np.ones(self.canvas, dtype=bool)
        flow_mask[y0 + dy:y0 + ph - dy, x0 + dx:x0 + pw - dx] = False
        return mask, flow_mask

    def clip_frame(self, frame: np.ndarray, hole: np.ndarray) -> ClipFrame:
        """``hole``: extra holes inside the frame (input coordinates); the grown band is
        a hole anyway."""
        (ph, pw), (y0, x0), b = self.picture, self.offset, self.band
        image = np.zeros((*self.canvas, 3), dtype=np.uint8)
        image[y0:y0 + ph, x0:x0 + pw] = frame[b.top:b.top + ph, b.left:b.left + pw]
        mask, flow_mask = self._masks()
        if hole.any():
            inside = np.zeros(self.canvas, dtype=bool)
            inside[y0:y0 + ph, x0:x0 + pw] = hole[b.top:b.top + ph, b.left:b.left + pw]
            inside = dilate(inside, self.dilation)
            mask, flow_mask = mask | inside, flow_mask | inside
        return ClipFrame(image, mask, flow_mask)

    def crop(self, frame: np.ndarray) -> np.ndarray:
        return frame[:self.target[0], :self.target[1]]
