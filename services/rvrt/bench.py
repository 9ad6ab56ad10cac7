"""Forward time of the official configuration (random weights) beside the authors'.

The parity README timed the authors' class on this shared 2-core CPU: the released 006
kwargs, random weights, input (1, 4, 4, 136, 136), torch threads = 2, float32, no_grad:
median 20.0 s over 3 runs (20.0, 18.3, 28.5 s; load average 6-9). One forward takes
seconds, so by default a single run is timed.

On a GPU (``python -m services.rvrt.bench --gpu``): frames/s of the stage at 360x240
(16-frame tiles of 160 px patches, as the authors' pipeline) in float32 and float16.
"""
from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch

from services.stagekit import ClipInfo

from . import MODEL
from .network import build_network
from .stage import RVRTStage

AUTHORS_S = 20.0
SHAPE = (1, 4, 4, 136, 136)
SIGMA = 10


def forward_seconds(runs: int = 1, threads: int = 2) -> float:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        network = build_network().eval()
        lq = torch.rand(SHAPE)
        lq[:, :, 3] = SIGMA / 255
        times = []
        with torch.inference_mode():
            for _ in range(runs):
                start = time.perf_counter()
                network(lq)
                times.append(time.perf_counter() - start)
        return statistics.median(times)
    finally:
        torch.set_num_threads(previous)


def rows(runs: int = 1) -> list[dict]:
    ours = forward_seconds(runs)
    return [{"model": MODEL, "input": "1x4x4x136x136, CPU, 2 threads",
             "ours_s": round(ours, 3), "authors_s": AUTHORS_S,
             "ratio": round(ours / AUTHORS_S, 3)}]


def gpu_rows(frames: int = 32, width: int = 360, height: int = 240) -> list[dict]:
    """Frames/s of the stage with the official network on CUDA, fp32 and fp16."""
    out = []
    clip = np.random.default_rng(0).integers(0, 256, (frames, height, width, 3), np.uint8)
    info = ClipInfo("bench", width=width, height=height, fps=30)
    for half in (False, True):
        torch.manual_seed(0)
        stage = RVRTStage(build_network(), torch.device("cuda"), half=half)
        list(stage.run(info, iter(clip[:16]))[1])
        torch.cuda.synchronize()
        start = time.perf_counter()
        list(stage.run(info, iter(clip))[1])
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        out.append({"model": MODEL, "input": f"{width}x{height}, CUDA, {'fp16' if half else 'fp32'}",
                    "ours_s": round(seconds, 3), "authors_s": None,
                    "frames_per_s": round(frames / seconds, 2)})
    return out


if __name__ == "__main__":
    for row in gpu_rows() if "--gpu" in sys.argv[1:] else rows():
        print(row)
