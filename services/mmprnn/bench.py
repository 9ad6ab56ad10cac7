"""Forward time of the official configuration (random weights) beside the authors'.

The parity README timed the authors' class on a shared 2-core CPU (load average 5-8)
with torch threads = 2, eval, no_grad: input (1, 5, 3, 64, 64) -> 1 output frame, the
median of 3 runs after one warm-up; 1.1 s, 2.4 s and 3.8 s in three sessions. We compare
with the fastest of them, the strictest comparison.
"""
from __future__ import annotations

import torch

from services.stagekit.benchmark import (fps_row, median_seconds, print_rows, seconds_row,
                                         stage_frames_per_second)

from . import MODEL
from .network import build_mmprnn
from .stage import MMPRNNStage

AUTHORS_S = {64: 1.1, 128: 3.0}


def forward_seconds(size: int = 64, frames: int = 5, runs: int = 3, threads: int = 2) -> float:
    """The median of ``runs`` timed forwards after one warm-up, as the README measured."""
    torch.manual_seed(0)
    network = build_mmprnn()
    x = torch.rand(1, frames, 3, size, size) - 0.5
    return median_seconds(lambda: network(x), runs, threads)


def frames_per_second(device: str, dtype, width: int = 360, height: int = 240,
                      count: int = 40) -> float:
    """Throughput of the whole stage (chunks, border frames, transfers) on a clip."""
    network = build_mmprnn()
    network.group = 8 if device == "cuda" else 1
    stage = MMPRNNStage(network, device, dtype)
    return stage_frames_per_second(stage, width, height, count, warmup=6)


def rows(size: int = 64) -> list[dict]:
    ours = forward_seconds(size)
    authors = AUTHORS_S[size]
    table = [seconds_row(MODEL, f"1x5x3x{size}x{size} -> 1 frame, CPU, 2 threads", ours, authors)]
    if torch.cuda.is_available():
        for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
            table.append(fps_row(MODEL, f"360x240 clip, CUDA {name}",
                                 frames_per_second("cuda", dtype)))
    return table


if __name__ == "__main__":
    print_rows(rows())
