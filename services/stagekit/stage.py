"""The Stage interface: what every model of every task implements.

A stage turns one clip (a run of frames between two shot cuts) into another. Frames are
numpy arrays of shape (H, W, 3): uint8 RGB for ``rgb24``, float16 RGB in [0, 1] for
``rgbf16``. ``process`` is a generator over a generator, so a clip of any length streams
through with memory bounded by the stage's own window.
"""
from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterator, Mapping

import numpy as np

from .errors import StageError
from .overlays import guarded

PIXEL_FORMATS = {"rgb24": np.uint8, "rgbf16": np.float16}


@dataclass(frozen=True)
class ClipInfo:
    """What travels in a clip header: geometry, timing and the stage parameters."""

    clip_id: str
    width: int
    height: int
    fps: Fraction
    pixel_format: str = "rgb24"
    sar: Fraction = Fraction(1)
    params: Mapping[str, str] = field(default_factory=dict)
    frame_count: int | None = None
    start_time: float = 0.0
    # Encoded images (PNG/JPEG) of colour frames a colorizer may copy colour from: the
    # tape's own colour shots around a grey scene, chosen by the orchestrator.
    references: tuple[bytes, ...] = ()
    # What the orchestrator's analysis found in this clip (ClipHeader.analysis in
    # stage.proto): a stage reads it here rather than deciding again from its frames.
    analysis: Mapping[str, bytes] = field(default_factory=dict)

    def replace(self, **changes) -> "ClipInfo":
        return dataclasses.replace(self, **changes)

    @property
    def dtype(self):
        return PIXEL_FORMATS[self.pixel_format]

    def check_frame(self, frame: np.ndarray) -> None:
        want = (self.height, self.width, 3)
        if frame.shape != want or frame.dtype != self.dtype:
            raise StageError(
                f"clip {self.clip_id}: frame is {frame.shape} {frame.dtype}, "
                f"header says {want} {np.dtype(self.dtype)}")


class Stage(abc.ABC):
    """One model of one task. Subclasses set the class attributes and write ``process``."""

    task: str = ""
    model: str = ""
    scale: int = 1                      # spatial factor of the output
    fps_factor: int = 1                 # frame-rate factor of the output
    window: tuple[int, int] = (0, 0)    # frames of context needed (past, future)
    max_batch: int = 8
    accepts: tuple[str, ...] = ("rgb24",)
    backend: str = "numpy"
    # The clip parameters the stage takes; a caller checks a job's against them before any
    # work. None: not declared (the stage itself judges its parameters when a clip comes).
    params: tuple[str, ...] | None = None

    def weights_identity(self) -> str:
        """sha256 (or another stable identity) of the weights in use; '' for none."""
        return ""

    def validate(self, info: ClipInfo) -> None:
        """Raise StageError for a clip this stage cannot take. Extend, then call super()."""
        if info.pixel_format not in self.accepts:
            raise StageError(
                f"{self.task}/{self.model} accepts {', '.join(self.accepts)}, "
                f"not {info.pixel_format}")
        if info.width <= 0 or info.height <= 0:
            raise StageError(f"zero-size frames ({info.width}x{info.height})")

    def output_info(self, info: ClipInfo) -> ClipInfo:
        count = None if info.frame_count is None else info.frame_count * self.fps_factor
        return info.replace(width=info.width * self.scale, height=info.height * self.scale,
                            fps=info.fps * self.fps_factor, frame_count=count)

    @abc.abstractmethod
    def process(self, info: ClipInfo, frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """Yield the output frames of one clip, exactly as ``output_info`` describes."""

    def describe(self) -> dict:
        return {
            "task": self.task, "model": self.model, "backend": self.backend,
            "weights": self.weights_identity(), "window_past": self.window[0],
            "window_future": self.window[1], "scale": self.scale,
            "fps_factor": self.fps_factor, "accepts": list(self.accepts),
            "max_batch": self.max_batch,
        }

    def protects_overlays(self, info: ClipInfo) -> bool:
        """Whether the clip's burned-in overlays are kept out of this stage's work (pasted
        back from its input, see overlays.py): for stages that mix frames along motion."""
        return self.window != (0, 0) or self.fps_factor != 1

    def run(self, info: ClipInfo, frames) -> tuple[ClipInfo, Iterator[np.ndarray]]:
        """Validate, then stream: the one entry point callers use (in-process or served)."""
        self.validate(info)
        # References are for this stage alone: the clip travels on without them.
        out_info = self.output_info(info).replace(references=())
        frames = _checked(info, frames)
        if self.protects_overlays(info):
            return out_info, guarded(info, out_info, frames, lambda f: self.process(info, f))
        return out_info, self.process(info, frames)


def _checked(info: ClipInfo, frames) -> Iterator[np.ndarray]:
    for frame in frames:
        info.check_frame(frame)
        yield frame
