"""Forward time of the official configuration (random weights) beside the authors'.

The parity README timed the authors' class on this shared 2-core CPU: official kwargs,
random weights, input (1, 5, 3, 64, 64) -> (1, 5, 3, 256, 256), torch threads = 2,
float32, no_grad; about 96 s per forward (median of 122, 96 and 91 s, load average up
to 3.9). One forward here takes tens of seconds, so by default we time a single run
(the README's median includes its first run too).

On a GPU (``python -m services.psrt.bench --gpu``): frames/s at 360x240 in float32 and
float16 (one 8-frame chunk, SpyNet in float32 as the stage runs it).
"""
from __future__ import annotations

import statistics
import sys
import time

import torch

from . import MODEL
from .network import build_network

AUTHORS_S = 96.0
FRAMES, SIZE = 5, 64


def forward_seconds(runs: int = 1, threads: int = 2) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    network = build_network().eval()
    lq = torch.rand(1, FRAMES, 3, SIZE, SIZE)
    times = []
    with torch.inference_mode():
        for _ in range(runs):
            start = time.perf_counter()
            network(lq)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def rows(runs: int = 1) -> list[dict]:
    ours = forward_seconds(runs)
    return [{"model": MODEL, "input": f"1x{FRAMES}x3x{SIZE}x{SIZE}, CPU, 2 threads",
             "ours_s": round(ours, 3), "authors_s": AUTHORS_S,
             "ratio": round(ours / AUTHORS_S, 3)}]


def gpu_rows(frames: int = 8, width: int = 360, height: int = 240) -> list[dict]:
    """Frames/s of the official network on CUDA at width x height, fp32 and fp16."""
    out = []
    for dtype in (torch.float32, torch.float16):
        torch.manual_seed(0)
        network = build_network().eval().cuda().to(dtype)
        network.spynet.float()
        lq = torch.rand(1, frames, 3, height, width, device="cuda")
        with torch.inference_mode():
            network(lq)
            torch.cuda.synchronize()
            start = time.perf_counter()
            network(lq)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        out.append({"model": MODEL, "input": f"1x{frames}x3x{height}x{width}, CUDA, "
                    f"{str(dtype).replace('torch.', '')}", "ours_s": round(seconds, 3),
                    "authors_s": None, "fps": round(frames / seconds, 2)})
    return out


if __name__ == "__main__":
    for row in gpu_rows() if "--gpu" in sys.argv else rows():
        print(row)
