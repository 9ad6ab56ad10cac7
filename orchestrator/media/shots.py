"""Shot detection: where one scene ends and the next begins.

Cuts are found from consecutive frames alone (a streaming detector), on small HSV
histograms: a jump in the colour/brightness distribution far above the recent level of
change, or a switch between a colour and a black-and-white scene. Stages never work
across a cut, so a missed cut costs a blend and a false one only a little context."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from services.stagekit.monochrome import MONOCHROME_SPREAD, THUMB, chroma_spread, thumbnail

from .video import decode



def descriptor(frame: np.ndarray) -> tuple[np.ndarray, float]:
    """A normalised histogram of hue (weighted by saturation), saturation and value, and
    the frame's typical saturation."""
    thumb = thumbnail(frame)
    hsv = cv2.cvtColor(thumb, cv2.COLOR_RGB2HSV).reshape(-1, 3).astype(np.float32)
    sat = hsv[:, 1] / 255.0
    hue = np.histogram(hsv[:, 0], bins=18, range=(0, 180), weights=sat)[0]
    sats = np.histogram(hsv[:, 1], bins=8, range=(0, 256))[0]
    vals = np.histogram(hsv[:, 2], bins=16, range=(0, 256))[0]
    n = float(len(hsv))
    hist = np.concatenate([hue / n, sats / n, vals / n]).astype(np.float32)
    return hist, chroma_spread(thumb)


class ShotDetector:
    """Feed frames in order; ``is_cut`` says whether a frame starts a new shot."""

    def __init__(self, fps: float, threshold: float = 0.35, min_shot_s: float = 0.3):
        self.threshold = threshold
        self.min_shot = max(2, int(round(min_shot_s * fps)))
        self.recent: deque[float] = deque(maxlen=max(4, int(fps)))
        self.previous: tuple[np.ndarray, float] | None = None
        self.since_cut = 0
        self.grey = False  # whether the last frame fed was black-and-white

    def is_cut(self, frame: np.ndarray) -> bool:
        current = descriptor(frame)
        previous, self.previous = self.previous, current
        self.grey = current[1] < MONOCHROME_SPREAD
        self.since_cut += 1
        if previous is None:
            return False
        change = float(np.abs(current[0] - previous[0]).sum()) / 3.0
        switched = (current[1] < MONOCHROME_SPREAD) != (previous[1] < MONOCHROME_SPREAD)
        typical = float(np.median(self.recent)) if self.recent else 0.0
        self.recent.append(change)
        cut = switched or (change > self.threshold and change > 4 * typical + 0.05)
        if cut and self.since_cut > self.min_shot:
            self.since_cut = 1
            self.recent.clear()
            return True
        return False


@dataclass(frozen=True)
class Shot:
    """Frames ``start`` to ``stop`` (exclusive) of one shot; ``grey`` when black-and-white."""

    start: int
    stop: int
    grey: bool


# The shot scan decodes small: its statistics are taken on a 64x36 thumbnail anyway, and
# scaling in the decoder's scaler costs a fraction of full-size RGB frames.
SCAN_SIZE = (4 * THUMB[0], 4 * THUMB[1])


def find_shots(source, on_frame=None) -> list[Shot]:
    """Every shot of the video, from one fast pass over it: the clips a job will stream
    (known before any work, so progress counts against a fixed total). ``on_frame`` is
    called after each frame scanned."""
    detector = ShotDetector(float(source.fps))
    starts, greys, count = [0], [0], 0
    for index, frame in enumerate(decode(source, SCAN_SIZE)):
        if detector.is_cut(frame):  # every frame feeds the detector, the first too
            starts.append(index)
            greys.append(0)
        greys[-1] += detector.grey
        count = index + 1
        if on_frame is not None:
            on_frame()
    stops = starts[1:] + [count]
    return [Shot(a, b, n > 0.9 * (b - a)) for a, b, n in zip(starts, stops, greys)]
