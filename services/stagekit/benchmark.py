"""Timing helpers the models' bench.py share: a network's forward time as the authors
measured theirs, and a whole stage's frames/s. Every clock here waits for CUDA work, so
it sees the GPU's time too."""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from fractions import Fraction
from typing import Callable, Mapping, NamedTuple

import numpy as np

from .stage import ClipInfo, Stage


class Timing(NamedTuple):
    wall: float     # seconds on the wall clock
    cpu: float      # seconds of this process's CPU time, all threads together


@contextmanager
def torch_threads(threads: int | None):
    """``threads`` torch threads inside (None: as they are), the previous count after."""
    import torch
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _synchronize() -> None:
    import torch
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timings(call: Callable[[], object], runs: int = 3, warmup: int = 1) -> list[Timing]:
    """The wall and CPU seconds of each of ``runs`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    made = []
    for _ in range(runs):
        _synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        _synchronize()
        made.append(Timing(time.perf_counter() - wall, time.process_time() - cpu))
    return made


def median_seconds(call: Callable[[], object], runs: int = 3, threads: int | None = 2,
                   warmup: int = 1) -> float:
    """The median wall time of ``runs`` calls after ``warmup`` untimed ones, with
    ``threads`` torch threads and no autograd (how the parity READMEs timed the authors'
    code; some timed their first run too: ``warmup=0``)."""
    import torch
    with torch_threads(threads), torch.inference_mode():
        return statistics.median(t.wall for t in timings(call, runs, warmup))


def random_clip(count: int, width: int = 360, height: int = 240,
                grey: bool = False) -> np.ndarray:
    """``count`` random uint8 RGB frames (grey ones: the three channels equal)."""
    rng = np.random.default_rng(0)
    if grey:
        return np.repeat(rng.integers(0, 256, (count, height, width, 1), dtype=np.uint8), 3, -1)
    return rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def stage_frames_per_second(stage: Stage, width: int = 360, height: int = 240,
                            count: int = 16, warmup: int = 4,
                            params: Mapping[str, str] | None = None,
                            clip: np.ndarray | None = None,
                            threads: int | None = None) -> float:
    """Output frames/s of a stage on ``clip`` (default: ``count`` random frames of width x
    height) with the clip ``params``, after a warm-up clip of its first ``warmup`` frames;
    ``threads`` torch threads (None: as they are)."""
    clip = random_clip(count, width, height) if clip is None else clip
    info = ClipInfo("bench", width=clip.shape[2], height=clip.shape[1], fps=Fraction(30),
                    params=dict(params or {}))
    made = []

    def through(frames: np.ndarray) -> None:
        made.append(sum(1 for _ in stage.run(info, iter(frames))[1]))

    with torch_threads(threads):
        if warmup:
            through(clip[:warmup])
        [timing] = timings(lambda: through(clip), runs=1, warmup=0)
    return made[-1] / timing.wall


def seconds_row(model: str, input: str, ours_s: float, authors_s: float | None = None,
        digits: int = 3, **extra) -> dict:
    """One row of `make bench-models` (bench/models.py prints them): our seconds beside the
    authors' and their ratio, where they timed the same thing; then ``extra`` columns."""
    ratio = round(ours_s / authors_s, 3) if authors_s else None
    return {"model": model, "input": input, "ours_s": round(ours_s, digits),
            "authors_s": authors_s, "ratio": ratio, **extra}


def fps_row(model: str, input: str, fps: float, digits: int = 4) -> dict:
    """A throughput row (the authors published none): seconds per frame, so the table's
    columns hold, and the frames/s."""
    return seconds_row(model, input, 1 / fps, digits=digits, frames_per_s=round(fps, 2))


def print_rows(rows: list[dict]) -> None:
    """A bench.py run as a script: its rows, one a line."""
    for line in rows:
        print(line)
