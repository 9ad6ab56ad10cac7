"""How much memory a job will hold at its peak, estimated from the plan before any work,
and the refusal of a job that would not fit this machine.

The runner holds, per stage, what the stage itself works with (its window of frames, its
float copies, its frame-parallel workers: a cost per pixel of the frames it takes in, as
bench/sizes.py measures it) and, between two stages, a queue bounded in frames and in
bytes. Nothing else grows with the footage: not its length (clips stream) and not the
frame area beyond these costs (large frames are tiled), so the estimate is linear in the
frame areas the plan decides. (``plan`` below is a plan.Plan, which uses this module.)"""
from __future__ import annotations

import os

from services.stagekit.parallel import frame_workers

from ..errors import UserError

GIB = 1 << 30
QUEUE_FRAMES = 8              # frames buffered between two stages ...
QUEUE_BYTES = 96 << 20        # ... and bytes (one frame always passes, however large)
BASE_BYTES = 350 << 20        # the interpreter, numpy, OpenCV, PyAV, their arenas
TORCH_BYTES = 1 << 30         # torch's import, when a local stage runs a neural model
CODEC_FRAMES = 12             # frames decode + encode hold (threads, x264's look-ahead)
HEADROOM = 0.85               # share of the available memory a job may plan to use

# What a local stage holds at its peak per pixel of the frames it takes in (superres: of
# those its model makes): bytes whatever it does (its window, float32 working copies,
# tiles), and bytes more for each frame it works on side by side (stagekit.parallel: fewer
# for large frames); measured stage by stage at 1080p (two workers) and 2160p (one).
# A model not listed is taken to be as hungry as the hungriest classical stage.
STAGE_BYTES_PER_PIXEL = {
    ("deinterlace", "classical"): (80, 0),
    ("analog", "classical"): (80, 160),
    ("outpaint", "classical"): (60, 0),
    ("colorize", "classical"): (40, 0),
    ("deblur", "classical"): (100, 0),
    ("denoise", "classical"): (20, 150),
    ("superres", "classical"): (80, 0),
    ("interpolate", "classical"): (280, 0),
}
DEFAULT_BYTES_PER_PIXEL = (400, 150)


def queue_frames(frame_bytes: int) -> int:
    """How many frames of ``frame_bytes`` a queue between two stages holds."""
    return max(1, min(QUEUE_FRAMES, QUEUE_BYTES // max(1, frame_bytes)))


def estimate(plan) -> int:
    """Peak bytes the job will hold, from the sizes its plan decided."""
    src = plan.source
    sizes = _stage_inputs(plan)
    total = BASE_BYTES + CODEC_FRAMES * 3 * (src.width * src.height + _area(plan.output_size))
    queued = [src.width * src.height] + [_area(size) for _, size in sizes] + [_area(plan.output_size)]
    total += sum(3 * area * queue_frames(3 * area) for area in queued)
    if any(s.endpoint == "local" and s.model != "classical" for s in plan.stages):
        total += TORCH_BYTES
    for spec, size in sizes:
        if spec.endpoint == "local":
            fixed, per_worker = STAGE_BYTES_PER_PIXEL.get((spec.task, spec.model),
                                                          DEFAULT_BYTES_PER_PIXEL)
            total += (fixed + per_worker * frame_workers(_area(size))) * _area(size)
    return total


def _stage_inputs(plan) -> list:
    """Each stage with the size its cost counts on: the frames it takes in (the source's
    for the deinterlace stage, the working size up to superres, the output
    size after it), and for superres the frames its model makes."""
    working, out = plan.working_size, []
    size = (plan.source.width, plan.source.height) if plan.source.interlaced else working
    for spec in plan.stages:
        if spec.task == "superres":
            factor = plan.sizing.model_factor
            out.append((spec, (working[0] * factor, working[1] * factor)))
            size = plan.output_size
            continue
        out.append((spec, size))
        if spec.task == "deinterlace":
            size = working
    return out


def _area(size: tuple[int, int]) -> int:
    return size[0] * size[1]


def available() -> int:
    """Bytes this machine can give a job now (MemAvailable), or its total memory where
    the kernel does not say."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def fits(plan) -> bool:
    return estimate(plan) <= HEADROOM * available()


def describe(plan) -> str:
    verdict = "fits" if fits(plan) else f"does not fit: {ADVICE}"
    return (f"memory: about {estimate(plan) / GIB:.1f} GiB at the peak, "
            f"{available() / GIB:.1f} GiB available ({verdict})")


ADVICE = "use a smaller --scale or --max-height"


def refuse_unfit(plan) -> None:
    """A job whose peak would pass what this machine has is refused, saying what to change."""
    if fits(plan):
        return
    w, h = plan.output_size
    raise UserError(f"this job needs about {estimate(plan) / GIB:.1f} GiB of memory for a "
                    f"{w}x{h} output, {available() / GIB:.1f} GiB is available: {ADVICE}")
