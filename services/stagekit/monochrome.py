"""Is a frame black-and-white? One rule for every part that asks (shot detection, the
colorize stages), so a scene is coloured exactly when the orchestrator says it is grey."""
from __future__ import annotations

import cv2
import numpy as np

THUMB = (64, 36)
MONOCHROME_SPREAD = 0.03  # chroma spread below which a frame is grey or tinted monochrome


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """A small uint8 RGB copy: enough for frame statistics, and it averages noise away."""
    if frame.dtype != np.uint8:
        frame = (np.clip(frame.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
    return cv2.resize(frame, THUMB, interpolation=cv2.INTER_AREA)


def chroma_spread(thumb: np.ndarray) -> float:
    """How far the chroma strays from the frame's typical tint (90th percentile, 0..1):
    near 0 for black-and-white and for sepia-toned film, robust to a small coloured
    overlay such as a date stamp."""
    chroma = cv2.cvtColor(thumb, cv2.COLOR_RGB2YCrCb)[..., 1:].reshape(-1, 2).astype(np.float32)
    spread = np.abs(chroma - np.median(chroma, axis=0)).max(axis=-1) / 128.0
    return float(np.percentile(spread, 90))


def is_monochrome(frame: np.ndarray) -> bool:
    return chroma_spread(thumbnail(frame)) < MONOCHROME_SPREAD


def found_grey(info) -> bool | None:
    """Whether the orchestrator's analysis found the clip black-and-white (the clip
    header's ``grey``), or None where it did not say: a colorizer then judges the frames."""
    found = info.analysis.get("grey")
    return None if found is None else found == b"1"


def clip_is_grey(info, first: np.ndarray) -> bool:
    """Whether a clip is a black-and-white scene to colour: as the analysis found it,
    else as its first frame looks (a stage never decides again what the analysis found:
    a stage before may have tinted the frames)."""
    found = found_grey(info)
    return is_monochrome(first) if found is None else found
