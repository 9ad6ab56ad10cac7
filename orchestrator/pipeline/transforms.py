"""Steps the orchestrator adds between stages itself (not models of a task)."""
from __future__ import annotations

import cv2

from services.stagekit import ClipInfo, Stage


class Resample(Stage):
    """Area-resample frames to a size: the working size (the tape's real resolution), or
    the plan's output size for the frames of a model with a larger fixed factor."""

    task = "resample"
    model = "area"

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height

    def output_info(self, info: ClipInfo) -> ClipInfo:
        return info.replace(width=self.width, height=self.height)

    def process(self, info, frames):
        size = (self.width, self.height)
        for frame in frames:
            if frame.shape[1::-1] == size:
                yield frame
            else:
                yield cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
