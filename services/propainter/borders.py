"""Where a tape capture's picture is damaged at its edges, and the canvas it is rebuilt on.

A VHS capture typically has dead (near-black) bands on some edges and a head-switching
band at the bottom: a few lines torn sideways and noisy. :func:`detect_band` finds both
from a clip's first frames; the stage then either completes them in place or crops them
and outpaints back to size. The detection is a heuristic: a caller that knows better
passes the band explicitly (the ``band`` parameter).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

DARK_LEVEL = 24.0      # a row/column whose mean luma stays below this in every frame is dead
MAX_DEAD_FRACTION = 0.25
TEAR_ROUGH = 2.0       # torn rows jump from the row above this many times more than usual
TEAR_SHARP = 4.0       # ... and the band's top row this many times more
TEAR_FLOOR = 4.0
MAX_TEAR_FRACTION = 1 / 12
MIN_CANVAS = 128       # RAFT's coarsest correlation level is empty below this (NaN flows)
ALIGN = 8


@dataclass(frozen=True)
class Band:
    """Damaged rows/columns on each edge of the picture."""

    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0

    @classmethod
    def parse(cls, text: str) -> "Band":
        values = [int(v) for v in text.replace(" ", "").split(",")]
        if len(values) != 4 or min(values) < 0:
            raise ValueError("band must be four non-negative integers: top,bottom,left,right")
        return cls(*values)

    def __bool__(self) -> bool:
        return any((self.top, self.bottom, self.left, self.right))

    def mask(self, height: int, width: int) -> np.ndarray:
        hole = np.ones((height, width), dtype=bool)
        hole[self.top:height - self.bottom, self.left:width - self.right] = False
        return hole

    def picture(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of what is left inside the band."""
        return height - self.top - self.bottom, width - self.left - self.right


def luma(frame: np.ndarray) -> np.ndarray:
    rgb = frame.astype(np.float32)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def _dead_run(levels: np.ndarray, limit: int) -> int:
    """Leading entries of ``levels`` below the dark level (0 if more than ``limit``)."""
    dark = levels < DARK_LEVEL
    run = int(np.argmin(dark)) if not dark.all() else len(dark)
    return run if run <= limit else 0


def _torn_rows(lumas: np.ndarray, bottom: int) -> int:
    """Rows just above the bottom dead band (or the edge) torn away from the picture: a
    run of rows that each differ from the row above more than the picture usually does,
    topped by a sharp break (the head switch). 0 when there is no such break."""
    height = lumas.shape[1]
    if height < 8:
        return 0
    jumps = np.median(np.abs(np.diff(lumas, axis=1)).mean(axis=2), axis=0)  # row y+1 vs y
    normal = float(np.median(jumps[height // 4: 3 * height // 4]))
    rough = TEAR_ROUGH * normal + TEAR_FLOOR
    sharp = TEAR_SHARP * normal + TEAR_FLOOR
    last = height - bottom - 1                    # last picture row
    limit = max(1, int(height * MAX_TEAR_FRACTION))
    band = 0
    for torn in range(1, limit + 1):
        jump = jumps[last - torn]                 # row (last - torn + 1) vs the row above
        if jump <= rough:
            break
        if jump > sharp:
            band = torn
    return band


def detect_band(frames: Sequence[np.ndarray]) -> Band:
    """The damaged band of a clip from some of its frames (uint8 RGB)."""
    if not frames:
        return Band()
    lumas = np.stack([luma(f) for f in frames])              # (n, H, W)
    height, width = lumas.shape[1:]
    rows = lumas.mean(axis=2).max(axis=0)                     # brightest each row gets
    cols = lumas.mean(axis=1).max(axis=0)
    if rows.max() < DARK_LEVEL:                               # a black clip: nothing to tell
        return Band()
    limit_h = int(height * MAX_DEAD_FRACTION)
    limit_w = int(width * MAX_DEAD_FRACTION)
    top = _dead_run(rows, limit_h)
    bottom = _dead_run(rows[::-1], limit_h)
    left = _dead_run(cols, limit_w)
    right = _dead_run(cols[::-1], limit_w)
    inner = lumas[:, :, left:width - right] if width - right > left else lumas
    bottom += _torn_rows(inner, bottom)
    return Band(top, bottom, left, right)


def canvas_size(height: int, width: int) -> tuple[int, int]:
    """The processing size: multiples of 8 (flow completion, the 1/8 RAFT grid), at
    least 128 (RAFT); the extra rows/columns are padding, treated as holes."""
    def grow(n: int) -> int:
        return max(MIN_CANVAS, -(-n // ALIGN) * ALIGN)
    return grow(height), grow(width)


def holes_mask(holes: Sequence[Sequence[int]], index: int, height: int, width: int) -> np.ndarray:
    """The hole boxes ``[x, y, w, h]`` (every frame) or ``[x, y, w, h, first, last]``
    (frames first..last of the clip, inclusive) that cover frame ``index``."""
    mask = np.zeros((height, width), dtype=bool)
    for box in holes:
        x, y, w, h = box[:4]
        if len(box) == 6 and not box[4] <= index <= box[5]:
            continue
        mask[max(0, y):max(0, y + h), max(0, x):max(0, x + w)] = True
    return mask
