"""outpaint/classical: find damaged border bands and rebuild them.

Detection looks at the first frames of the clip (a bounded look-ahead) for columns and
rows at each edge that are black, or flat where the picture inside has texture, or pale
(a head-switching band): the band is the run of such lines from the edge, plus one line
for the soft transition a resampled band leaves.

Rebuilding is temporal first: optical flow to each neighbouring frame, carried across the
band from just inside it, tells where a band pixel's content is in that frame; where that
lies in the neighbour's undamaged area and the warped neighbour matches the frame next to
the band, it is taken (the nearest frames weigh most). Content entering or leaving the
picture through a band is thus recovered; what no frame saw is inpainted spatially.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Iterable, Iterator

import cv2
import numpy as np

from services.stagekit.stage import ClipInfo
from services.stagekit.windowing import neighbourhoods

from .common import ClassicalStage, delivered, grey8, log, luma, noise_sigma, worked
from .flow import FlowEstimator, warp

EDGES = ("left", "right", "top", "bottom")
LOOKAHEAD = 16      # frames read before the first output, to find the bands
RADIUS = 4          # neighbouring frames each way that may fill a band
MAX_FRACTION = 8    # a band is at most 1/8 of the width or height
TRANSITION = 2      # lines of band blurred into picture, at most
MARGIN = 2          # lines inside a band's edge whose flow is not trusted either
FLOW_WIDTH = 400    # the flow is measured at about this width
CONFIDENT = 1.2     # summed weight of matching neighbours that outweighs the spatial fill


@dataclass(frozen=True)
class Bands:
    left: int = 0
    right: int = 0
    top: int = 0
    bottom: int = 0

    def any(self) -> bool:
        return any((self.left, self.right, self.top, self.bottom))

    def describe(self) -> str:
        return ", ".join(f"{edge}={getattr(self, edge)}" for edge in EDGES
                         if getattr(self, edge)) or "none"

    def mask(self, height: int, width: int) -> np.ndarray:
        """True on the damaged pixels."""
        mask = np.zeros((height, width), bool)
        mask[:, :self.left] = True
        mask[:, width - self.right:width] = bool(self.right)
        mask[:self.top] = True
        mask[height - self.bottom:height] |= bool(self.bottom)
        return mask


class OutpaintStage(ClassicalStage):
    task = "outpaint"
    window = (RADIUS, max(RADIUS, LOOKAHEAD))
    max_batch = 8
    params = ("bands",)

    def settings(self, info: ClipInfo) -> Bands | None:
        """The bands the user gave, Bands() for none, None for automatic detection."""
        self.check_known(info)
        value = info.params.get("bands", "").strip().lower()
        if value in ("", "auto"):
            return None
        if value == "none":
            return Bands()
        sizes = {}
        for part in value.split(","):
            match = re.fullmatch(r"\s*(left|right|top|bottom)\s*=\s*(\d+)\s*", part)
            if not match or match[1] in sizes:
                raise self.fail("bands", info.params["bands"],
                                "auto, none or e.g. left=4,bottom=3")
            sizes[match[1]] = int(match[2])
        bands = Bands(**sizes)
        if bands.left + bands.right >= info.width or bands.top + bands.bottom >= info.height:
            raise self.fail("bands", info.params["bands"],
                            f"narrower than the frame ({info.width}x{info.height})")
        return bands

    def process(self, info: ClipInfo, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        bands = self.settings(info)
        images = worked(frames)
        if bands is None:
            head = list(itertools.islice(images, LOOKAHEAD))
            bands = detect_bands(head)
            images = itertools.chain(head, images)
            log.info("%s clip %s: detected damaged bands: %s", self.name, info.clip_id,
                     bands.describe())
        else:
            log.info("%s clip %s: bands given: %s", self.name, info.clip_id, bands.describe())
        if bands.any():
            images = rebuild(images, bands)
        yield from delivered(images, info.pixel_format)


# ---- detection ---------------------------------------------------------------------------

def detect_bands(images: list[np.ndarray]) -> Bands:
    if not images:
        return Bands()
    lumas = np.stack([luma(image) for image in images])
    height, width = lumas.shape[1:]
    return Bands(
        left=edge_band(lumas, width),
        right=edge_band(lumas[:, :, ::-1], width),
        top=edge_band(lumas.transpose(0, 2, 1), height),
        bottom=edge_band(lumas.transpose(0, 2, 1)[:, :, ::-1], height))


def edge_band(lumas: np.ndarray, extent: int) -> int:
    """Damaged columns at the left of (frames, rows, columns) luma, counted from the edge.

    A band ends at a step between two columns that runs the whole height of the frame in
    every frame (a median over rows of the step, so a picture's own edge, which rarely
    lies along a whole column for a whole second, does not qualify), far above the
    picture's column-to-column change; the columns before it must look unlike the
    picture inside (another level or no texture). Resampling blurs a band's edge over a
    line or two: the run of such steps belongs to the band. A black band needs no step."""
    depth = extent // MAX_FRACTION
    if depth < 2:
        return 0
    columns = lumas[:, :, :depth + 8].astype(np.float32)
    level = columns.mean(axis=(0, 1))
    spread = columns.std(axis=(0, 1))
    step = np.median(np.abs(np.diff(columns, axis=2)).mean(axis=0), axis=0)
    ref_level = float(np.median(level[depth:]))
    ref_spread = float(np.median(spread[depth:]))
    strong = step > 3.0 * float(np.median(step[depth:])) + 4.0
    black = leading(level < min(24.0, 0.4 * ref_level), depth)
    if black:
        first = black - 1
        if not strong[first]:
            return black
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


def leading(flags: np.ndarray, limit: int) -> int:
    count = 0
    while count < limit and flags[count]:
        count += 1
    return count


# ---- rebuilding --------------------------------------------------------------------------

@dataclass
class Frame:
    index: int
    image: np.ndarray
    grey: np.ndarray      # prepared for the flow estimator


def rebuild(images: Iterable[np.ndarray], bands: Bands) -> Iterator[np.ndarray]:
    return Rebuilder(bands).run(images)


class Rebuilder:
    """Fills the bands of each frame from its neighbours, then spatially.

    Optical flow from the frame to each neighbour gives the motion; inside a band the flow
    cannot be measured (there is no picture), so the flow just inside the band's edge is
    carried across it. A neighbour's pixel is taken where it comes from that neighbour's
    undamaged area and the neighbour, so warped, matches the frame just inside the band."""

    def __init__(self, bands: Bands):
        self.bands = bands
        self.flow: FlowEstimator | None = None
        self.tolerance = 0.0

    def run(self, images: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for window in neighbourhoods(self.framed(images), RADIUS, RADIUS):
            yield self.fill(window)

    def framed(self, images: Iterable[np.ndarray]) -> Iterator[Frame]:
        for index, image in enumerate(images):
            if self.flow is None:
                self.flow = FlowEstimator("fast", scale=min(1.0, FLOW_WIDTH / image.shape[1]))
                # Two noisy samples of one content differ by about sigma (median |diff|).
                self.tolerance = max(6.0, 1.5 * noise_sigma(luma(image)))
            yield Frame(index, image, self.flow.prepare(grey8(image)))

    def fill(self, window: list[Frame]) -> np.ndarray:
        centre = window[RADIUS]
        image = centre.image
        height, width = image.shape[:2]
        damaged = self.bands.mask(height, width)
        intact = (~damaged).astype(np.float32)
        total = np.zeros_like(image)
        weight = np.zeros((height, width), np.float32)
        seen = set()
        for other in window:
            if other.index == centre.index or other.index in seen:
                continue
            seen.add(other.index)
            motion = self.across_bands(self.flow(centre.grey, other.grey, (height, width)))
            moved = warp(other.image, motion)
            source_intact = warp(intact, motion, cv2.BORDER_CONSTANT) > 0.999
            error = cv2.blur(np.abs(luma(moved) - luma(image)), (5, 5))
            match = np.exp(-(self.across_bands(error) / self.tolerance) ** 2)
            w = (damaged & source_intact) * match / abs(other.index - centre.index)
            total += w[..., None] * moved
            weight += w
        spatial = inpaint(image, damaged)
        # Where the neighbours' evidence is weak, lean on the spatial fill in proportion.
        trust = np.clip(weight / CONFIDENT, 0.0, 1.0)[..., None]
        temporal = total / np.maximum(weight, 1e-6)[..., None]
        out = image.copy()
        out[damaged] = (trust * temporal + (1.0 - trust) * spatial)[damaged]
        return out

    def across_bands(self, field: np.ndarray) -> np.ndarray:
        """``field`` with each band (and a margin) replaced by the values just inside it."""
        field = field.copy()
        height, width = field.shape[:2]
        b, m = self.bands, MARGIN
        if b.left:
            field[:, :b.left + m] = field[:, b.left + m:b.left + m + 1]
        if b.right:
            edge = width - b.right - m
            field[:, edge:] = field[:, edge - 1:edge]
        if b.top:
            field[:b.top + m] = field[b.top + m:b.top + m + 1]
        if b.bottom:
            edge = height - b.bottom - m
            field[edge:] = field[edge - 1:edge]
        return field


def inpaint(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Spatial fill of what no frame saw: Telea's method, on 8 bits.

    A radius of one pixel: bands are a few lines deep, and a wider neighbourhood pulls
    in picture from further inside that has less to do with the edge (about 1 dB worse
    at a radius of 5 in bench/quality.py)."""
    eight = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    painted = cv2.inpaint(eight, mask.astype(np.uint8), 1, cv2.INPAINT_TELEA)
    out = image.copy()
    out[mask] = painted[mask]
    return out
