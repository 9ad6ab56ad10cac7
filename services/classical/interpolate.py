"""interpolate/classical: raise the frame rate by an integer factor with optical flow.

For each pair of consecutive frames, flow both ways (DIS). A pixel whose forward flow the
backward flow does not confirm is occluded in the other frame. The flow at an
intermediate time t is approximated from the two flows (Jiang et al., Super SloMo,
CVPR 2018: F_t0 = -(1-t) t F_01 + t^2 F_10, F_t1 = (1-t)^2 F_01 - t (1-t) F_10); both
frames are warped there and blended by temporal distance and visibility, so a pixel
hidden in one frame comes from the other alone.

The clip's last frame is followed by copies of itself: a clip ends at a shot cut, and
nothing is ever blended across one. N input frames give factor * N output frames.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from services.stagekit.stage import ClipInfo

from .common import ClassicalStage, from_work, grey8, log, worked
from .flow import FlowEstimator, occlusion, warp


class InterpolateStage(ClassicalStage):
    task = "interpolate"
    fps_factor = 2
    window = (0, 1)
    max_batch = 8
    params = ("factor",)

    def settings(self, info: ClipInfo) -> int:
        self.check_known(info)
        return self.param_int(info, "factor", 2, 1, 8)

    def output_info(self, info: ClipInfo) -> ClipInfo:
        factor = self.settings(info)
        count = None if info.frame_count is None else info.frame_count * factor
        return info.replace(fps=info.fps * factor, frame_count=count)

    def process(self, info: ClipInfo, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        factor = self.settings(info)
        log.info("%s clip %s: %dx frame rate (%s fps), the last frame held", self.name,
                 info.clip_id, factor, info.fps * factor)
        if factor == 1:
            yield from frames
            return
        # Flow at half size (and at most 640 wide): as accurate for the in-between frame as
        # full size, at a quarter of the cost (bench/quality.py).
        flow = FlowEstimator("medium", scale=min(0.5, 640 / info.width))
        previous = previous_frame = previous_grey = None
        for frame in frames:
            if previous_frame is not None:
                current = worked_one(frame)
                grey = flow.prepare(grey8(current))
                yield previous_frame
                for k in range(1, factor):
                    middle = between(previous, current, previous_grey, grey, k / factor, flow)
                    yield from_work(middle, info.pixel_format)
                previous, previous_grey = current, grey
            else:
                previous = worked_one(frame)
                previous_grey = flow.prepare(grey8(previous))
            previous_frame = frame
        if previous_frame is not None:
            for _ in range(factor):
                yield previous_frame


def worked_one(frame: np.ndarray) -> np.ndarray:
    return next(worked([frame]))


def between(first: np.ndarray, second: np.ndarray, first_grey: np.ndarray,
            second_grey: np.ndarray, t: float, flow: FlowEstimator) -> np.ndarray:
    """The frame at time t in (0, 1) between ``first`` and ``second``."""
    shape = first.shape[:2]
    forward = flow(first_grey, second_grey, shape)
    backward = flow(second_grey, first_grey, shape)
    hidden_first = occlusion(forward, backward).astype(np.float32)    # gone in second
    hidden_second = occlusion(backward, forward).astype(np.float32)   # new in second
    to_first = -(1 - t) * t * forward + t * t * backward
    to_second = (1 - t) ** 2 * forward - t * (1 - t) * backward
    seen_first = (1 - t) * (1.0 - warp(hidden_first, to_first))
    seen_second = t * (1.0 - warp(hidden_second, to_second))
    total = seen_first + seen_second
    # Where both samples are doubted, fall back to the plain temporal blend.
    doubt = total < 1e-3
    seen_first = np.where(doubt, 1 - t, seen_first)[..., None]
    seen_second = np.where(doubt, t, seen_second)[..., None]
    blended = (seen_first * warp(first, to_first) + seen_second * warp(second, to_second))
    return blended / (seen_first + seen_second)
