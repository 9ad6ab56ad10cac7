"""Timing helpers the models' bench.py share: a network's forward time as the authors
measured theirs, and a whole stage's frames/s."""
from __future__ import annotations

import statistics
import time
from fractions import Fraction
from typing import Callable

import numpy as np

from .stage import ClipInfo, Stage


def median_seconds(call: Callable[[], object], runs: int = 3, threads: int = 2) -> float:
    """The median of ``runs`` timed calls after one warm-up, with ``threads`` torch threads
    and no autograd (how the parity READMEs timed the authors' code)."""
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            call()
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return statistics.median(times)


def stage_frames_per_second(stage: Stage, width: int = 360, height: int = 240,
                            count: int = 16, warmup: int = 4) -> float:
    """Output frames/s of a stage on random uint8 frames, after a warm-up clip (CUDA work
    is waited for, so the clock sees it)."""
    import torch
    frames = np.random.default_rng(0).integers(0, 256, (count, height, width, 3), dtype=np.uint8)
    info = ClipInfo("bench", width=width, height=height, fps=Fraction(30))
    for _ in stage.run(info, iter(frames[:warmup]))[1]:
        pass
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    made = sum(1 for _ in stage.run(info, iter(frames))[1])
    sync()
    return made / (time.perf_counter() - start)
