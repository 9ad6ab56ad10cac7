"""Damaged border bands: the one detector, and the clip header's entry that carries what
it found.

Detection looks at some frames of a clip for columns and rows at each edge that are
black, or flat where the picture inside has texture, or pale (a head-switching band): the
band is the run of such lines from the edge, plus one line for the soft transition a
resampled band leaves.

The orchestrator's analysis runs it once per shot, on the shot's first frames as the
outpaint stage gets them (deinterlaced, at the working size), and sends the result in the
clip header (ClipInfo.analysis "bands"); the outpaint stages (and inpaint with MAT) take
it from there and detect for themselves only when a caller sends none. ``inspect``
reports it too: what it shows is what the job does."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from .errors import StageError

EDGES = ("left", "right", "top", "bottom")
MAX_FRACTION = 8    # a band is at most 1/8 of the width or height
TRANSITION = 2      # lines of band blurred into picture, at most
KEY = "bands"       # the clip header's analysis entry


@dataclass(frozen=True)
class Bands:
    """Widths of the damaged border bands, in pixels."""

    left: int = 0
    right: int = 0
    top: int = 0
    bottom: int = 0

    def any(self) -> bool:
        return any((self.left, self.right, self.top, self.bottom))

    def known(self, height: int, width: int) -> tuple[slice, slice]:
        """The rows and columns of the undamaged inside."""
        return slice(self.top, height - self.bottom), slice(self.left, width - self.right)

    def describe(self) -> str:
        return ", ".join(f"{edge}={getattr(self, edge)}" for edge in EDGES
                         if getattr(self, edge)) or "none"

# ---- detection ---------------------------------------------------------------------------

def detect_bands(images: list[np.ndarray]) -> Bands:
    """The damaged bands of RGB ``images``: uint8, or float32 on the working scale [0, 255]."""
    if not images:
        return Bands()
    height, width = images[0].shape[:2]
    # Only the lines a band could cover, and a few beyond, are read: the middle of the
    # frame plays no part.
    across = min(width, width // MAX_FRACTION + 8)
    down = min(height, height // MAX_FRACTION + 8)
    left = edge_lumas([f[:, :across] for f in images])
    right = edge_lumas([f[:, width - across:] for f in images])
    top = edge_lumas([f[:down] for f in images])
    bottom = edge_lumas([f[height - down:] for f in images])
    return Bands(
        left=edge_band(left.transpose(2, 0, 1), width),
        right=edge_band(right.transpose(2, 0, 1)[::-1], width),
        top=edge_band(top.transpose(1, 0, 2), height),
        bottom=edge_band(bottom.transpose(1, 0, 2)[::-1], height))


def edge_lumas(strips: list[np.ndarray]) -> np.ndarray:
    """(frames, rows, columns) float32 luma of same-sized RGB strips."""
    stack = np.stack(strips).astype(np.float32)
    count, rows, columns = stack.shape[:3]
    return luma(stack.reshape(count * rows, columns, 3)).reshape(count, rows, columns)


def edge_band(lumas: np.ndarray, extent: int) -> int:
    """Damaged lines at an edge, counted from it, from (lines, frames, positions) luma
    whose first line is the edge's.

    A band ends at a step between two lines that runs the whole length of the edge in
    every frame (a median along the edge of the step, so a picture's own edge, which
    rarely lies along a whole line for a whole second, does not qualify), far above the
    picture's line-to-line change; the lines before it must look unlike the picture
    inside (another level or no texture). Resampling blurs a band's edge over a line or
    two: the run of such steps belongs to the band. A black band needs no step."""
    depth = extent // MAX_FRACTION
    if depth < 2:
        return 0
    lines = np.ascontiguousarray(lumas[:depth + 8], np.float32)
    flat = lines.reshape(len(lines), -1)
    level = flat.mean(axis=1)
    spread = flat.std(axis=1)
    step = np.median(np.abs(np.diff(lines, axis=0)).mean(axis=1), axis=1)
    ref_level = float(np.median(level[depth:]))
    ref_spread = float(np.median(spread[depth:]))
    strong = step > 3.0 * float(np.median(step[depth:])) + 4.0
    black = leading(level < min(24.0, 0.4 * ref_level), depth)
    if black:
        first = black - 1
        if not strong[first]:
            return black + blended_line(lines, black)
    elif strong[:depth].any():
        first = int(np.argmax(strong[:depth]))
        unlike = ((np.abs(level[:first + 1] - ref_level) > 12.0)
                  | (spread[:first + 1] < 0.5 * ref_spread))
        if not unlike.all():
            return 0
    else:
        return 0
    run = leading(strong[first:], depth - first)
    if run > 1 + TRANSITION:
        # A long run of steps is a gradient in the picture, not the edge of a band.
        return black
    return first + run


def blended_line(lines: np.ndarray, black: int) -> int:
    """1 when the line after a black band is a mix of the band and the picture (the band's
    edge fell between two lines of the capture before it was resampled), else 0. On a
    dark picture that half-dark line makes no strong step, yet filling from it would
    carry the band's darkness inward: it is judged where the picture is lit, by how much
    of the next line's level above the band it reaches."""
    if black + 1 >= len(lines):
        return 0
    floor = float(lines[:black].mean())
    edge, inside = lines[black] - floor, lines[black + 1] - floor
    lit = inside > 20.0
    if lit.sum() < 0.05 * lit.size:
        return 0
    return int(np.median(edge[lit] / inside[lit]) < 0.85)


def leading(flags: np.ndarray, limit: int) -> int:
    count = 0
    while count < limit and flags[count]:
        count += 1
    return count


def luma(image: np.ndarray) -> np.ndarray:
    """BT.601 luma of a float32 RGB image, same scale."""
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


# ---- the clip header's entry -------------------------------------------------------------

def bands_entry(bands: Bands, size: tuple[int, int] | None = None) -> dict[str, bytes]:
    """The analysis entry that carries ``bands`` to the stages, measured in frames of
    ``size`` (width, height): a stage that gets larger frames (a superres before it) scales
    them to its own. Without ``size``, in the pixels of the frames the stage gets."""
    entry: dict = asdict(bands)
    if size is not None:
        entry["width"], entry["height"] = size
    return {KEY: json.dumps(entry).encode()}


def header_bands(info, stage: str) -> Bands | None:
    """The bands the orchestrator's analysis found in the clip, in its frames' pixels
    (scaled up, whole pixels covering the band, when they were measured on smaller frames);
    None when the header carries none (a caller of the service alone): the stage then
    detects them itself."""
    data = info.analysis.get(KEY)
    if not data:
        return None
    try:
        found = json.loads(data)
        bands = Bands(**{edge: int(found.get(edge, 0)) for edge in EDGES})
        width, height = int(found.get("width", info.width)), int(found.get("height", info.height))
    except (ValueError, TypeError, AttributeError):
        raise StageError(f"{stage}: the clip header's analysis bands={data!r} is not "
                         'JSON like {"left": 4, "bottom": 3}') from None
    if width <= 0 or height <= 0 or min(asdict(bands).values()) < 0:
        raise StageError(f"{stage}: the clip header's analysis bands={data!r} has a negative "
                         "band or an empty frame size")
    if (width, height) != (info.width, info.height):
        sx, sy = info.width / width, info.height / height
        bands = Bands(left=math.ceil(bands.left * sx), right=math.ceil(bands.right * sx),
                      top=math.ceil(bands.top * sy), bottom=math.ceil(bands.bottom * sy))
    if bands.left + bands.right >= info.width or bands.top + bands.bottom >= info.height:
        raise StageError(f"{stage}: the clip header's bands ({bands.describe()}) do not fit "
                         f"a {info.width}x{info.height} frame")
    return bands


def bands_rebuilt(info):
    """``info`` with its bands entry saying none: what a stage that rebuilt them hands on,
    so that a stage after it (an inpainter) neither rebuilds them again nor falls back to
    guessing bands of its own."""
    return info.replace(analysis={**info.analysis, **bands_entry(Bands())})
