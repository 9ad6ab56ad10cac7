"""superres/classical: 4x by lanczos and iterative back-projection.

The low-resolution frame is modelled as the area (box) downscale of the wanted one, the
model the orchestrator itself uses to find a tape's working resolution. Starting from a
lanczos upscale, each back-projection step downscales the estimate by that model and
spreads the difference to the input back up (Irani & Peleg, 1991), so the result is
consistent with the input while keeping lanczos's edges; a last clamp to the range of each output pixel's input neighbourhood removes the ringing
that lanczos and the back-projection leave next to edges.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import cv2
import numpy as np

from services.stagekit.stage import ClipInfo

from .common import ClassicalStage, delivered, log, worked

SCALE = 4
STEPS = 3
DAMPING = 1.0
OVERSHOOT = 2.0   # 8-bit levels an output may leave its input neighbourhood's range by


class SuperresStage(ClassicalStage):
    task = "superres"
    scale = SCALE
    window = (0, 0)
    max_batch = 4
    params = ()

    def process(self, info: ClipInfo, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        self.settings(info)
        log.info("%s clip %s: %dx%d -> %dx%d, lanczos + %d back-projection steps",
                 self.name, info.clip_id, info.width, info.height, info.width * SCALE,
                 info.height * SCALE, STEPS)
        for image in worked(frames):
            yield from delivered([upscale(image)], info.pixel_format)


def upscale(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    size = (width * SCALE, height * SCALE)
    estimate = cv2.resize(image, size, interpolation=cv2.INTER_LANCZOS4)
    for _ in range(STEPS):
        error = image - cv2.resize(estimate, (width, height), interpolation=cv2.INTER_AREA)
        estimate += DAMPING * cv2.resize(error, size, interpolation=cv2.INTER_CUBIC)
    kernel = np.ones((3, 3), np.uint8)
    low = cv2.resize(cv2.erode(image, kernel), size, interpolation=cv2.INTER_NEAREST)
    high = cv2.resize(cv2.dilate(image, kernel), size, interpolation=cv2.INTER_NEAREST)
    return np.clip(estimate, low - OVERSHOOT, high + OVERSHOOT)
