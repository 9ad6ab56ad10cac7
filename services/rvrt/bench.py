"""Forward time of the official configuration (random weights) beside the authors'.

The parity README timed the authors' class on this shared 2-core CPU: the released 006
kwargs, random weights, input (1, 4, 4, 136, 136), torch threads = 2, float32, no_grad:
median 20.0 s over 3 runs (20.0, 18.3, 28.5 s; load average 6-9). One forward takes
seconds, so by default a single run is timed.

On a GPU (``python -m services.rvrt.bench --gpu``): frames/s of the stage at 360x240
(16-frame tiles of 160 px patches, as the authors' pipeline) in float32 and float16.
"""
from __future__ import annotations

import sys

import torch

from services.stagekit.benchmark import (median_seconds, print_rows, seconds_row,
                                         stage_frames_per_second)

from . import MODEL
from .network import build_network
from .stage import RVRTStage

AUTHORS_S = 20.0
SHAPE = (1, 4, 4, 136, 136)
SIGMA = 10


def forward_seconds(runs: int = 1, threads: int = 2) -> float:
    torch.manual_seed(0)
    network = build_network().eval()
    lq = torch.rand(SHAPE)
    lq[:, :, 3] = SIGMA / 255
    return median_seconds(lambda: network(lq), runs, threads, warmup=0)


def rows(runs: int = 1) -> list[dict]:
    ours = forward_seconds(runs)
    return [seconds_row(MODEL, "1x4x4x136x136, CPU, 2 threads", ours, AUTHORS_S)]


def gpu_rows(frames: int = 32, width: int = 360, height: int = 240) -> list[dict]:
    """Frames/s of the stage with the official network on CUDA, fp32 and fp16."""
    out = []
    for half in (False, True):
        torch.manual_seed(0)
        stage = RVRTStage(build_network(), torch.device("cuda"), half=half)
        fps = stage_frames_per_second(stage, width, height, frames, warmup=16)
        out.append(seconds_row(MODEL, f"{width}x{height}, CUDA, {'fp16' if half else 'fp32'}",
                       frames / fps, frames_per_s=round(fps, 2)))
    return out


if __name__ == "__main__":
    print_rows(gpu_rows() if "--gpu" in sys.argv[1:] else rows())
