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

import sys

import torch

from services.stagekit.benchmark import median_seconds, print_rows, seconds_row

from . import MODEL
from .network import build_network

AUTHORS_S = 96.0
FRAMES, SIZE = 5, 64


def forward_seconds(runs: int = 1, threads: int = 2) -> float:
    torch.manual_seed(0)
    network = build_network().eval()
    lq = torch.rand(1, FRAMES, 3, SIZE, SIZE)
    return median_seconds(lambda: network(lq), runs, threads, warmup=0)


def rows(runs: int = 1) -> list[dict]:
    ours = forward_seconds(runs)
    return [seconds_row(MODEL, f"1x{FRAMES}x3x{SIZE}x{SIZE}, CPU, 2 threads", ours, AUTHORS_S)]


def gpu_rows(frames: int = 8, width: int = 360, height: int = 240) -> list[dict]:
    """Frames/s of the official network on CUDA at width x height, fp32 and fp16."""
    out = []
    for dtype in (torch.float32, torch.float16):
        torch.manual_seed(0)
        network = build_network().eval().cuda().to(dtype)
        network.spynet.float()
        lq = torch.rand(1, frames, 3, height, width, device="cuda")
        seconds = median_seconds(lambda: network(lq), runs=1, threads=None)
        precision = str(dtype).replace("torch.", "")
        out.append(seconds_row(MODEL, f"1x{frames}x3x{height}x{width}, CUDA, {precision}", seconds,
                       frames_per_s=round(frames / seconds, 2)))
    return out


if __name__ == "__main__":
    print_rows(gpu_rows() if "--gpu" in sys.argv else rows())
