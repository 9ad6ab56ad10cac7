"""Spatial tiling: run a per-frame function on overlapping tiles of a large frame, so what
it holds grows with the tile, not with the frame.

Each tile is cut with a ``margin`` of its neighbours' pixels on every side and keeps only
its own core of the result: a function whose output pixel depends on input pixels at most
``margin`` away gives the whole-frame result (to float rounding) at any tile size.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np


def tile_boxes(height: int, width: int, tile: int) -> Iterator[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) cores of side at most ``tile`` covering the frame, row by row."""
    for y0 in range(0, height, tile):
        for x0 in range(0, width, tile):
            yield y0, min(y0 + tile, height), x0, min(x0 + tile, width)


def tiled(function: Callable[[np.ndarray], np.ndarray], image: np.ndarray, tile: int,
          margin: int, factor: int = 1) -> np.ndarray:
    """``function(image)``, computed tile by tile when the frame is larger than ``tile``
    on a side (``tile`` 0: never). ``function`` maps an (h, w, ...) array to an
    (h * factor, w * factor, ...) one."""
    height, width = image.shape[:2]
    if tile <= 0 or (height <= tile and width <= tile):
        return function(image)
    out = None
    for y0, y1, x0, x1 in tile_boxes(height, width, tile):
        ya, yb = max(0, y0 - margin), min(height, y1 + margin)
        xa, xb = max(0, x0 - margin), min(width, x1 + margin)
        part = function(image[ya:yb, xa:xb])
        if out is None:
            out = np.empty((height * factor, width * factor) + part.shape[2:], part.dtype)
        out[y0 * factor:y1 * factor, x0 * factor:x1 * factor] = part[
            (y0 - ya) * factor:(y1 - ya) * factor, (x0 - xa) * factor:(x1 - xa) * factor]
    return out
