"""interpolate/classical: raise the frame rate by an integer factor with optical flow.

For each pair of consecutive frames:

1. Motion, both ways. DIS optical flow (at half size) alone loses fast motion: its
   pyramid refines from zero by gradient descent, so an object that crosses a fifth of
   the frame between two frames settles on whatever nearer shift looks alike. Each DIS
   run therefore starts from an exhaustive block search on thumbnails some 40 pixels
   across (``flow.search``), which tries every shift and cannot miss a large one.
2. Candidates for the motion at the new frame's time t. Each candidate v places a new
   pixel x on the line from x - t v in the first frame to x + (1 - t) v in the second,
   and proposes the blend (1 - t) first + t second of those two samples. The flows give
   the motion of what is at x in the first or second frame, not of what is at x at time
   t: near a moving edge those differ. So each flow gives two candidates, its vector at
   x and its vector where that vector says the content at x came from (x - t F(x) for
   the forward flow F, one step towards splatting it to time t); no motion is the fifth,
   right for static detail and the safest answer where no motion explains the pictures.
3. Fusion, the way bilateral motion estimation (ffmpeg's minterpolate) picks vectors:
   a candidate that is right sees the same content in both frames, so its two samples
   agree. Each candidate's disagreement, averaged over a 7x7 window, weights it by
   exp(-(cost - least cost) / temperature): where one candidate clearly fits it wins,
   where several fit alike (or none does: occlusions, motion blur) they are averaged,
   which is what keeps the squared error, and the flicker it causes, low.

The clip's last frame is followed by copies of itself: a clip ends at a shot cut, and
nothing is ever blended across one. N input frames give factor * N output frames. Each
pair is computed from those two frames alone, so the output does not depend on batching.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import cv2
import numpy as np

from services.stagekit.stage import ClipInfo

from .common import ClassicalStage, from_work, grey8, log, to_work
from .flow import FlowEstimator, search, warp

# Disagreement (RGB levels summed over channels, averaged over the window) at which a
# candidate's weight falls by e against the best one's.
TEMPERATURE = 30.0
WINDOW = 7
# The block search runs on thumbnails about this long on their longer side (as DIS's
# coarsest level is, where the seed is used), out to these fractions of their width and
# height: horizontal motion (pans, passing traffic) runs much faster than vertical.
THUMBNAIL = 40
REACH = (0.3, 0.15)


@dataclass
class Prepared:
    frame: np.ndarray        # as received, for the kept frames
    image: np.ndarray        # float32 RGB working copy
    grey: np.ndarray         # what DIS reads
    thumbnail: np.ndarray    # what the block search reads


class Motion:
    """Forward and backward flow between consecutive frames of one clip."""

    def __init__(self, width: int, height: int):
        # Flow at half size (and at most 640 wide): as accurate for the in-between frame
        # as full size, at a quarter of the cost (bench/quality.py).
        self.flow = FlowEstimator("medium", scale=min(0.5, 640 / width))
        self.shape = (height, width)
        # Sized by the longer side, as DIS sizes its pyramid.
        scale = min(1.0, THUMBNAIL / max(width, height))
        self.thumbnail = (max(1, round(width * scale)), max(1, round(height * scale)))
        self.radius = (max(1, round(REACH[0] * self.thumbnail[0])),
                       max(1, round(REACH[1] * self.thumbnail[1])))

    def prepare(self, frame: np.ndarray) -> Prepared:
        image = to_work(frame)
        grey = grey8(image)
        thumbnail = cv2.resize(grey, self.thumbnail, interpolation=cv2.INTER_AREA)
        return Prepared(frame, image, self.flow.prepare(grey), thumbnail.astype(np.float32))

    def __call__(self, first: Prepared, second: Prepared) -> tuple[np.ndarray, np.ndarray]:
        seed = search(first.thumbnail, second.thumbnail, self.radius)
        forward = self.flow(first.grey, second.grey, self.shape, seed)
        seed = search(second.thumbnail, first.thumbnail, self.radius)
        backward = self.flow(second.grey, first.grey, self.shape, seed)
        return forward, backward


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
        motion = Motion(info.width, info.height)
        previous = None
        for frame in frames:
            current = motion.prepare(frame)
            if previous is not None:
                forward, backward = motion(previous, current)
                yield previous.frame
                for k in range(1, factor):
                    middle = between(previous.image, current.image, forward, backward,
                                     k / factor)
                    yield from_work(middle, info.pixel_format)
            previous = current
        if previous is not None:
            for _ in range(factor):
                yield previous.frame


def between(first: np.ndarray, second: np.ndarray, forward: np.ndarray,
            backward: np.ndarray, t: float) -> np.ndarray:
    """The frame at time t in (0, 1) between ``first`` and ``second``, given the flow
    both ways (float32 RGB in and out)."""
    backward = -backward            # both now give the motion from the first frame on
    candidates = (forward, warp(forward, -t * forward),
                  backward, warp(backward, (1 - t) * backward), None)
    pictures, costs = [], []
    for motion in candidates:
        if motion is None:
            seen_first, seen_second = first, second
        else:
            seen_first = warp(first, -t * motion)
            seen_second = warp(second, (1 - t) * motion)
        pictures.append(cv2.addWeighted(seen_first, 1 - t, seen_second, t, 0.0))
        disagreement = cv2.transform(cv2.absdiff(seen_first, seen_second),
                                     np.ones((1, 3), np.float32))
        costs.append(cv2.blur(disagreement, (WINDOW, WINDOW)))
    costs = np.stack(costs)
    weights = np.exp((costs.min(axis=0) - costs) / TEMPERATURE)
    weights /= weights.sum(axis=0)
    return sum(w[..., None] * picture for w, picture in zip(weights, pictures))
