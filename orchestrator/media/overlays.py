"""Overlays: burned-in regions (a date stamp, a timecode) that stay still while the
picture moves behind them.

The frames are looked at in chunks of about a second. Each chunk's per-pixel median is
its still picture; a pixel that matches it in nearly every sampled frame is still. An
overlay is made of still pixels on the sharp edges (in any colour channel, so a
saturated stamp counts as much as a bright one) of text, grouped into lines of text,
with both horizontal and vertical strokes, not a whole row or column (a damaged border's
edge is still too), and with the picture around it changing: a still scene says nothing
about what is burned in. Scene text (a sign on a wall) moves with the camera, so its
pixels are not still across a chunk; while the camera stands still too, nothing is
decided. A chunk's finding joins the overlay found before it at the same place; which
frames an overlay is present in is judged frame by frame against its still colours, so
it also holds through still stretches once found.

Memory stays small however long the footage is: one chunk of frames at the detection
size at a time. The detection size is at most DETECT_WIDTH wide; ``Overlays.mask_at``
gives the text-shaped mask at any frame size (the working size for the stages).
"""
from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import cv2
import numpy as np

DETECT_WIDTH = 360      # frames are looked at no wider than this
CHUNK_S = 1.0           # seconds of frames per still picture
SAMPLES = 8             # frames of a chunk compared with its still picture
TOLERANCE = 14.0        # mean |RGB difference| of one content seen twice (noise, coding)
STILL_SHARE = 0.8       # share of a chunk's samples a still pixel matches
CHANGE_SHARE = 0.3      # ... and a changing pixel differs from, by 2 x TOLERANCE
STROKE = 15             # a median this wide removes a line of text's strokes
EDGE = 80.0             # 3x3 Sobel magnitude (levels) of a text edge in some channel
AROUND_CHANGING = 0.2   # share of the pixels around an overlay that must change
FRAME_CHANGING = 0.25   # ... or of the whole frame, for a box within EDGE_BAND of its edges
EDGE_BAND = 0.2
PRESENT_SHARE = 0.4     # share of an overlay's mask a frame must match to show it (its
                        # rims change with what moves behind, the letters do not)
MIN_SPAN_S = 0.5        # an overlay shows for at least this long
HISTORY = 60            # chunks looked back at for an overlay found late
GAP_S = 0.5             # absences shorter than this inside a span are bridged


@dataclass
class Overlay:
    """One overlay: its box (x, y, w, h) and text-shaped mask in the detection geometry,
    the frames it is present in ([first, last], inclusive), and its still colours."""

    box: tuple[int, int, int, int]
    first: int
    last: int
    mask: np.ndarray            # uint8 0/255, the whole frame at the detection size
    still: np.ndarray           # RGB uint8, the whole frame's still picture where found

    def crop(self, margin: int = 4) -> np.ndarray:
        """The still picture around the overlay (RGB), for a person to see what it is."""
        x, y, w, h = self.box
        height, width = self.mask.shape
        return self.still[max(0, y - margin):min(height, y + h + margin),
                          max(0, x - margin):min(width, x + w + margin)].copy()


@dataclass
class Overlays:
    """What was found, in a geometry of ``size`` (W, H); ``fps`` is the frames' rate."""

    size: tuple[int, int]
    fps: float
    items: list[Overlay] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.items)

    def during(self, start: int, stop: int) -> list[Overlay]:
        """The overlays present in frames ``start`` to ``stop`` (exclusive)."""
        return [o for o in self.items if o.first < stop and o.last >= start]

    def mask_at(self, size: tuple[int, int], items: list[Overlay] | None = None) -> np.ndarray:
        """The union of the masks of ``items`` (all by default), uint8 0/255 at ``size``."""
        union = np.zeros(self.size[::-1], np.uint8)
        for overlay in self.items if items is None else items:
            union |= overlay.mask
        if tuple(size) == tuple(self.size):
            return union
        return np.where(cv2.resize(union, tuple(size), interpolation=cv2.INTER_LINEAR) >= 128,
                        255, 0).astype(np.uint8)

    def box_at(self, overlay: Overlay, size: tuple[int, int]) -> list[int]:
        """``overlay``'s box in a frame of ``size`` (W, H), rounded outwards."""
        sx, sy = size[0] / self.size[0], size[1] / self.size[1]
        x, y, w, h = overlay.box
        left, top = int(np.floor(x * sx)), int(np.floor(y * sy))
        return [left, top, int(np.ceil((x + w) * sx)) - left, int(np.ceil((y + h) * sy)) - top]

    def analysis(self, start: int, stop: int, size: tuple[int, int]) -> dict[str, bytes]:
        """The clip header's "overlays" and "overlay_mask" entries for frames ``start`` to
        ``stop`` of the source, at the working ``size``: boxes in its pixels, frames
        counted from the clip's first at the source rate (``fps``). Empty when none."""
        present = self.during(start, stop)
        if not present:
            return {}
        listed = [{"box": self.box_at(o, size),
                   "frames": [max(o.first, start) - start, min(o.last, stop - 1) - start],
                   "fps": self.fps} for o in present]
        ok, png = cv2.imencode(".png", self.mask_at(size, present))
        if not ok:
            raise RuntimeError("the overlay mask could not be encoded as PNG")
        return {"overlays": json.dumps(listed).encode(), "overlay_mask": png.tobytes()}


def detect_size(width: int, height: int) -> tuple[int, int]:
    """The size frames are looked at: the frame's, at most DETECT_WIDTH wide."""
    if width <= DETECT_WIDTH:
        return width, height
    return DETECT_WIDTH, max(8, round(height * DETECT_WIDTH / width))


def find_overlays(frames: Iterable[np.ndarray], fps: float) -> Overlays:
    """The overlays of a stream of RGB uint8 frames (any one size) at ``fps``."""
    finder = OverlayFinder(fps)
    for frame in frames:
        finder.add(frame)
    return finder.finish()


class OverlayFinder:
    """Feed frames in order (``add``, or ``watch`` a stream passing through), then
    ``finish``."""

    def __init__(self, fps: float):
        self.fps = fps
        self.chunk_length = max(SAMPLES, int(round(CHUNK_S * fps)))
        self.chunk: list[np.ndarray] = []
        self.start = 0                      # the index of the chunk's first frame
        self.size: tuple[int, int] | None = None
        self.tracks: list[_Track] = []
        # The still pictures of the last chunks, (start, length, still): an overlay first
        # found after a still stretch is looked for in them too (in the chunk just before,
        # frame by frame: where it appeared).
        self.history: deque = deque(maxlen=HISTORY)
        self.previous: list[np.ndarray] = []   # the last chunk's frames

    def watch(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for frame in frames:
            self.add(frame)
            yield frame

    def add(self, frame: np.ndarray) -> None:
        if self.size is None:
            self.size = detect_size(frame.shape[1], frame.shape[0])
        if frame.shape[1::-1] != self.size:
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        self.chunk.append(frame)
        if len(self.chunk) == self.chunk_length:
            self._close_chunk()

    def finish(self) -> Overlays:
        if len(self.chunk) >= SAMPLES:
            self._close_chunk()
        elif self.chunk:   # too short to find anything in: only known overlays are followed
            self._follow(self.chunk)
            self.start += len(self.chunk)
            self.chunk = []
        found = Overlays(self.size or (0, 0), self.fps)
        for track in self.tracks:
            found.items += track.overlays(self.fps, self.start)
        found.items.sort(key=lambda o: (o.first, o.box))
        return found

    def _close_chunk(self) -> None:
        frames = self.chunk
        samples = np.stack(frames[::max(1, len(frames) // SAMPLES)][:SAMPLES])
        for mask, box, still in _chunk_overlays(samples):
            self._join(mask, box, still)
        self._follow(frames)
        self.history.append((self.start, len(frames), np.median(samples, axis=0).astype(np.uint8)))
        self.previous = frames
        self.start += len(frames)
        self.chunk = []

    def _join(self, mask: np.ndarray, box, still: np.ndarray) -> None:
        for track in self.tracks:
            if track.overlaps(box):
                track.vote(mask, box, still)
                return
        track = _Track(mask, box, still)
        for start, length, earlier in self.history:
            if start + length == self.start:    # the chunk just before: frame by frame
                track.present += [start + i for i, frame in enumerate(self.previous)
                                  if track.shown_in(frame)]
            elif track.shown_in(earlier):
                track.present += range(start, start + length)
        self.tracks.append(track)

    def _follow(self, frames: list[np.ndarray]) -> None:
        for track in self.tracks:
            for offset, frame in enumerate(frames):
                if track.shown_in(frame):
                    track.present.append(self.start + offset)


class _Track:
    """One overlay as the chunks find it: votes for its mask, its box, its still colours,
    and the frames it was seen in."""

    def __init__(self, mask: np.ndarray, box, still: np.ndarray):
        self.votes = np.zeros(mask.shape, np.int32)
        self.found = 0
        self.box = box
        self.still = still
        self.present: list[int] = []
        self.vote(mask, box, still)

    def overlaps(self, box) -> bool:
        return _same_line(self.box, box)

    def vote(self, mask: np.ndarray, box, still: np.ndarray) -> None:
        self.votes += mask > 0
        self.found += 1
        self.box = _box_union(self.box, box)
        self.still = still
        self._mask = None

    @property
    def mask(self) -> np.ndarray:
        if self._mask is None:
            self._mask = np.where(self.votes * 3 >= max(1, self.found), 255, 0).astype(np.uint8)
            self._pixels = np.nonzero(self._mask)
            self._colours = self.still[self._pixels].astype(np.int16)
        return self._mask

    def shown_in(self, frame: np.ndarray) -> bool:
        """Whether ``frame`` shows the overlay: most of its mask has its still colours."""
        self.mask  # noqa: B018 - makes the pixels and colours
        if not len(self._colours):
            return False
        difference = np.abs(frame[self._pixels].astype(np.int16) - self._colours).mean(axis=1)
        # Twice the noise, as for a still pixel: the letters' rims blend with what is behind.
        return float((difference < 2 * TOLERANCE).mean()) >= PRESENT_SHARE

    def overlays(self, fps: float, total: int) -> list[Overlay]:
        mask = self.mask
        ys, xs = np.nonzero(mask)
        if not len(xs):
            return []
        box = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
               int(ys.max() - ys.min() + 1))
        return [Overlay(box, first, last, mask, self.still)
                for first, last in _spans(self.present, fps, total)]


def _spans(frames: list[int], fps: float, total: int) -> list[tuple[int, int]]:
    """Runs of ``frames`` with short gaps bridged (also to the first and last of ``total``
    frames), those long enough, as (first, last)."""
    gap, shortest = max(1, round(GAP_S * fps)), max(2, round(MIN_SPAN_S * fps))
    frames = sorted(frames)
    if frames and frames[0] <= gap:
        frames.insert(0, 0)
    if frames and frames[-1] >= total - 1 - gap:
        frames.append(total - 1)
    runs: list[list[int]] = []
    for index in frames:
        if runs and index - runs[-1][1] <= gap:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return [(a, b) for a, b in runs if b - a + 1 >= shortest]


# ---- one chunk -----------------------------------------------------------------------------

def _chunk_overlays(samples: np.ndarray) -> list[tuple[np.ndarray, tuple, np.ndarray]]:
    """(mask, box, still picture) of each overlay in one chunk's (N, H, W, 3) samples."""
    still = np.median(samples, axis=0).astype(np.uint8)
    change = np.abs(samples.astype(np.int16) - still.astype(np.int16)).mean(axis=3)
    # A letter's rim is blended with what moves behind it (the font's smoothing, the
    # capture's blur), so a still pixel may change by up to twice the noise.
    steady = (change < 2 * TOLERANCE).mean(axis=0) >= STILL_SHARE
    changing = (change > 2 * TOLERANCE).mean(axis=0) >= CHANGE_SHARE
    gx, gy = _gradients(still)
    edges = np.hypot(gx, gy) > EDGE
    near_edge = cv2.dilate(edges.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    # Text strokes are thin: the still picture with them taken out (a median wider than a
    # stroke) is what lies behind them, and a stroke's pixels stand out from it, while the
    # background beside a stroke, still or not, does not.
    behind = cv2.medianBlur(still, STROKE)
    standing_out = np.abs(still.astype(np.int16) - behind).mean(axis=2) > 2 * TOLERANCE
    candidate = steady & near_edge & standing_out
    height, width = candidate.shape
    # A damaged border's edge is still and sharp, but runs along a whole row or column.
    candidate[candidate.mean(axis=1) > 0.5] = False
    candidate[:, candidate.mean(axis=0) > 0.5] = False
    found = []
    for mask, box in _text_lines(candidate):
        if _text_like(mask, box, gx, gy, width, height) and \
                _moving_behind(mask, box, changing, candidate):
            found.append((np.where(mask, 255, 0).astype(np.uint8), box, still))
    return found


def _gradients(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the x and y Sobel gradients of the channel whose edge is strongest."""
    gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3)
    strongest = np.argmax(gx * gx + gy * gy, axis=2)[..., None]
    return (np.take_along_axis(gx, strongest, axis=2)[..., 0],
            np.take_along_axis(gy, strongest, axis=2)[..., 0])


def _text_lines(candidate: np.ndarray) -> Iterator[tuple[np.ndarray, tuple]]:
    """Groups of candidate pixels close enough along a line to be one line of text."""
    width = candidate.shape[1]
    joined = cv2.dilate(candidate.astype(np.uint8),
                        np.ones((3, max(3, width // 20)), np.uint8))
    count, labels = cv2.connectedComponents(joined, connectivity=8)
    for label in range(1, count):
        mask = candidate & (labels == label)
        ys, xs = np.nonzero(mask)
        if len(xs):
            yield mask, (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                         int(ys.max() - ys.min() + 1))


def _text_like(mask, box, gx, gy, width: int, height: int) -> bool:
    """Enough pixels, the size of a line of text, strokes both ways, clear of the frame's
    edges (where damaged borders meet in still, sharp corners)."""
    x, y, w, h = box
    if x <= 1 or y <= 1 or x + w >= width - 1 or y + h >= height - 1:
        return False
    pixels = int(mask.sum())
    if pixels < max(12, width * height // 4000) or h < 3 or w < 4:
        return False
    if h > height // 4 or w > 0.8 * width or pixels < 0.08 * w * h:
        return False
    across, down = float(np.abs(gx[mask]).sum()), float(np.abs(gy[mask]).sum())
    return 0.2 < across / max(down, 1e-6) < 5.0


def _moving_behind(mask, box, changing, candidate) -> bool:
    """Whether the picture moves behind the box: it changes in a margin around it
    (outside the candidates); or, for a box near the frame's edges, where camcorders put
    their stamps, anywhere in the frame (the wall behind a stamp may be plain)."""
    x, y, w, h = box
    height, width = mask.shape
    if float(changing.mean()) >= FRAME_CHANGING and _near_edges(box, width, height):
        return True
    margin = max(4, h)
    region = (slice(max(0, y - margin), min(height, y + h + margin)),
              slice(max(0, x - margin), min(width, x + w + margin)))
    around = ~cv2.dilate(candidate[region].astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    return around.any() and float(changing[region][around].mean()) >= AROUND_CHANGING


def _same_line(a, b) -> bool:
    """Whether two boxes are parts of one line of text: overlapping rows for most of the
    lower one's height, and at most two heights apart along it."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    rows = min(ay + ah, by + bh) - max(ay, by)
    gap = max(ax, bx) - min(ax + aw, bx + bw)
    return rows >= 0.5 * min(ah, bh) and gap <= 2 * max(ah, bh)


def _near_edges(box, width: int, height: int) -> bool:
    x, y, w, h = box
    return y + h <= EDGE_BAND * height or y >= (1 - EDGE_BAND) * height \
        or x + w <= EDGE_BAND * width or x >= (1 - EDGE_BAND) * width


def _box_union(a, b):
    x, y = min(a[0], b[0]), min(a[1], b[1])
    return (x, y, max(a[0] + a[2], b[0] + b[2]) - x, max(a[1] + a[3], b[1] + b[3]) - y)
