"""Grey stretches in clean colour footage, coloured back: what `make bench-quality`'s colour
row and the colorize tests share.

A stretch in the middle of a clean colour clip loses its colour (BT.601 luma, as a
black-and-white camera would give); it is then coloured as a job would colour it (the
same shot scan and references, the classical stage on each clip), or by a baseline; the
chroma of the grey stretch is scored against the truth."""
from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np

from orchestrator.media.references import scan


def grey_middle(frames: list[np.ndarray], start: int, stop: int) -> list[np.ndarray]:
    return [np.repeat(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
            if start <= i < stop else f for i, f in enumerate(frames)]


def colour_as_a_job(frames: list[np.ndarray], fps: Fraction, params: dict | None = None,
                    automatic: bool = True) -> list[np.ndarray]:
    """The frames through the classical colorize stage clip by clip, each grey clip with
    the references the orchestrator would send it (none with ``automatic`` off)."""
    from services.classical.colorize import ColorizeStage
    from services.stagekit.stage import ClipInfo
    found = scan(frames, float(fps))
    references = found.references() if automatic else {}
    stage = ColorizeStage()
    height, width = frames[0].shape[:2]
    out = []
    for number, (start, stop) in enumerate(found.shots):
        clip_id = f"clip{number:05d}"
        info = ClipInfo(clip_id, width, height, fps, params=dict(params or {}),
                        references=references.get(clip_id, ()))
        _, coloured = stage.run(info, iter(frames[start:stop]))
        out += list(coloured)
    return out


def nearest_colour(frames: list[np.ndarray], start: int, stop: int) -> list[np.ndarray]:
    """The naive baseline: each grey frame takes, as they are, the chroma of the nearest
    colour frame (the last before the stretch or the first after it)."""
    out = list(frames)
    for i in range(start, stop):
        source = frames[start - 1] if (i - start < stop - i or stop >= len(frames)) else frames[stop]
        ycc = cv2.cvtColor(frames[i], cv2.COLOR_RGB2YCrCb)
        ycc[..., 1:] = cv2.cvtColor(source, cv2.COLOR_RGB2YCrCb)[..., 1:]
        out[i] = cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)
    return out


def chroma(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2YCrCb)[..., 1:].astype(np.float32) - 128.0


def chroma_error(out: list[np.ndarray], truth: list[np.ndarray], start: int, stop: int) -> float:
    """Mean absolute Cr/Cb error (8-bit levels) over the frames start..stop."""
    return float(np.mean([np.abs(chroma(out[i]) - chroma(truth[i])).mean()
                          for i in range(start, stop)]))


def colour_flicker(frames: list[np.ndarray], start: int, stop: int) -> float:
    """Mean absolute frame-to-frame change of Cr/Cb within start..stop (8-bit levels)."""
    return float(np.mean([np.abs(chroma(frames[i]) - chroma(frames[i - 1])).mean()
                          for i in range(start + 1, stop)]))


def colourfulness(frames: list[np.ndarray], start: int, stop: int) -> float:
    return float(np.mean([np.abs(chroma(frames[i])).mean() for i in range(start, stop)]))
