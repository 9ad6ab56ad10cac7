"""`orchestrator preview INPUT --at T --seconds N -o compare.mp4`: restore one stretch
with the same pipeline and settings as the full job, and show it beside the original."""
from __future__ import annotations

import dataclasses
import tempfile
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from .. import media
from ..errors import UserError
from ..media.references import borrowed
from ..pipeline.plan import make_plan
from ..pipeline import sizing
from ..pipeline.analysis import analyse, colorizes
from ..pipeline.runner import Job
from ..pipeline.specs import StageSpec

MAX_HEIGHT = 720  # each half of the comparison, in display pixels


def preview(path: Path, output: Path, at: float, seconds: float, specs: list[StageSpec],
            native: str = "auto", device: str = "auto", layout: str = "side",
            still: Path | None = None, show_progress: bool = True, scale: str = "auto",
            max_height: int = sizing.MAX_HEIGHT) -> Path:
    source = media.probe(path)
    if seconds <= 0:
        raise UserError(f"--seconds must be positive, not {seconds}")
    if not 0 <= at < source.duration:
        raise UserError(f"--at {at}: the video is {source.duration:.2f}s long")
    # The native size is measured on the whole input, and grey scenes take their
    # references from it, as the full job would.
    whole = make_plan(source, specs, native, scale, max_height)
    working = whole.working_size
    with tempfile.TemporaryDirectory(prefix="preview-", dir=output.parent) as tmp:
        stretch = _cut(source, at, seconds, Path(tmp) / "stretch.mkv")
        restored = Path(tmp) / "restored.mkv"
        plan = make_plan(stretch, specs, "%dx%d" % working, scale, max_height)
        scenes = analyse(plan)
        if colorizes(plan) and scenes.scenes:   # the whole input is read only for a grey stretch
            scenes = borrowed(scenes, analyse(whole), at)
        job = Job(plan, media.OutputSpec(restored, "ffv1", intermediate=True), device,
                  show_progress, scenes=scenes, time_offset=at)
        job.run()
        # The rate the stages made, exactly: Matroska's millisecond clock would round it.
        fps = job.geometry[2]
        return _compare(stretch, restored, fps, plan.source.dar, output, layout, still)


def _cut(source: media.SourceInfo, at: float, seconds: float, path: Path) -> media.SourceInfo:
    """The stretch as a lossless file, carrying the original's field order and aspect
    (written as it is decoded: a stretch of large frames is never held)."""
    cut = media.probe(media.write_lossless(path, _stretch(source, at, seconds), source.fps))
    return dataclasses.replace(cut, fps=source.fps, field_order=source.field_order, sar=source.sar,
                               rotation=0, audio_codec=None, audio_duration=None)


def _stretch(source: media.SourceInfo, at: float, seconds: float):
    for index, frame in enumerate(media.decode(source)):
        t = index / float(source.fps)
        if t >= at + seconds:
            break
        if t >= at:
            yield frame


def _compare(before: media.SourceInfo, after_path: Path, fps: Fraction, dar: Fraction,
             output: Path, layout: str, still: Path | None) -> Path:
    height = MAX_HEIGHT
    width = int(round(height * dar / 2)) * 2
    originals = media.decode(before)
    after = dataclasses.replace(media.probe(after_path), fps=fps)
    ratio = float(before.fps / after.fps)
    spec = media.OutputSpec(output, "h264", 18)
    out_width = width * 2 if layout == "side" else width
    no_audio = dataclasses.replace(after, audio_codec=None)
    writer = media.VideoWriter(spec, out_width, height, after.fps, Fraction(1), no_audio)
    count = sum(1 for _ in media.decode(after))
    # Both streamed side by side: the original that shows with restored frame i is the
    # one at i * ratio, which only ever moves forward.
    shown, original = -1, None
    try:
        for i, restored in enumerate(media.decode(after)):
            while shown < int(i * ratio):
                original = next(originals, original)
                shown += 1
            left = cv2.resize(original, (width, height), interpolation=cv2.INTER_AREA)
            right = cv2.resize(restored, (width, height), interpolation=cv2.INTER_AREA)
            picture = _side(left, right) if layout == "side" else _wipe(left, right, i / max(count - 1, 1))
            writer.write(picture)
            if still is not None and i == count // 2:
                cv2.imwrite(str(still), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        return writer.finish()
    except BaseException:
        writer.abort()
        raise


def _side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    picture = np.concatenate([left, right], axis=1)
    picture[:, left.shape[1] - 1:left.shape[1] + 1] = 255
    return _label(_label(picture, "before", 8), "after", left.shape[1] + 8)


def _wipe(left: np.ndarray, right: np.ndarray, progress: float) -> np.ndarray:
    """Original left of a line that sweeps across, restored right of it."""
    split = int(left.shape[1] * (0.2 + 0.6 * progress))
    picture = right.copy()
    picture[:, :split] = left[:, :split]
    picture[:, max(split - 1, 0):split + 1] = 255
    (text_width, _), _ = cv2.getTextSize("after", cv2.FONT_HERSHEY_SIMPLEX, 0.8, 4)
    return _label(_label(picture, "before", 8), "after", picture.shape[1] - text_width - 8)


def _label(picture: np.ndarray, text: str, x: int) -> np.ndarray:
    cv2.putText(picture, text, (x, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 4, cv2.LINE_AA)
    cv2.putText(picture, text, (x, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2, cv2.LINE_AA)
    return picture
