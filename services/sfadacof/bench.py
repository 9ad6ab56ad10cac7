"""Forward time of the official configuration (random weights) beside the authors'.

The parity README timed the authors' class on a shared 2-core CPU with torch threads = 2:
the median of 3 runs after a warm-up of one 1x3x128x128 frame pair, 0.124 s.
"""
from __future__ import annotations

import torch

from services.stagekit.benchmark import (fps_row, median_seconds, print_rows, seconds_row,
                                         stage_frames_per_second)

from . import MODEL
from .network import build_network
from .stage import SfAdaCoFStage

AUTHORS_S = {128: 0.124, 256: 0.40}


def forward_seconds(size: int = 128, runs: int = 3, threads: int = 2) -> float:
    """The median of ``runs`` timed forwards after one warm-up, as the README measured."""
    torch.manual_seed(0)
    network = build_network().eval()
    frame0, frame2 = torch.rand(1, 3, size, size), torch.rand(1, 3, size, size)
    return median_seconds(lambda: network(frame0, frame2), runs, threads)


def gpu_frames_per_second(half: bool, width: int = 360, height: int = 240,
                          count: int = 41) -> float:
    """Output frames/s of the 2x stage on CUDA, uint8 frames in and out, after a warm-up."""
    stage = SfAdaCoFStage(build_network(), "cuda", half=half)
    return stage_frames_per_second(stage, width, height, count, warmup=stage.max_batch + 1)


def gpu_rows() -> list[dict]:
    if not torch.cuda.is_available():
        return []
    name = torch.cuda.get_device_name()
    return [fps_row(MODEL, f"360x240 clip, {name}, {label}", fps, digits=5)
            for label, fps in (("fp32", gpu_frames_per_second(False)),
                               ("fp16 kernel estimator", gpu_frames_per_second(True)))]


def rows(size: int = 128) -> list[dict]:
    ours = forward_seconds(size)
    authors = AUTHORS_S[size]
    return [seconds_row(MODEL, f"1x3x{size}x{size} pair, CPU, 2 threads", ours, authors, digits=4),
            *gpu_rows()]


if __name__ == "__main__":
    print_rows(rows())
