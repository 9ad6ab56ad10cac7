"""Forward time of the official configuration (random weights) beside the authors'.

The parity README timed the authors' class on a shared 2-core CPU (load average 5-8)
with torch threads = 2, eval, no_grad: input (1, 5, 3, 64, 64) -> 1 output frame, the
median of 3 runs after one warm-up; 1.1 s, 2.4 s and 3.8 s in three sessions. We compare
with the fastest of them, the strictest comparison.
"""
from __future__ import annotations

import time

import torch

from fractions import Fraction

import numpy as np

from services.stagekit.benchmark import median_seconds
from services.stagekit.stage import ClipInfo

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
    frames = np.random.default_rng(0).integers(0, 256, (count, height, width, 3), np.uint8)
    info = ClipInfo("bench", width=width, height=height, fps=Fraction(25), frame_count=count)
    list(stage.process(info, iter(frames[:6])))
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    produced = len(list(stage.process(info, iter(frames))))
    return produced / (time.perf_counter() - start)


def rows(size: int = 64) -> list[dict]:
    ours = forward_seconds(size)
    authors = AUTHORS_S[size]
    table = [{"model": MODEL, "input": f"1x5x3x{size}x{size} -> 1 frame, CPU, 2 threads",
              "ours_s": round(ours, 3), "authors_s": authors, "ratio": round(ours / authors, 3)}]
    if torch.cuda.is_available():
        for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
            table.append({"model": MODEL, "input": f"360x240 clip, CUDA {name}",
                          "frames_per_s": round(frames_per_second("cuda", dtype), 2)})
    return table


if __name__ == "__main__":
    for row in rows():
        print(row)
