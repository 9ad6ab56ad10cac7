"""deinterlace/classical: interlaced frames to progressive frames at the field rate.

The first stage of a tape's pipeline (the orchestrator inserts it for interlaced input,
the field order from the container unless the user says otherwise), so that every
``analog`` model, and every stage after it, receives progressive frames.

Every field becomes a frame at its true vertical position. Missing lines get bwdif's
decision rule applied to motion-compensated neighbouring fields: the temporal estimate
(the two opposite-parity fields warped onto this one by optical flow) is trusted exactly
as far as the warped fields and this field's own rows confirm it; elsewhere the spatial
estimate (a 4-tap interpolator, with the neighbours' high frequencies on moving edges)
wins. Where the flow is right this weaves full vertical detail even under motion, where
yadif and bwdif fall back to interpolation. (bwdif's spatial interlacing check is left
out: with motion compensation it costs quality.) One flow estimate per pair of
consecutive fields serves both ways, and the weave works on field planes (one parity's
rows, contiguous). With ``size`` the progressive frames are then area-resampled to the
working resolution, still in floating point.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Iterable, Iterator

import cv2
import numpy as np

from services.stagekit.parallel import ordered_map
from services.stagekit.stage import ClipInfo

from .common import ClassicalStage, delivered, grey8, log, mapped, resample, worked
from .flow import FlowEstimator, positions

# The first is the default of a clip that names none (the orchestrator always names one).
FIELD_ORDERS = ("tff", "bff", "progressive")


@dataclass(frozen=True)
class DeinterlaceSettings:
    field_order: str
    size: tuple[int, int] | None

    @property
    def interlaced(self) -> bool:
        return self.field_order != "progressive"


class DeinterlaceStage(ClassicalStage):
    task = "deinterlace"
    window = (1, 1)
    max_batch = 8
    params = ("field_order", "size")

    def settings(self, info: ClipInfo) -> DeinterlaceSettings:
        self.check_known(info)
        return DeinterlaceSettings(self.param_choice(info, "field_order", FIELD_ORDERS),
                                   self.param_size(info))

    def output_info(self, info: ClipInfo) -> ClipInfo:
        settings = self.settings(info)
        width, height = settings.size or (info.width, info.height)
        factor = 2 if settings.interlaced else 1
        count = None if info.frame_count is None else info.frame_count * factor
        # the stages after it get progressive frames, whatever the source was
        analysis = {**info.analysis, "field_order": b"progressive"}
        return info.replace(width=width, height=height, fps=info.fps * factor,
                            frame_count=count, analysis=analysis)

    def process(self, info: ClipInfo, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        settings = self.settings(info)
        log.info("%s clip %s: %s, working size %s", self.name, info.clip_id,
                 f"{settings.field_order} to the field rate" if settings.interlaced
                 else "progressive input", "x".join(map(str, settings.size))
                 if settings.size else "unchanged")
        images = worked(frames)
        if settings.interlaced and settings.size and settings.size[0] < info.width:
            # Deinterlacing works on columns: narrowing first (area, as the resample
            # after it does) leaves it the same work on fewer of them. On tape_sim.mp4
            # (720 to 360 wide) half the stage's CPU, the same PSNR to the clean truth.
            narrow = (settings.size[0], info.height)
            images = mapped(lambda image: resample(image, narrow), images)
        if settings.interlaced:
            images = deinterlace(images, top_first=settings.field_order == "tff")
        if settings.size and settings.size != (info.width, info.height):
            images = mapped(lambda image: resample(image, settings.size), images)
        yield from delivered(images, info.pixel_format)


# bwdif's filters (in 1/8192): a 4-tap vertical interpolator for the spatial estimate, and
# for moving edges a low-pass of this field plus the high-pass of the temporal neighbours.
SPATIAL = (5077 / 8192, 981 / 8192)
LOW = (4309 / 8192, 213 / 8192)
HIGH = (5570 / 8192, 3801 / 8192, 1016 / 8192)

# The filters reach four frame rows up and down: two rows of a field. The weave works on
# field planes (one parity's rows, contiguous) padded by repeating their end rows, so that
# every row offset is a contiguous slice, and a real row of a field stays one.
PAD = 2


@dataclass
class Field:
    parity: int          # 0: the frame's even rows (top field), 1: its odd rows
    rows: np.ndarray     # its own rows, a padded plane
    fill: np.ndarray     # the other parity's rows, interpolated from its own, padded
    sums: tuple[np.ndarray, np.ndarray]   # the own rows 1, and 3, frame rows either side
                                          # of each missing row, summed
    bob: np.ndarray      # rows and fill interleaved, RGBA: what neighbours warp
    grey: np.ndarray     # prepared for the flow estimator


@dataclass
class Planes:
    """A field (warped onto another) as that field's padded missing and own planes."""
    missing: np.ndarray
    own: np.ndarray


@dataclass
class Pair:
    """Two consecutive fields, each warped onto the other."""
    first: Field
    second: Field
    onto_first: Planes
    onto_second: Planes


def deinterlace(frames: Iterable[np.ndarray], top_first: bool) -> Iterator[np.ndarray]:
    """Two progressive frames per interlaced frame, one per field, in time order."""
    # Fields one 60th of a second apart move little: the coarsest DIS preset at full size
    # is as accurate here as 'medium' at half size, and faster (bench/quality.py). Its
    # patches 6 pixels apart instead of 4 take a third off the flow's time, for -0.08 to
    # +0.02 dB.
    flow = FlowEstimator("ultrafast")
    flow.dis.setPatchStride(6)
    # Motion compensation (flow and warps, all in OpenCV, which lets go of the GIL) runs
    # on a worker thread one pair of fields ahead of the weave: on two idle cores, a third
    # off the time. One worker per clip: DIS runs there alone (its object is not to be
    # shared between threads), and the pairs come out in order.
    pairs = ordered_map(lambda two: compensate(*two, flow),
                        itertools.pairwise(fields(frames, top_first, flow)), workers=1, ahead=1)
    last = None
    for pair in pairs:
        before = last.onto_second if last else itself(pair.first)
        yield weave(pair.first, before, pair.onto_first)
        last = pair
    if last:
        yield weave(last.second, last.onto_second, itself(last.second))


def fields(frames: Iterable[np.ndarray], top_first: bool,
           flow: FlowEstimator) -> Iterator[Field]:
    order = (0, 1) if top_first else (1, 0)
    for frame in frames:
        for parity in order:
            yield split(frame, parity, flow)


def split(frame: np.ndarray, parity: int, flow: FlowEstimator) -> Field:
    """One field of the frame: its rows kept, the rows between them interpolated."""
    rows = pad(frame[parity::2])
    up, down = neighbour_shifts(parity)
    at = functools.partial(field_rows, count=missing_count(frame.shape[0], parity))
    sums = (at(rows, up) + at(rows, down), at(rows, up - 1) + at(rows, down + 1))
    fill = cv2.addWeighted(sums[0], SPATIAL[0], sums[1], -SPATIAL[1], 0)
    bob = np.empty_like(frame)
    bob[parity::2] = frame[parity::2]
    bob[1 - parity::2] = fill
    # RGBA because cv2.remap has a vectorised path for four channels, not three: twice
    # as fast, the padding channel included.
    return Field(parity, rows, pad(fill), sums, cv2.cvtColor(bob, cv2.COLOR_RGB2RGBA),
                 flow.prepare(grey8(bob)))


def pad(plane: np.ndarray) -> np.ndarray:
    return cv2.copyMakeBorder(plane, PAD, PAD, 0, 0, cv2.BORDER_REPLICATE)


def missing_count(height: int, parity: int) -> int:
    """How many rows of the other parity a field of this parity misses."""
    return (height - (1 - parity) + 1) // 2


def neighbour_shifts(parity: int) -> tuple[int, int]:
    """Where, in the field's own rows, the rows just above and below its k-th missing row
    are: rows k + up and k + down (missing rows lie below own rows for the top field)."""
    return (0, 1) if parity == 0 else (-1, 0)


def field_rows(plane: np.ndarray, shift: int, count: int) -> np.ndarray:
    """Rows k + shift of a padded field plane, for k in 0 .. count - 1."""
    start = PAD + shift
    return plane[start:start + count]


def compensate(first: Field, second: Field, flow: FlowEstimator) -> Pair:
    """Each field warped onto the other by one flow estimate: the flow back is the
    reverse of the flow forward, within 0.02 dB of estimating both (bench/quality.py),
    since fields a 60th of a second apart move smoothly."""
    forward = flow(first.grey, second.grey, first.bob.shape[:2])
    return Pair(first, second, warped(second.bob, positions(forward), first.parity),
                warped(first.bob, positions(-forward), second.parity))


def warped(bob: np.ndarray, where: np.ndarray, parity: int) -> Planes:
    """``bob`` sampled at ``where``, as planes for a field of this parity."""
    image = cv2.cvtColor(cv2.remap(bob, where, None, cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REPLICATE), cv2.COLOR_RGBA2RGB)
    return Planes(pad(image[1 - parity::2]), pad(image[parity::2]))


def itself(field: Field) -> Planes:
    """The field as its own neighbour (at the clip's ends), unwarped."""
    return Planes(field.fill, field.rows)


def weave(cur: Field, prev: Planes, nxt: Planes) -> np.ndarray:
    """The centre field as a frame: bwdif's rule applied to motion-compensated neighbours.

    The missing rows of this field are real rows of the fields before and after it. Warped
    onto this one by optical flow, their average is the temporal estimate; it is trusted
    as far as the warped fields agree with each other and with this field's own rows
    (yadif's temporal differences), and the spatial estimate is clamped to that range.

    Names as in bwdif, all on the missing rows: c and e the own rows above and below, d
    the temporal estimate, b and f the temporal estimates two frame rows up and down."""
    count = missing_count(cur.bob.shape[0], cur.parity)
    up, down = neighbour_shifts(cur.parity)
    at = functools.partial(field_rows, count=count)
    c, e = at(cur.rows, up), at(cur.rows, down)
    temporal = cv2.addWeighted(prev.missing, 0.5, nxt.missing, 0.5, 0)
    d, b, f = at(temporal, 0), at(temporal, -1), at(temporal, 1)
    changed = cv2.absdiff(at(prev.missing, 0), at(nxt.missing, 0))
    prev_off = cv2.absdiff(prev.own, cur.rows)
    next_off = cv2.absdiff(nxt.own, cur.rows)
    diff = cv2.max(cv2.max(at(prev_off, up) + at(prev_off, down),
                           at(next_off, up) + at(next_off, down)), changed)
    diff *= 0.5
    # bwdif and yadif then widen that range where d is a vertical extremum between c and
    # e (their spatial interlacing check, which yadif's 'nospatial' modes skip). On
    # motion-compensated fields that only lets the spatial estimate stray where the
    # temporal one is right: skipping it gains 0.01 and 0.04 dB (bench/quality.py) and
    # a third of the weave's time.
    near, far = cur.sums
    half = HIGH[2] / 2
    detailed = cv2.addWeighted(near, LOW[0], far, -LOW[1], 0)
    detailed += cv2.addWeighted(d, HIGH[0] / 2, b + f, -HIGH[1] / 2, 0)
    detailed += cv2.addWeighted(at(temporal, -2), half, at(temporal, 2), half, 0)
    # cv2's masked copy: numpy's (where=, np.where) is twenty times slower on a mask this
    # irregular, slower than all the rest of the weave.
    edge = cv2.compare(cv2.absdiff(c, e), changed, cv2.CMP_GT)
    spatial = cv2.copyTo(detailed, edge, at(cur.fill, 0).copy())
    out = np.empty((*cur.bob.shape[:2], 3), np.float32)
    out[cur.parity::2] = cur.rows[PAD:-PAD]
    out[1 - cur.parity::2] = cv2.min(cv2.max(spatial, d - diff), d + diff)
    return out
