"""Forward time of the official configuration (random weights) beside the authors'.

The parity README timed the authors' SwinIR (official kwargs) on a 1x3x512x512 input, the
smallest the pipeline ever feeds it, with torch 2.14.1 on a shared CPU with 2 threads:
runs of 29.1, 34.0 and 34.5 s, median 34.0 s. On a GPU, the whole stage's frames/s on
360x240 frames (each upscaled to 1440x960, the network run at 1472x960).
"""
from __future__ import annotations

import torch

from services.stagekit.benchmark import (fps_row, median_seconds, print_rows, seconds_row,
                                         stage_frames_per_second)

from . import MODEL
from .network import build_swinir
from .stage import DiffBIRStage, Settings

AUTHORS_S = {512: 34.0}


def forward_seconds(size: int = 512, runs: int = 3, threads: int = 2) -> float:
    """The median of ``runs`` timed forwards after one warm-up."""
    torch.manual_seed(0)
    network = build_swinir().eval()
    x = torch.rand(1, 3, size, size)
    return median_seconds(lambda: network(x), runs, threads)


def gpu_frames_per_second(half: bool, width: int = 360, height: int = 240,
                          count: int = 16) -> float:
    """Output frames/s of the stage on CUDA, uint8 in and out, after a warm-up batch."""
    stage = DiffBIRStage(build_swinir(), "cuda", half=half, settings=Settings(batch=4))
    return stage_frames_per_second(stage, width, height, count, warmup=4)


def gpu_rows() -> list[dict]:
    if not torch.cuda.is_available():
        return []
    name = torch.cuda.get_device_name()
    return [fps_row(MODEL, f"360x240 clip, {name}, {label}", fps)
            for label, fps in (("fp32", gpu_frames_per_second(False)),
                               ("fp16 autocast", gpu_frames_per_second(True)))]


def rows(size: int = 512, runs: int = 3) -> list[dict]:
    ours = forward_seconds(size, runs)
    authors = AUTHORS_S[size]
    return [seconds_row(MODEL, f"1x3x{size}x{size}, CPU, 2 threads", ours, authors, digits=2),
            *gpu_rows()]


if __name__ == "__main__":
    print_rows(rows())
