"""outpaint/classical: find damaged border bands and rebuild them.

The bands are those the orchestrator's analysis found in the clip (its header's
"bands"), or those the user gave (``bands=``); a clip sent with neither has them found
here, from its first frames (a bounded look-ahead), by the one detector
(services/stagekit/bands.py).

Rebuilding is temporal first: the motion of the picture just inside each band, tracked
from frame to frame with optical flow, is carried across the band and tells where a band
pixel's content is in each neighbouring frame; where that lies in the neighbour's
undamaged area and the neighbour, so moved, matches the frame next to the band, it is
taken (the nearest frames weigh most). Content entering or leaving the picture through a
band is thus recovered; what no frame saw is filled from the picture beside the band.

Burned-in overlays the orchestrator's analysis found (a date stamp) are then removed the
same way, from the frames around (overlays.py); ``overlays=keep`` leaves them in place.

Besides a shrunken grey copy for the flow, only the bands and a few lines beside them are
read or written: the rest of a frame passes through untouched, in its own pixel format.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Iterable, Iterator

import cv2
import numpy as np

from services.stagekit.bands import EDGES, Bands, detect_bands, header_bands, bands_rebuilt
from services.stagekit.overlays import removes_overlays, without_overlays
from services.stagekit.stage import ClipInfo
from services.stagekit.windowing import neighbourhoods

from .common import ClassicalStage, from_work, grey8, log, luma, noise_sigma, to_work
from .overlays import RADIUS as OVERLAY_RADIUS
from .overlays import OverlayRemover

LOOKAHEAD = 16      # frames read before the first output, to find the bands
RADIUS = 4          # neighbouring frames each way that may fill a band
MARGIN = 2          # lines inside a band's edge whose flow is not trusted either
MATCH = 5           # a neighbour is judged over MATCH x MATCH pixels just inside the band
FLOW_WIDTH = 60     # the flow is measured at about this width (see Motion)
CONFIDENT = 1.2     # summed weight of matching neighbours that outweighs the spatial fill


class OutpaintStage(ClassicalStage):
    task = "outpaint"
    window = (max(RADIUS, OVERLAY_RADIUS), max(RADIUS, LOOKAHEAD, OVERLAY_RADIUS))
    max_batch = 8
    params = ("bands", "overlays")

    def removes_overlays(self, info: ClipInfo) -> bool:
        """overlays=remove (the default): the clip's burned-in overlays are taken out;
        keep: left in place (and protected from the band rebuilding like any temporal
        work)."""
        return removes_overlays(info, self.name)

    def protects_overlays(self, info: ClipInfo) -> bool:
        return not self.removes_overlays(info)

    def output_info(self, info: ClipInfo) -> ClipInfo:
        out = bands_rebuilt(super().output_info(info))   # rebuilt here
        return without_overlays(out) if self.removes_overlays(info) else out

    def settings(self, info: ClipInfo) -> Bands | None:
        """The bands the user gave, Bands() for none; by default (auto) those the
        analysis found (the clip header's), None when it sent none: found here."""
        self.check_known(info)
        self.removes_overlays(info)
        value = info.params.get("bands", "").strip().lower()
        if value in ("", "auto"):
            return header_bands(info, self.name)
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
        frames = iter(frames)
        if bands is None:
            head = list(itertools.islice(frames, LOOKAHEAD))
            # Detection reads 8-bit frames as they come; others on the working scale.
            bands = detect_bands([f if f.dtype == np.uint8 else to_work(f) for f in head])
            frames = itertools.chain(head, frames)
            log.info("%s clip %s: detected damaged bands: %s", self.name, info.clip_id,
                     bands.describe())
        else:
            given = "given" if info.params.get("bands", "").strip().lower() not in ("", "auto") \
                else "from the analysis"
            log.info("%s clip %s: bands %s: %s", self.name, info.clip_id, given, bands.describe())
        if bands.any():
            frames = Rebuilder(bands, info.pixel_format).run(frames)
        if self.removes_overlays(info):
            frames = OverlayRemover(info).run(frames)
        yield from frames


# ---- where the bands lie -----------------------------------------------------------------

class Strips:
    """The bands, with the lines beside them, laid side by side as one strip.

    Each band becomes a segment of ``depth`` rows (counted inward from its edge) by the
    length of its edge; all segments share the row of their anchors, the line MARGIN
    inside the band whose motion is carried across it, and the MATCH rows around it that
    judge a neighbour, so that one remap per neighbour and one set of array operations
    serve every band at once. Row r of a band ``b`` deep lies ``r - (deepest - b)`` lines
    from the edge; rows before the edge (of a band narrower than the deepest) are never
    written.

    An anchor at a corner, where it would lie in another band, is moved along the edge to
    the first line clear of that band: a band's motion and match are not measured in
    another band."""

    def __init__(self, bands: Bands, height: int, width: int):
        self.bands = bands
        deepest = max(bands.left, bands.right, bands.top, bands.bottom)
        self.anchor_row = deepest + MARGIN
        self.depth = self.anchor_row + MATCH // 2 + 1
        self.damaged_rows = deepest
        positions, anchors, along, damaged = [], [], [], []
        offset = 0
        for edge in EDGES:
            band = getattr(bands, edge)
            if not band:
                continue
            length = height if edge in ("left", "right") else width
            inward = np.clip(np.arange(self.depth) - (deepest - band), 0, None)
            u = np.arange(length)
            lo, hi = self.clear_span(edge, length)
            clamped = np.clip(u, lo, max(lo, hi))
            positions.append(frame_positions(edge, inward[:, None], u[None, :], height, width))
            anchors.append(frame_positions(edge, band + MARGIN, clamped, height, width))
            along.append(offset + clamped)
            rows = np.arange(self.depth)[:, None]
            damaged.append(np.broadcast_to((rows >= deepest - band) & (rows < deepest),
                                           (self.depth, length)))
            offset += length
        x, y = (np.concatenate([p[i] for p in positions], axis=1) for i in (0, 1))
        x, y = np.clip(x, 0, width - 1), np.clip(y, 0, height - 1)
        self.base = np.dstack([x, y]).astype(np.float32)               # (depth, length, 2)
        ax, ay = (np.concatenate([a[i] for a in anchors]) for i in (0, 1))
        self.anchors = np.stack([np.clip(ax, 0, width - 1),
                                 np.clip(ay, 0, height - 1)], axis=1).astype(np.float32)
        self.along = np.concatenate(along)
        damaged = np.concatenate(damaged, axis=1)[:deepest]
        # The damaged cells, as flat indices into the first rows and as frame pixels.
        self.cells = np.flatnonzero(damaged)
        self.cell_y = y[:deepest].ravel()[self.cells]
        self.cell_x = x[:deepest].ravel()[self.cells]
        # Rows before a narrower band's edge are never filled: placed far outside the
        # frame, they never count as coming from an undamaged area.
        self.base[:deepest][~damaged] = -4096.0
        # The undamaged area, where a neighbour's pixels may come from: (x, y) bounds.
        self.intact_low = (float(bands.left), float(bands.top))
        self.intact_high = (float(width - 1 - bands.right), float(height - 1 - bands.bottom))
        # Spatial fill: the nearest pixel of the undamaged area.
        self.nearest_y = np.clip(self.cell_y, bands.top, height - 1 - bands.bottom)
        self.nearest_x = np.clip(self.cell_x, bands.left, width - 1 - bands.right)

    def clear_span(self, edge: str, length: int) -> tuple[int, int]:
        """The first and last positions along ``edge`` outside the bands across it."""
        b = self.bands
        before, after = (b.top, b.bottom) if edge in ("left", "right") else (b.left, b.right)
        lo = before + MARGIN if before else 0
        hi = length - 1 - (after + MARGIN if after else 0)
        return lo, hi


def frame_positions(edge: str, inward, along, height: int, width: int):
    """(x, y) in the frame of the point ``inward`` lines from ``edge``, ``along`` it."""
    inward, along = np.broadcast_arrays(inward, along)
    if edge == "left":
        return inward, along
    if edge == "right":
        return width - 1 - inward, along
    if edge == "top":
        return along, inward
    return along, height - 1 - inward


# ---- motion ------------------------------------------------------------------------------

class Motion:
    """Optical flow between consecutive frames (DIS), and points followed through it.

    A band needs only the motion of the picture beside it, mostly the camera's. That is
    measured on a picture about FLOW_WIDTH wide, where a coarse field follows it more
    steadily at the frame's edge than a fine one does (bench/quality.py scores it higher
    than at 160 or 320 wide) and costs a tenth as much; and only between consecutive
    frames: a farther neighbour is reached by following each anchor from frame to frame,
    two flows per frame rather than one per neighbour. One instance per clip: the OpenCV
    object keeps buffers and is not shared between threads."""

    def __init__(self, height: int, width: int):
        scale = min(1.0, FLOW_WIDTH / width)
        self.size = (max(8, round(width * scale)), max(8, round(height * scale)))
        # Shrinking by a whole factor first: INTER_AREA is several times faster so.
        self.factor = max(1, width // self.size[0])
        # Flow pixels per frame pixel, along x and y.
        self.scale = np.float32([self.size[0] / width, self.size[1] / height])
        self.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        self.dis.setFinestScale(0)        # the small picture itself is the finest level

    def prepare(self, source: np.ndarray) -> np.ndarray:
        """What ``flow`` takes, from a frame's uint8 or working-scale RGB."""
        grey = (cv2.cvtColor(source, cv2.COLOR_RGB2GRAY) if source.dtype == np.uint8
                else grey8(source))
        if self.factor > 1:
            height, width = grey.shape
            grey = cv2.resize(grey, (width // self.factor, height // self.factor),
                              interpolation=cv2.INTER_AREA)
        return cv2.resize(grey, self.size, interpolation=cv2.INTER_LINEAR)

    def flow(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """From prepared ``a`` to prepared ``b``, in flow pixels."""
        return self.dis.calc(a, b, None)

    def follow(self, points: np.ndarray, flow: np.ndarray) -> np.ndarray:
        """Where (N, 2) frame points go under ``flow`` (bilinear in the flow field)."""
        where = (points + 0.5) * self.scale - 0.5
        moved = cv2.remap(flow, where[None], None, cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)[0]
        return points + moved / self.scale


# ---- rebuilding --------------------------------------------------------------------------

@dataclass
class Frame:
    index: int
    frame: np.ndarray                 # as it came, in the clip's pixel format
    source: np.ndarray                # uint8, or float32 on the working scale: what is read
    grey: np.ndarray                  # prepared for the flow
    ahead: np.ndarray | None = None   # flow to the next frame
    behind: np.ndarray | None = None  # flow to the previous frame


class Rebuilder:
    """Fills the bands of each frame from its neighbours, then from the picture beside.

    Inside a band the motion cannot be measured (there is no picture), so the motion of
    its anchor, just inside the band's edge, is carried across it. A neighbour's pixel is
    taken where it comes from that neighbour's undamaged area and the neighbour, so
    moved, matches the frame around the anchor. Only the strips are read and written:
    the rest of each frame is passed on as it came."""

    def __init__(self, bands: Bands, pixel_format: str):
        self.bands = bands
        self.pixel_format = pixel_format
        self.strips: Strips | None = None
        self.motion: Motion | None = None
        self.tolerance = 0.0

    def run(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for window in neighbourhoods(self.tracked(frames), RADIUS, RADIUS):
            yield self.fill(window)

    def tracked(self, frames: Iterable[np.ndarray]) -> Iterator[Frame]:
        """The frames, each with the flows between it and the one before."""
        previous = None
        for index, frame in enumerate(frames):
            source = frame if frame.dtype == np.uint8 else to_work(frame)
            if self.strips is None:
                height, width = frame.shape[:2]
                self.strips = Strips(self.bands, height, width)
                self.motion = Motion(height, width)
                # Two noisy samples of one content differ by about sigma (median |diff|).
                self.tolerance = max(6.0, 1.5 * noise_sigma(luma(source.astype(np.float32))))
            current = Frame(index, frame, source, self.motion.prepare(source))
            if previous is not None:
                previous.ahead = self.motion.flow(previous.grey, current.grey)
                current.behind = self.motion.flow(current.grey, previous.grey)
            yield current
            previous = current

    def neighbours(self, window: list[Frame]) -> list[tuple[Frame, int, np.ndarray]]:
        """Each distinct neighbour, its distance, and where the anchors are in it.

        Each step follows the flow measured from the frame the anchors are in: the flow
        backwards is measured, not the forward one inverted, which would read the flow
        where the anchors land, often in the band."""
        centre = window[RADIUS]
        found = []
        for later, side in ((True, window[RADIUS + 1:]), (False, window[RADIUS - 1::-1])):
            points, last = self.strips.anchors, centre
            for other in side:
                if other.index == last.index:     # the clip's end, repeated
                    break
                points = self.motion.follow(points, last.ahead if later else last.behind)
                found.append((other, abs(other.index - centre.index), points))
                last = other
        return found

    def fill(self, window: list[Frame]) -> np.ndarray:
        centre = window[RADIUS]
        strips = self.strips
        values = self.spatial(centre)
        neighbours = self.neighbours(window)
        if neighbours:
            total, weight = self.temporal(centre, neighbours)
            # Where the neighbours' evidence is weak, lean on the spatial fill in proportion.
            trust = np.clip(weight / CONFIDENT, 0.0, 1.0)[:, None]
            temporal = total / np.maximum(weight, 1e-6)[:, None]
            values = trust * temporal + (1.0 - trust) * values
        out = centre.frame.copy()
        out[strips.cell_y, strips.cell_x] = from_work(values, self.pixel_format)
        return out

    def temporal(self, centre: Frame, neighbours) -> tuple[np.ndarray, np.ndarray]:
        """Summed weighted neighbour pixels (cells, 3) and their summed weights (cells,)."""
        strips = self.strips
        count, (depth, length) = len(neighbours), strips.base.shape[:2]
        # Each cell moves as its anchor: one (depth, length, 2) map per neighbour.
        moves = np.stack([points - strips.anchors for _, _, points in neighbours])
        maps = strips.base + moves[:, None]
        moved = np.empty((count, depth, length, 3), centre.source.dtype)
        for (other, _, _), where, out in zip(neighbours, maps, moved):
            cv2.remap(other.source, where, None, cv2.INTER_LINEAR, dst=out,
                      borderMode=cv2.BORDER_REPLICATE)
        # Match around each anchor: the mean |luma difference| over MATCH x MATCH pixels
        # (the middle row of a box filter over each neighbour's MATCH rows).
        rows = slice(strips.anchor_row - MATCH // 2, strips.anchor_row + MATCH // 2 + 1)
        there = cv2.cvtColor(moved[:, rows].reshape(count * MATCH, length, 3),
                             cv2.COLOR_RGB2GRAY)
        here = cv2.cvtColor(cv2.remap(centre.source, strips.base[rows], None,
                                      cv2.INTER_NEAREST), cv2.COLOR_RGB2GRAY)
        change = cv2.absdiff(there, np.tile(here, (count, 1)))
        error = cv2.boxFilter(change, cv2.CV_32F, (MATCH, MATCH))[MATCH // 2::MATCH]
        nearness = np.float32([1.0 / distance for _, distance, _ in neighbours])
        match = np.exp(-(error[:, strips.along] / self.tolerance) ** 2) * nearness[:, None]
        # Only what comes from a neighbour's undamaged area counts (cells that are not
        # damaged themselves lie far outside it, see Strips).
        damaged = strips.damaged_rows
        usable = cv2.inRange(maps[:, :damaged].reshape(count * damaged, length, 2),
                             strips.intact_low, strips.intact_high)
        w = usable.reshape(count, damaged, length) * (match / 255.0)[:, None]
        total = (w[..., None] * moved[:, :damaged]).sum(axis=0)
        weight = w.sum(axis=0)
        return total.reshape(-1, 3)[strips.cells], weight.ravel()[strips.cells]

    def spatial(self, centre: Frame) -> np.ndarray:
        """The damaged cells filled from the nearest undamaged pixel, (cells, 3) float32.

        Bands are a few lines deep and the line beside one is the best guess of what it
        hides: Telea's inpainting at a radius of one pixel, which comes to much the same
        on a straight band, scored no better in bench/quality.py and flickered more, at
        ten times the cost (a wider radius pulls in picture from further inside that has
        less to do with the edge, and scores worse)."""
        strips = self.strips
        return centre.source[strips.nearest_y, strips.nearest_x].astype(np.float32)
